"""Layers: init statistics, zero output scale, norms against float64 references, block-diagonal structure."""

import math

import pytest
import torch

from nets import onehot
from nets.distributions import OneHotCategorical
from nets.functional import symexp, symlog
from nets.layers import MLP, BlockLinear, Conv2d, ConvTranspose2d, Linear, Norm
from world_model.rssm import BlockGRUCore


def test_symlog_golden_and_round_trip():
    x = torch.tensor([-1e6, -10.0, -1.0, 0.0, 0.5, 1.0, 100.0], dtype=torch.float64)
    expected = torch.tensor(
        [-math.log(1e6 + 1), -math.log(11), -math.log(2), 0.0, math.log(1.5), math.log(2), math.log(101)],
        dtype=torch.float64,
    )
    torch.testing.assert_close(symlog(x), expected)
    torch.testing.assert_close(symexp(symlog(x)), x)
    y = torch.linspace(-15, 15, 61, dtype=torch.float64)
    torch.testing.assert_close(symlog(symexp(y)), y)
    # Gradient at 0 is 1 for both (identity-like near zero), also exactly at 0.
    z = torch.zeros(1, requires_grad=True)
    symlog(z).backward()
    assert z.grad.item() == 1.0
    z.grad = None
    symexp(z).backward()
    assert z.grad.item() == 1.0


def test_linear_init_is_truncated_fan_in():
    torch.manual_seed(0)
    layer = Linear(400, 300, outscale=2.0)
    w = layer.weight.detach()
    std = 2.0 / math.sqrt(400)
    assert abs(w.std().item() - std) < 0.02 * std
    # Truncated at 2 std of the underlying normal (std / 0.8796).
    assert w.abs().max().item() <= 2 * std / 0.87962566 + 1e-6
    assert torch.all(layer.bias == 0)


def test_zero_outscale_gives_exact_zero_output():
    layer = Linear(5, 7, outscale=0.0)
    assert torch.all(layer(torch.randn(3, 5)) == 0)
    mlp = MLP(5, 8, 2, out_features=3, outscale=0.0)
    assert torch.all(mlp(torch.randn(4, 5)) == 0)
    assert mlp.out_features == 3
    assert MLP(5, 8, 2).out_features == 8


@pytest.mark.parametrize("kind", ["rms", "layer"])
def test_norm_matches_float64_reference(kind):
    torch.manual_seed(0)
    norm = Norm(6, kind)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        if norm.bias is not None:
            norm.bias.uniform_(-1, 1)
    x = torch.randn(4, 6) * 3 + 1
    x64 = x.double()
    if kind == "rms":
        ref = x64 / torch.sqrt(x64.square().mean(-1, keepdim=True) + 1e-4) * norm.weight.double()
    else:
        c = x64 - x64.mean(-1, keepdim=True)
        ref = (
            c / torch.sqrt(c.square().mean(-1, keepdim=True) + 1e-3) * norm.weight.double()
            + norm.bias.double()
        )
    torch.testing.assert_close(norm(x).double(), ref, atol=1e-5, rtol=1e-5)
    # Over the channels of conv maps [N, C, H, W], in either memory layout.
    cnorm = Norm(6, kind, axis=1)
    cnorm.load_state_dict(norm.state_dict())
    img = torch.randn(2, 6, 3, 5) * 3 + 1
    x64, shape = img.double(), (1, 6, 1, 1)
    c = x64 - x64.mean(1, keepdim=True) if kind == "layer" else x64
    eps = 1e-3 if kind == "layer" else 1e-4
    ref = c / torch.sqrt(c.square().mean(1, keepdim=True) + eps) * norm.weight.double().view(shape)
    ref = ref + norm.bias.double().view(shape) if kind == "layer" else ref
    for layout in (torch.contiguous_format, torch.channels_last):
        out = cnorm(img.contiguous(memory_format=layout))
        torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


def test_norm_rejects_unknown_kind():
    with pytest.raises(ValueError, match="norm kind must be one of"):
        Norm(4, "batch")


def test_block_linear_is_block_diagonal():
    torch.manual_seed(0)
    layer = BlockLinear(8, 12, blocks=4)
    x = torch.randn(3, 5, 8)
    y = layer(x)
    assert y.shape == (3, 5, 12)
    # Equal to a dense matrix with the blocks on the diagonal.
    dense = torch.block_diag(*layer.weight.detach())
    torch.testing.assert_close(y, x @ dense + layer.bias.detach())
    # Changing input group 0 changes only output group 0.
    x2 = x.clone()
    x2[..., :2] += 1.0
    diff = (layer(x2) - y).abs().sum((0, 1))
    assert torch.all(diff[:3] > 0) and torch.all(diff[3:] == 0)
    with pytest.raises(ValueError, match="divisible by blocks 3"):
        BlockLinear(8, 12, blocks=3)


def init_std(fan_in: int, outscale: float = 1.0) -> float:
    """By hand, the std of `trunc_normal_fan_in_`'s weights: it draws N(0, s^2) truncated to +-2 s with
    s = outscale / sqrt(fan_in) / 0.87962566, and a normal truncated to +-a std keeps the fraction
    sqrt(1 - 2 a phi(a) / (2 Phi(a) - 1)) of its std."""
    a = 2.0
    phi = math.exp(-a * a / 2) / math.sqrt(2 * math.pi)
    big_phi = 0.5 * (1 + math.erf(a / math.sqrt(2)))
    kept = math.sqrt(1 - 2 * a * phi / (2 * big_phi - 1))
    return outscale / math.sqrt(fan_in) / 0.87962566 * kept


@pytest.mark.parametrize(
    "fan_in, out, blocks, outscale", [(2048, 3 * 2048, 8, 1.0), (2048, 1024, 8, 1.0), (64, 32, 4, 0.5)]
)
def test_block_linear_init_fan_in_is_the_whole_input(fan_in, out, blocks, outscale):
    """The reference's `compute_fans` takes the kernel [blocks, in/blocks, out/blocks] as fan-in
    blocks x in/blocks: the whole input. (Size12m gates: std 0.0221, not a block's 0.0625.)"""
    w = BlockLinear(fan_in, out, blocks, outscale).weight.detach().double()
    expected = init_std(fan_in, outscale)
    # Against the reference's own formula: truncated_normal(-2, 2) * 1.1368 / sqrt(fan_in).
    assert expected == pytest.approx(0.87962566 * 1.1368 * outscale / math.sqrt(fan_in), rel=1e-4)
    assert w.std().item() == pytest.approx(expected, rel=0.03 if w.numel() < 10**4 else 0.01)
    assert w.abs().max().item() <= 2 * expected / 0.87962566 * (1 + 1e-6)


def test_block_gru_init_matches_the_reference_fan_in_at_size12m():
    """Size12m (deter 2048, 3 x 256 inputs, 8 blocks): the reference's hidden block layer sees each
    block's [h_g, x], 8 x (256 + 768) = 8192 inputs in all (std 0.0110, a block's 1024 would give
    0.0313); its gates see the 2048 hidden units (std 0.0221)."""
    core = BlockGRUCore(2048, 768, 8, "rms")
    hidden = torch.cat([core.hid_x.weight.detach().flatten(), core.hid_h.weight.detach().flatten()])
    assert hidden.std().item() == pytest.approx(init_std(8 * (256 + 768)), rel=0.01)
    assert core.hid_x.weight.std().item() == pytest.approx(init_std(8192), rel=0.01)
    assert core.hid_h.weight.std().item() == pytest.approx(init_std(8192), rel=0.01)
    assert core.gates.weight.std().item() == pytest.approx(init_std(2048), rel=0.01)
    assert init_std(8192) == pytest.approx(0.01105, abs=1e-5)


def test_conv_same_padding_and_init():
    conv = Conv2d(3, 4, 5)
    assert conv(torch.randn(2, 3, 16, 16)).shape == (2, 4, 16, 16)
    assert torch.all(Conv2d(3, 4, 5, outscale=0.0).weight == 0)


@pytest.mark.parametrize("kernel", [2, 3, 4, 5])
def test_strided_conv_halves_and_transposed_conv_doubles(kernel):
    x = torch.randn(2, 3, 16, 8)
    assert Conv2d(3, 4, kernel, stride=2)(x).shape == (2, 4, 8, 4)
    up = ConvTranspose2d(3, 4, kernel)
    assert up(x).shape == (2, 4, 32, 16)
    fan_in = 3 * kernel * kernel
    assert up.weight.std().item() == pytest.approx(fan_in**-0.5, rel=0.25)
    assert torch.all(ConvTranspose2d(3, 4, kernel, outscale=0.0).weight == 0)


@pytest.mark.parametrize("layout", ["dense-first", "one-hot-first", "one-hot-only"])
def test_linear_on_one_hot_features_equals_the_dense_product(layout, monkeypatch):
    """A Linear reads Features with OneHot parts by gathering weight columns: the same outputs and weight,
    bias and dense-part gradients as the matmul over their dense form (float64), leading dims kept."""
    monkeypatch.setattr(onehot, "GATHER_CHUNK", 5)  # the 12 rows' gradient is added in 3 chunks
    torch.manual_seed(0)
    D, S, K, OUT = 5, 3, 4, 7
    dense = torch.randn(2, 6, D, dtype=torch.float64, requires_grad=True)
    hot = onehot.OneHot(torch.randint(0, K, (2, 6, S)), K)
    parts = {"dense-first": (dense, hot), "one-hot-first": (hot, dense), "one-hot-only": (hot,)}[layout]
    feat = onehot.concat(*parts)
    expanded = feat.to_dense(torch.float64)
    layer = Linear(expanded.shape[-1], OUT).double()
    hot_cols = slice(D, None) if layout == "dense-first" else slice(S * K)
    if layout != "one-hot-only":
        dense_cols = slice(D) if layout == "dense-first" else slice(S * K, None)
        assert torch.equal(expanded[..., dense_cols], dense)
    assert torch.equal(expanded[..., hot_cols].reshape(2, 6, S, K).argmax(-1), hot.index)
    assert torch.all(expanded[..., hot_cols].sum(-1) == S)
    grad_out = torch.randn(2, 6, OUT, dtype=torch.float64)

    def result(x):
        layer.zero_grad(set_to_none=True)
        dense.grad = None
        out = layer(x)
        out.backward(grad_out)
        return out.detach(), layer.weight.grad, layer.bias.grad, dense.grad

    for got, want in zip(result(feat), result(expanded), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    # The columns of classes that are never hot get no gradient.
    cold = torch.ones(S * K, dtype=torch.bool)
    cold[(hot.index + K * torch.arange(S)).flatten()] = False
    assert torch.all(layer.weight.grad[:, hot_cols][:, cold] == 0)
    with pytest.raises(ValueError, match=r"a layer of 7 inputs got features of widths \[5, 12\]"):
        onehot.linear(onehot.concat(dense, hot), layer.weight[:, :7], None)


def test_one_hot_features_stack_and_sample_like_the_dense_ones():
    """`stack` keeps the parts' layout; `sample_like` draws the hot classes with the law of the dense
    sample (a categorical with unimix), checked against the exact probabilities."""
    hot = onehot.OneHot(torch.tensor([[0, 2]]), 3)
    feats = [onehot.concat(torch.full((1, 2), float(t)), hot) for t in range(4)]
    stacked = onehot.stack(feats, 1)
    torch.testing.assert_close(stacked.to_dense(), torch.stack([f.to_dense() for f in feats], 1))
    assert torch.equal(onehot.stack([torch.ones(2), torch.zeros(2)], 0), torch.tensor([[1.0, 1], [0, 0]]))
    dist = OneHotCategorical(torch.tensor([[0.0, 1.0, 3.0]]).expand(20000, 3), unimix=0.1)
    torch.manual_seed(0)
    index = onehot.sample_like(dist, hot).index
    freq = torch.bincount(index, minlength=3).double() / index.numel()
    torch.testing.assert_close(freq, dist.probs[0].double(), atol=0.01, rtol=0)
    assert onehot.sample_like(dist, torch.zeros(3)).shape == (20000, 3)
