"""World model: shapes and metrics, gradient health, stop-gradient directions, resets, acting, fitting."""

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from configs.loader import load_config
from envs.spaces import ActionSpace, ArraySpec
from nets.distributions import TwoHot
from nets.onehot import Features, OneHot
from world_model.decoder import BlockSpace, Decoder
from world_model.rssm import RSSMState
from world_model.world_model import WorldModel

SPACES = {
    "vector": {"vector": ArraySpec((4,), np.float32)},
    "image": {"image": ArraySpec((16, 16, 3), np.uint8)},
    "both": {"vector": ArraySpec((4,), np.float32), "image": ArraySpec((16, 16, 3), np.uint8)},
}
ACT = ActionSpace("discrete", 3, (3,))


def make(obs="both", seed=0, **overrides):
    torch.manual_seed(seed)
    cfg = load_config(["debug"], {"world_model": overrides})
    return WorldModel(cfg.world_model, SPACES[obs], ACT, discount=0.99)


SCALES = dataclasses.asdict(load_config(["debug"]).world_model.loss_scales)


def model_loss(out, scales=SCALES):
    """The world model's share of the agent's loss: its terms' means, scaled and summed."""
    return sum(scales[k] * v.mean() for k, v in out.losses.items())


def batch(obs="both", B=3, T=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    data = {
        "action": F.one_hot(torch.randint(0, 3, (B, T), generator=g), 3).float(),
        "reward": torch.randn(B, T, generator=g),
        "is_first": torch.zeros(B, T, dtype=torch.bool),
        "is_last": torch.zeros(B, T, dtype=torch.bool),
        "is_terminal": torch.zeros(B, T, dtype=torch.bool),
    }
    data["is_first"][:, 0] = True
    if T > 3:
        data["is_first"][0, 3] = True
        data["is_terminal"][0, 2] = data["is_last"][0, 2] = True
    if "vector" in SPACES[obs]:
        data["vector"] = torch.randn(B, T, 4, generator=g) * 3
    if "image" in SPACES[obs]:
        data["image"] = torch.randint(0, 256, (B, T, 16, 16, 3), generator=g, dtype=torch.uint8)
    return data


@pytest.mark.parametrize("obs", ["vector", "image", "both"])
def test_loss_terms_shapes_and_metrics(obs):
    wm, data = make(obs), batch(obs)
    out = wm.loss(data)
    assert set(out.losses) == set(SCALES) == {"rec", "rew", "con", "dyn", "rep"}
    assert all(v.shape == (3, 6) for v in out.losses.values())
    assert out.states.deter.shape == (3, 6, 32) and out.states.stoch.shape == (3, 6, 4, 4)
    assert out.last.deter.shape == (3, 32) and not out.last.deter.requires_grad
    m = out.metrics
    for key in ["elbo", "rate", "distortion", "prior_ent", "post_ent", "kl/max", "distortion/reward"]:
        assert key in m and torch.isfinite(m[key])
    assert ("bits_per_dim/image" in m) == ("image" in SPACES[obs])
    for key in SPACES[obs]:
        assert f"distortion/{key}" in m and f"rec/{key}" in m
    # ELBO = -distortion - rate.
    torch.testing.assert_close(m["elbo"], -m["distortion"] - m["rate"])
    assert SCALES == {"rec": 1.0, "rew": 1.0, "con": 1.0, "dyn": 1.0, "rep": 0.1}


def test_distortion_uses_gaussian_with_obs_std_in_symlog_space():
    wm, data = make("vector", obs_std=0.5), batch("vector")
    out = wm.loss(data)
    sq = out.metrics["rec/vector"]
    expected = 0.5 * sq / 0.25 + 4 * (np.log(0.5) + 0.5 * np.log(2 * np.pi))
    torch.testing.assert_close(out.metrics["distortion/vector"], expected)


def test_heads_start_at_exactly_zero_reward():
    wm = make("vector")
    feat = torch.randn(5, 7, wm.feat_size)
    assert torch.all(wm.reward(feat).mean() == 0)
    assert wm.cont(feat).mean().shape == (5, 7)


def test_continuation_target_is_discounted():
    wm, data = make("vector"), batch("vector")
    feat = torch.randn(3, 6, wm.feat_size)
    lik = wm.likelihood(feat, data)
    target = (1.0 - data["is_terminal"].float()) * 0.99
    torch.testing.assert_close(lik.con, -wm.cont(feat).log_prob(target))
    wm_v1 = make("vector", cont_discount=False)
    assert wm_v1.discount == 1.0


def test_heads_latents_and_decoder_build_float32_distributions_under_bf16_autocast():
    wm = make("both", latent="gaussian")
    with torch.no_grad():
        for p in wm.reward.parameters():  # logits that are not all zero (outscale 0 starts them there)
            p.normal_(0.0, 0.5)
    feat, deter = torch.randn(5, wm.feat_size), torch.randn(5, wm.rssm.deter)
    rew_target, cont_target = torch.full((5,), 1000.5), torch.full((5,), 1.0 - 1.0 / 333)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert wm.reward.mlp(feat).dtype == torch.bfloat16  # the networks do run in bf16
        rew, cont = wm.reward(feat), wm.cont(feat)
        rew_logp, cont_logp = rew.log_prob(rew_target), cont.log_prob(cont_target)
        latent, dec = wm.rssm.dist(wm.rssm.prior(deter)), wm.decoder(feat)
    assert rew.raw.dtype == rew.bins.dtype == cont.logits.dtype == torch.float32
    assert torch.equal(rew.bins, wm.reward.bins)  # 1000.5 is not moved to a bf16 bin
    # The same logits outside autocast, in float32: the same log-probabilities to the bit.
    assert torch.equal(rew_logp, TwoHot(rew.raw, wm.reward.bins, rew.space).log_prob(rew_target))
    logits = cont.logits
    expected = cont_target * F.logsigmoid(logits) + (1.0 - cont_target) * F.logsigmoid(-logits)
    assert torch.equal(cont_logp, expected)  # 1 - 1/333 kept (bf16 would make it 0.99609)
    assert latent.dist.loc.dtype == latent.dist.std.dtype == torch.float32
    assert {d.pred.dtype for d in dec.values()} == {torch.float32}


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"latent": "gaussian"},
        {"gru": "plain", "initial": "learned", "norm": "layer", "reward_bins": "symlog"},
    ],
)
def test_every_parameter_gets_finite_nonzero_gradient(overrides):
    wm, data = make("both", free_nats=0.0, **overrides), batch("both")
    opt = torch.optim.Adam(wm.parameters(), lr=1e-3)
    # One step first: the zero-initialized reward output blocks gradients to its hidden layer at init.
    for _ in range(2):
        opt.zero_grad()
        model_loss(wm.loss(data)).backward()
        opt.step()
    for name, p in wm.named_parameters():
        assert p.grad is not None, name
        assert torch.all(torch.isfinite(p.grad)), name
        assert p.grad.abs().sum() > 0, name


def _grads(wm, loss):
    wm.zero_grad()
    loss.backward()
    return {n: (p.grad.abs().sum().item() if p.grad is not None else 0.0) for n, p in wm.named_parameters()}


def test_stop_gradient_directions_of_dyn_and_rep():
    """dyn = KL[sg(q) || p] trains the prior, rep = KL[q || sg(p)] the posterior.

    As in the reference, the prior at step t sits on h_t, which depends on the posterior sample z_{t-1};
    so over a sequence dyn reaches the encoder through the recurrence, but never through q(z_t) itself.
    With one step there is no recurrence, and dyn gives the encoder and posterior exactly zero gradient.
    """
    wm, data = make("both", free_nats=0.0), batch("both", T=1)
    # Continue from a carried state (at a reset the first deter is exactly 0 and so is the prior's input).
    data["is_first"][:] = False
    carried = RSSMState(torch.randn(3, 32), F.one_hot(torch.randint(0, 4, (3, 4)), 4).float())
    g = _grads(wm, wm.loss(data, carried).losses["dyn"].sum())
    assert all(v == 0 for n, v in g.items() if n.startswith(("encoder.", "rssm.post_")))
    assert all(v > 0 for n, v in g.items() if n.startswith("rssm.prior_net."))
    g = _grads(wm, wm.loss(batch("both")).losses["rep"].sum())
    assert all(v == 0 for n, v in g.items() if n.startswith("rssm.prior_net."))
    assert all(v > 0 for n, v in g.items() if n.startswith(("encoder.", "rssm.post_")))


def test_free_bits_give_exactly_zero_gradient_below_threshold():
    wm, data = make("both", free_nats=1e6), batch("both")
    out = wm.loss(data)
    assert torch.all(out.losses["dyn"] == 1e6)
    g = _grads(wm, (out.losses["dyn"] + out.losses["rep"]).sum())
    assert all(v == 0 for v in g.values())


def test_prev_actions_shift_and_reset():
    action = torch.arange(1.0, 7.0).view(1, 6, 1)
    is_first = torch.tensor([[True, False, False, True, False, False]])
    prev = WorldModel.prev_actions(action, is_first)
    assert prev.flatten().tolist() == [0.0, 1.0, 2.0, 0.0, 4.0, 5.0]


def test_state_resets_where_is_first():
    wm, data = make("vector"), batch("vector")
    torch.manual_seed(1)
    a = wm.loss(data)
    other = dict(data, vector=data["vector"].clone(), action=data["action"].clone())
    other["vector"][0, :3] += 5.0
    other["action"][0, :3] = other["action"][0, :3].flip(-1)
    carried = RSSMState(torch.randn(3, 32), a.last.stoch)
    torch.manual_seed(1)
    b = wm.loss(other, state=carried)
    # Sequence 0 restarts at t = 3: from there on nothing before it matters.
    torch.testing.assert_close(a.states.deter[0, 3:], b.states.deter[0, 3:])
    assert not torch.allclose(a.states.deter[0, 2], b.states.deter[0, 2])


def test_observe_step_matches_observe():
    wm, data = make("both"), batch("both")
    torch.manual_seed(2)
    out = wm.loss(data)
    torch.manual_seed(2)
    state = wm.initial(3)
    prev = WorldModel.prev_actions(data["action"], data["is_first"])
    for t in range(6):
        obs = {k: data[k][:, t] for k in ("vector", "image")}
        state = wm.observe_step(state, prev[:, t], obs, data["is_first"][:, t])
    torch.testing.assert_close(state.deter, out.last.deter)
    torch.testing.assert_close(state.stoch, out.last.stoch)


def test_imagine_shapes_and_actions():
    wm = make("vector", latent="gaussian")
    start = RSSMState(torch.randn(5, 32), torch.randn(5, 4))
    seen = []

    def policy(feat):
        seen.append(feat)
        return F.one_hot(torch.full((5,), len(seen) % 3), 3).float()

    feat, actions = wm.rssm.imagine(start, policy, horizon=4)
    assert feat.shape == (5, 5, wm.feat_size) and actions.shape == (5, 5, 3)
    torch.testing.assert_close(feat[:, 0], wm.feat(start))
    # The policy saw each state's features, detached; step t + 1 follows the action taken at t.
    assert len(seen) == 5 and not any(f.requires_grad for f in seen)
    torch.testing.assert_close(torch.stack(seen, 1), feat)
    after = wm.rssm.img_step(start, actions[:, 0])
    torch.testing.assert_close(feat[:, 1, :32], after.deter)
    assert actions[:, :, 1].tolist() == [[1.0, 0.0, 0.0, 1.0, 0.0]] * 5


def test_imagine_from_hot_classes_keeps_them():
    """A start whose one-hot latents are held as hot classes imagines states held the same way: features
    with the dense deter and OneHot latents, equal to the dense features of the same states."""
    wm = make("vector")
    start = RSSMState(torch.randn(5, 32), F.one_hot(torch.randint(0, 4, (5, 4)), 4).float())
    feat, actions = wm.rssm.imagine(
        RSSMState(start.deter, OneHot.of(start.stoch)),
        lambda f: F.one_hot(torch.zeros(5, dtype=torch.long), 3).float(),
        horizon=3,
    )
    assert isinstance(feat, Features) and isinstance(feat.parts[1], OneHot)
    deter, stoch = feat.parts
    assert deter.shape == (5, 4, 32) and stoch.index.shape == (5, 4, 4) and actions.shape == (5, 4, 3)
    torch.testing.assert_close(feat.to_dense()[:, 0], wm.feat(start))
    # Each imagined state follows from the one before by the dense step (same deter).
    state = RSSMState(deter[:, 1], F.one_hot(stoch.index[:, 1], 4).float())
    torch.testing.assert_close(wm.rssm.img_step(state, actions[:, 1]).deter, deter[:, 2])


@pytest.mark.parametrize("dyn_inputs", ["separate", "joint"])
def test_dynamics_read_one_hot_stoch_as_the_dense_one(dyn_inputs):
    """Given the hot classes of z, the input layer gathers their weight columns: the next deter equals the
    dense step's; the action still gets its gradient, z (given as indices) none."""
    wm = make("vector", dyn_inputs=dyn_inputs).double()
    rssm = wm.rssm
    torch.manual_seed(1)
    index = torch.randint(0, rssm.classes, (5, rssm.stoch))
    state = RSSMState(
        torch.randn(5, rssm.deter, dtype=torch.float64), F.one_hot(index, rssm.classes).double()
    )
    action = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    dense = rssm._dynamics(state, action)
    (dense_grad,) = torch.autograd.grad(dense.sum(), action)
    gathered = rssm._dynamics(RSSMState(state.deter, OneHot(index, rssm.classes)), action)
    (gathered_grad,) = torch.autograd.grad(gathered.sum(), action)
    torch.testing.assert_close(gathered, dense, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gathered_grad, dense_grad, rtol=1e-12, atol=1e-12)


def test_open_loop_shapes_and_context_is_posterior():
    wm, data = make("both"), batch("both")
    pred = wm.open_loop(data, context=3)
    assert pred["image"].shape == (3, 6, 16, 16, 3) and pred["vector"].shape == (3, 6, 4)
    assert pred["image"].min() >= 0 and pred["image"].max() <= 1


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"latent": "beta"}, "world_model.latent must be one of"),
        ({"gru": "lstm"}, "world_model.gru must be one of"),
        ({"initial": "random"}, "world_model.initial must be one of"),
        ({"reward_bins": "linear"}, "world_model.reward_bins must be one of"),
        ({"blocks": 5}, r"world_model.deter \(32\) must be divisible by world_model.blocks \(5\)"),
        ({"encoder": {"vector_keys": "", "image_keys": ""}}, "the encoder matches no observation key"),
    ],
)
def test_bad_config_errors_name_the_key(overrides, message):
    with pytest.raises(ValueError, match=message):
        make("both", **overrides)


IMAGE64 = {"image": ArraySpec((64, 64, 3), np.uint8)}


def size12m_decoder(*presets):
    """The image decoder at size12m dims (deter 2048, 32 x 16 latents, units 256, 64 channels at 4x4)."""
    cfg = load_config([*presets, "size12m"]).world_model
    return Decoder(cfg.decoder, IMAGE64, cfg.deter + cfg.stoch * cfg.classes, cfg.deter, cfg.norm)


def test_decoder_image_input_layer_parameters_at_size12m():
    """v2 (`bspace: 8`): 8 blocks of 256 -> 128 on h, 512 -> 512 -> 1024 on z, norms: ~1.05M weights,
    against 2.6M for one dense layer on [h, z] (the v1 layout, here at size12m's v2 channels)."""
    h, z, units, space = 2048, 32 * 16, 256, 4 * 4 * 64
    block = 8 * (h // 8) * (space // 8) + space
    stoch_path = (z * 2 * units + 2 * units) + 2 * units + (2 * units * space + space)
    expected = block + stoch_path + 64  # + the RMSNorm scale over the 64 channels
    assert expected == 1_051_712
    decoder = size12m_decoder()
    assert isinstance(decoder.space, BlockSpace)
    assert sum(p.numel() for p in decoder.space.parameters()) == expected
    dense = load_config(["size12m"], {"world_model": {"decoder": {"bspace": 0}}}).world_model
    dense = Decoder(dense.decoder, IMAGE64, h + z, h, dense.norm)
    assert sum(p.numel() for p in dense.space.parameters()) == (h + z) * space + space + 64 == 2_622_528


def test_block_space_matches_a_float64_reference_and_trains_from_h_and_z():
    """Block g of the h path fills channel group g at every position (reference `(g h w c) -> h w (g c)`),
    the z path is Linear -> RMSNorm -> SiLU -> Linear; their sum goes through RMSNorm -> SiLU."""
    torch.manual_seed(0)
    D, Z, C, H, W, G = 8, 6, 4, 2, 3, 2
    space = BlockSpace(D, Z, (C, H, W), G, units=5, norm="rms").double()
    feat = torch.randn(7, D + Z, dtype=torch.float64, requires_grad=True)
    rms = lambda x: x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-4)
    x1 = space.from_stoch.net[0](feat[:, D:])
    x1 = space.from_stoch.net[3](F.silu(rms(x1) * space.from_stoch.net[1].weight))
    expected = x1.reshape(7, H, W, C).clone()  # [N, h, w, c]
    block = space.from_deter
    for g in range(G):
        out = feat[:, g * D // G : (g + 1) * D // G] @ block.weight[g]  # [N, h * w * C/G]
        out = out + block.bias[g * H * W * C // G : (g + 1) * H * W * C // G]
        expected[..., g * C // G : (g + 1) * C // G] += out.reshape(7, H, W, C // G)
    expected = F.silu(rms(expected) * space.norm.weight).permute(0, 3, 1, 2)
    got = space(feat)
    assert got.shape == (7, C, H, W)
    torch.testing.assert_close(got, expected)
    got.square().sum().backward()
    assert feat.grad[:, :D].abs().sum() > 0 and feat.grad[:, D:].abs().sum() > 0
    for name, p in space.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_decoder_gradients_reach_h_and_z_at_size12m():
    decoder = size12m_decoder()
    feat = torch.randn(2, 3, 2048 + 512, requires_grad=True)
    dist = decoder(feat)["image"]
    assert dist.mode().shape == (2, 3, 64, 64, 3)
    dist.mode().sum().backward()
    assert feat.grad[..., :2048].abs().sum() > 0 and feat.grad[..., 2048:].abs().sum() > 0


def test_v1_decoder_starts_linear_and_ends_without_sigmoid():
    """The 2023 code: `in` = Linear on [h, z] with no norm or activation; image mean x + 0.5."""
    torch.manual_seed(0)
    v1, v2 = size12m_decoder("v1"), size12m_decoder()
    feat = torch.randn(4, 2048 + 512)
    assert v1.space.norm is None
    expected = v1.space.linear(feat).reshape(4, 128, 4, 4)
    torch.testing.assert_close(v1.space(feat), expected)
    for decoder in (v1, v2):
        torch.nn.init.zeros_(decoder.out.weight)
        torch.nn.init.constant_(decoder.out.bias, 2.0)
    assert torch.all(v1(feat)["image"].mode() == 2.5)
    torch.testing.assert_close(
        v2(feat)["image"].mode(), torch.full((4, 64, 64, 3), torch.sigmoid(torch.tensor(2.0)).item())
    )


def test_decoder_bspace_must_divide_deter_and_channels():
    cfg = load_config(["debug"], {"world_model": {"decoder": {"bspace": 8}}}).world_model
    with pytest.raises(
        ValueError,
        match=r"bspace \(8\) must divide world_model.deter \(32\) and the decoder's last conv channels",
    ):
        WorldModel(cfg, SPACES["image"], ACT, 0.99)


def test_v1_strided_convs_match_the_2023_layout():
    """v1: stride-2 kernel-4 convs with depth x (1, 2, 4, 8) channels down to 4x4 (as v1 ports such as
    SheepRL's XS: 24, 48, 96, 192), transposed convs back up, and a quarter of the conv work per stage."""
    space = {"image": ArraySpec((64, 64, 3), np.uint8)}
    cfg = load_config(["v1", "xs"]).world_model
    wm = WorldModel(cfg, space, ACT, 0.99)
    convs = [conv for conv, _ in wm.encoder.convs]
    assert [c.out_channels for c in convs] == [24, 48, 96, 192]
    assert all(c.stride == (2, 2) and c.kernel_size == (4, 4) for c in convs)
    assert wm.encoder.out_features == 192 * 4 * 4
    image = torch.randint(0, 256, (2, 3, 64, 64, 3), dtype=torch.uint8)
    assert wm.encoder({"image": image}).shape == (2, 3, 192 * 16)
    dist = wm.decoder(torch.randn(2, 3, wm.feat_size))["image"]
    assert dist.mode().shape == (2, 3, 64, 64, 3)
    assert [type(c).__name__ for c, _ in wm.decoder.convs] == ["ConvTranspose2d"] * 3
    unstrided = WorldModel(load_config(["xs"]).world_model, space, ACT, 0.99)
    x = torch.zeros(1, 3, 64, 64)
    assert convs[0](x).shape[-1] * 2 == unstrided.encoder.convs[0][0](x).shape[-1]


def test_v1_dynamics_take_one_embedding_of_stoch_and_action():
    """v1 (`img_in`): h_t = GRU(h, Linear(z, a)) with the gates from [h, x]; one hidden prior layer."""
    cfg = load_config(["v1", "xs"]).world_model
    wm = WorldModel(cfg, SPACES["vector"], ACT, 0.99)
    rssm = wm.rssm
    assert not hasattr(rssm, "in_deter") and not hasattr(rssm, "in_stoch")
    assert rssm.in_joint.net[0].weight.shape == (256, 32 * 32 + 3)
    assert rssm.core.gates.weight.shape == (3 * 256, 256 + 256)
    assert sum(isinstance(m, torch.nn.Linear) for m in rssm.prior_net.modules()) == 2  # hidden + stats
    out = wm.loss(batch("vector"))
    model_loss(out).backward()
    for name, p in rssm.named_parameters():
        if name.startswith(("in_joint", "core")):
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    # The v2 layout embeds the three inputs apart.
    v2 = WorldModel(load_config(["xs"]).world_model, SPACES["vector"], ACT, 0.99).rssm
    assert v2.core.hid_x.weight.shape[1] == 3 * 256 and not hasattr(v2, "in_joint")


@pytest.mark.parametrize("preset", [[], ["v1"]])
def test_channels_last_conv_weights_give_the_results_of_the_plain_layout(preset):
    """The conv stacks keep their weights channels-last for speed; losses and gradients must equal those
    of contiguous weights up to float32 rounding (the channel norms are checked in test_nets)."""
    wm, data = make("image", seed=3), batch("image", seed=3)
    if preset:
        cfg = load_config(
            ["debug", *preset], {"world_model": {"encoder": {"kernel": 4}, "decoder": {"kernel": 4}}}
        )
        torch.manual_seed(3)
        wm = WorldModel(cfg.world_model, SPACES["image"], ACT, discount=0.99)
    convs = [m for m in wm.modules() if isinstance(m, torch.nn.modules.conv._ConvNd)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)

    def loss_and_grads():
        torch.manual_seed(0)
        wm.zero_grad()
        loss = model_loss(wm.loss(data))
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in wm.named_parameters() if p.grad is not None}

    fast = loss_and_grads()
    for conv in convs:
        conv.weight.data = conv.weight.data.contiguous()
    plain = loss_and_grads()
    torch.testing.assert_close(fast[0], plain[0], rtol=1e-5, atol=1e-5)
    assert fast[1].keys() == plain[1].keys()
    for name in fast[1]:
        torch.testing.assert_close(fast[1][name], plain[1][name], rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("obs", ["image", "both"])
def test_strided_world_model_trains(obs):
    wm, data = (
        make(obs, encoder={"strided": True, "kernel": 4}, decoder={"strided": True, "kernel": 4}),
        batch(obs),
    )
    out = wm.loss(data)
    model_loss(out).backward()
    assert torch.isfinite(model_loss(out))
    for name, p in wm.named_parameters():
        if name.startswith(("encoder.convs", "decoder.convs")):
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_bad_image_size_error():
    cfg = load_config(["debug"])
    with pytest.raises(ValueError, match="cannot be halved down to minres 4"):
        WorldModel(cfg.world_model, {"image": ArraySpec((24, 24, 3), np.uint8)}, ACT, 0.99)


def linear_system(B, T, seed):
    """A rotating 2-D point pushed by one-hot actions, observed with noise: x' = R x + 0.3 u."""
    g = torch.Generator().manual_seed(seed)
    angle = 0.3
    rot = torch.tensor([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]], dtype=torch.float32)
    push = torch.tensor([[0.0, 0.0], [0.3, 0.0], [0.0, 0.3]])
    idx = torch.randint(0, 3, (B, T), generator=g)
    x = torch.randn(B, 2, generator=g)
    xs = []
    for t in range(T):
        xs.append(x)
        x = x @ rot.T + push[idx[:, t]]
    state = torch.stack(xs, 1)
    obs = torch.cat([state, state.square().sum(-1, keepdim=True), torch.zeros(B, T, 1)], -1)
    data = {
        "vector": obs + 0.02 * torch.randn(B, T, 4, generator=g),
        "action": F.one_hot(idx, 3).float(),
        "reward": state[..., 0].clone(),
        "is_first": torch.zeros(B, T, dtype=torch.bool),
        "is_last": torch.zeros(B, T, dtype=torch.bool),
        "is_terminal": torch.zeros(B, T, dtype=torch.bool),
    }
    data["is_first"][:, 0] = True
    return data, obs


def _open_loop_error(wm, seed):
    data, clean = linear_system(32, 16, seed)
    pred = wm.open_loop(data, context=6)["vector"]
    return (pred[:, 6:] - clean[:, 6:]).square().mean().item()


def test_fitting_a_linear_system_raises_elbo_and_lowers_open_loop_error():
    wm = make("vector")
    opt = torch.optim.Adam(wm.parameters(), lr=3e-3)
    torch.manual_seed(0)
    eval_data, _ = linear_system(32, 16, seed=999)
    with torch.no_grad():
        elbo_start = wm.loss(eval_data).metrics["elbo"].item()
    err_start = _open_loop_error(wm, 999)
    for step in range(120):
        data, _ = linear_system(8, 12, seed=step)
        out = wm.loss(data)
        opt.zero_grad()
        model_loss(out).backward()
        opt.step()
    with torch.no_grad():
        elbo_end = wm.loss(eval_data).metrics["elbo"].item()
    err_end = _open_loop_error(wm, 999)
    assert elbo_end > elbo_start + 3.0, (elbo_start, elbo_end)
    assert err_end < 0.5 * err_start, (err_start, err_end)
