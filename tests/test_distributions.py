"""Distributions: golden values, round trips, closed-form KL vs Monte Carlo, straight-through gradients."""

import math

import pytest
import torch
import torch.nn.functional as F

from nets.distributions import (
    Bernoulli,
    BoundedNormal,
    DiagNormal,
    OneHotCategorical,
    SymlogMSE,
    TwoHot,
    symexp_bins,
    symlog_bins,
    two_hot,
)
from nets.functional import symexp, symlog


def test_unimix_floor_and_normalization():
    logits = torch.tensor([[100.0, 0.0, -100.0, -100.0]])
    dist = OneHotCategorical(logits, unimix=0.01)
    assert torch.all(dist.probs >= 0.01 / 4 - 1e-7)
    torch.testing.assert_close(dist.probs.sum(-1), torch.ones(1))
    torch.testing.assert_close(dist.probs[0, 0], torch.tensor(0.99 + 0.0025))
    torch.testing.assert_close(dist.logits.exp(), dist.probs)


def test_straight_through_sample_value_and_gradient():
    torch.manual_seed(0)
    logits = torch.randn(5, 3, requires_grad=True)
    dist = OneHotCategorical(logits, unimix=0.0)
    sample = dist.sample()
    # The value is exactly one-hot.
    assert torch.all((sample == 0) | (sample == 1)) and torch.all(sample.sum(-1) == 1)
    # The gradient is that of the probs (d sample / d logits = d probs / d logits).
    w = torch.randn(5, 3)
    (g,) = torch.autograd.grad((sample * w).sum(), logits)
    (g_ref,) = torch.autograd.grad((torch.softmax(logits, -1) * w).sum(), logits)
    torch.testing.assert_close(g, g_ref)
    mode = dist.mode()
    assert torch.equal(mode.argmax(-1), logits.argmax(-1))


def test_categorical_sample_frequencies():
    torch.manual_seed(0)
    probs = torch.tensor([0.1, 0.2, 0.7])
    dist = OneHotCategorical(probs.log().expand(20000, 3))
    freq = dist.sample().detach().mean(0)
    se = (probs * (1 - probs) / 20000).sqrt()
    assert torch.all((freq - probs).abs() < 4 * se)


def test_categorical_sample_edge_classes_and_per_row_frequencies():
    # Classes of probability 0 are never drawn, a class of probability 1 always is, first or last.
    logits = torch.tensor([[-math.inf, -math.inf, 0.0], [0.0, -math.inf, -math.inf], [0.0, -math.inf, 0.0]])
    samples = OneHotCategorical(logits.expand(5000, 3, 3)).sample()
    assert torch.equal(samples[:, 0], torch.tensor([0.0, 0.0, 1.0]).expand(5000, 3))
    assert torch.equal(samples[:, 1], torch.tensor([1.0, 0.0, 0.0]).expand(5000, 3))
    assert samples[:, 2, 1].sum() == 0
    # Each row follows its own (unimix) probabilities: 8 rows of 32 classes, as in the latent.
    dist = OneHotCategorical(torch.randn(8, 32).mul(3).expand(40000, 8, 32), unimix=0.01)
    freq, probs = dist.sample().mean(0), dist.probs[0]
    se = (probs * (1 - probs) / 40000).sqrt()
    assert torch.all((freq - probs).abs() < 5 * se)


@pytest.mark.parametrize("unimix", [0.0, 0.01, 0.3])
def test_categorical_sample_index_follows_the_mixture(unimix):
    # A row with one class of probability 1 (before mixing) and rows of spread logits; 8 classes.
    n = 40000
    logits = torch.cat([torch.tensor([[0.0] + [-math.inf] * 7]), torch.randn(3, 8) * 3]).expand(n, 4, 8)
    dist = OneHotCategorical(logits, unimix)
    torch.manual_seed(1)
    index = dist.sample_index()
    assert index.dtype == torch.int64 and index.shape == (n, 4)
    freq, probs = torch.nn.functional.one_hot(index, 8).double().mean(0), dist.probs[0].double()
    se = (probs * (1 - probs) / n).sqrt()
    assert torch.all((freq - probs).abs() <= 5 * se)  # classes of probability 0 are never drawn


def test_categorical_kl_matches_monte_carlo():
    torch.manual_seed(0)
    p = OneHotCategorical(torch.randn(6, 5).double(), unimix=0.01)
    q = OneHotCategorical(torch.randn(6, 5).double(), unimix=0.01)
    n = 20000
    samples = OneHotCategorical(p.logits.expand(n, 6, 5)).sample().detach()
    terms = p.log_prob(samples) - q.log_prob(samples)  # [n, 6]
    mc, se = terms.mean(0), terms.std(0) / math.sqrt(n)
    assert torch.all((mc - p.kl(q)).abs() < 4 * se)
    assert torch.all(p.kl(p).abs() < 1e-12)
    # Entropy equals -E[log p].
    ent = -p.log_prob(samples).mean(0)
    assert torch.all((ent - p.entropy()).abs() < 4 * p.log_prob(samples).std(0) / math.sqrt(n))


def test_gaussian_kl_log_prob_entropy():
    torch.manual_seed(0)
    p = DiagNormal(torch.randn(4, 3).double(), torch.rand(4, 3).double() + 0.3)
    q = DiagNormal(torch.randn(4, 3).double(), torch.rand(4, 3).double() + 0.3)
    x = torch.randn(4, 3).double()
    ref = torch.distributions.Normal(p.loc, p.std).log_prob(x).sum(-1)
    torch.testing.assert_close(p.log_prob(x), ref)
    torch.testing.assert_close(p.entropy(), torch.distributions.Normal(p.loc, p.std).entropy().sum(-1))
    n = 40000
    z = DiagNormal(p.loc.expand(n, 4, 3), p.std.expand(n, 4, 3)).sample()
    terms = p.log_prob(z) - q.log_prob(z)
    mc, se = terms.mean(0), terms.std(0) / math.sqrt(n)
    assert torch.all((mc - p.kl(q)).abs() < 4 * se)


def test_gaussian_sample_is_reparameterized():
    mean = torch.zeros(3, requires_grad=True)
    std = torch.ones(3, requires_grad=True)
    torch.manual_seed(1)
    z = DiagNormal(mean, std).sample()
    z.sum().backward()
    assert torch.all(mean.grad == 1)
    torch.manual_seed(1)
    eps = torch.randn(3)
    torch.testing.assert_close(std.grad, eps)


def test_bounded_normal_range():
    x = torch.tensor([[-50.0, 0.0, 50.0]])
    dist = BoundedNormal(x, x, min_std=0.1, max_std=1.0)
    torch.testing.assert_close(dist.mode(), torch.tanh(x))
    torch.testing.assert_close(
        dist.std[0, 1], torch.tensor(0.9 * torch.sigmoid(torch.tensor(2.0)).item() + 0.1)
    )
    assert dist.std[0, 0].item() == pytest.approx(0.1) and dist.std[0, 2].item() == pytest.approx(1.0)
    assert dist.log_prob(torch.zeros(1, 3)).shape == (1,)


def test_bins_golden():
    b = symlog_bins(5)
    torch.testing.assert_close(b, torch.tensor([-20.0, -10.0, 0.0, 10.0, 20.0]))
    e = symexp_bins(255)
    assert e[127].item() == 0.0 and torch.all(e == -e.flip(0))
    torch.testing.assert_close(e[-1], torch.tensor(math.expm1(20.0)))
    assert torch.all(e[1:] > e[:-1])


@pytest.mark.parametrize("bins", [symexp_bins(255), symlog_bins(41)])
def test_two_hot_round_trip(bins):
    x = torch.tensor([0.0, 0.3, -2.7, 17.0, 1234.5, -3.0e5])
    x = x[(x >= bins[0]) & (x <= bins[-1])]
    w = two_hot(x, bins)
    torch.testing.assert_close(w.sum(-1), torch.ones_like(x))
    assert torch.all((w > 0).sum(-1) <= 2)
    torch.testing.assert_close((w * bins).sum(-1), x, rtol=1e-5, atol=1e-5)


def test_two_hot_golden_and_clipping():
    bins = torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0])
    w = two_hot(torch.tensor([0.25, -1.0, 5.0, -5.0]), bins)
    expected = torch.tensor(
        [
            [0.0, 0.0, 0.75, 0.25, 0.0],
            [0.0, 1.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.0, 1.0],
            [1.0, 0.0, 0.0, 0.0, 0.0],
        ]
    )
    torch.testing.assert_close(w, expected)


@pytest.mark.parametrize("space", ["raw", "symlog"])
def test_two_hot_dist_zero_at_init_and_learns_value(space):
    n = 255
    bins = symexp_bins(n) if space == "raw" else symlog_bins(n)
    assert torch.all(TwoHot(torch.zeros(7, n), bins, space).mean() == 0)
    # The logits that maximize log_prob(x) predict x.
    logits = torch.zeros(1, n, requires_grad=True)
    opt = torch.optim.Adam([logits], lr=0.1)
    target = torch.tensor([3.5])
    for _ in range(300):
        loss = -TwoHot(logits, bins, space).log_prob(target).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.testing.assert_close(TwoHot(logits, bins, space).mean(), target, rtol=1e-2, atol=1e-2)
    # log_prob at a bin is the log-probability of that bin.
    d = TwoHot(torch.randn(2, n), bins, space)
    value = bins[200] if space == "raw" else bins[200].exp() - 1
    torch.testing.assert_close(d.log_prob(value.expand(2)), d.logits[:, 200], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("space", ["raw", "symlog"])
def test_two_hot_log_prob_equals_the_dense_cross_entropy_exactly(space):
    """log_prob reads the logits at the two weighted bins; the dense sum of weights x logits over all
    bins has exact zeros elsewhere, so both agree to the last bit, gradients too: inside the range,
    on bins, and beyond both ends (one bin)."""
    torch.manual_seed(0)
    n = 255
    bins = symexp_bins(n) if space == "raw" else symlog_bins(n)
    raw = torch.randn(6, 40, n, dtype=torch.float64, requires_grad=True)
    x = torch.randn(6, 40, dtype=torch.float64) * 30
    x[0, :3] = torch.tensor([1e12, -1e12, 0.0], dtype=torch.float64)
    on_bin = bins[100] if space == "raw" else symexp(bins[100])
    x[1, 0] = on_bin.double()
    dist = TwoHot(raw, bins, space)
    got = dist.log_prob(x)
    target = symlog(x) if space == "symlog" else x
    dense = (two_hot(target, dist.bins) * F.log_softmax(raw, -1)).sum(-1)
    assert torch.equal(got, dense)
    assert torch.equal(*(torch.autograd.grad(v.sum(), raw)[0] for v in (got, dense)))
    # probs and logits are the softmax and log-softmax of the raw outputs.
    torch.testing.assert_close(dist.probs.log(), dist.logits, rtol=0, atol=1e-12)


def test_two_hot_rejects_bad_space():
    with pytest.raises(ValueError, match="space must be one of"):
        TwoHot(torch.zeros(3), torch.zeros(3), "log")


def test_symlog_mse():
    pred = torch.tensor([[0.0, 1.0]])
    dist = SymlogMSE(pred)
    x = torch.tensor([[2.0, -1.0]])
    torch.testing.assert_close(
        dist.log_prob(x), -((0 - symlog(torch.tensor(2.0))) ** 2 + (1 + math.log(2)) ** 2)[None]
    )
    torch.testing.assert_close(dist.mode(), torch.tensor([[0.0, math.e - 1]]))


def test_bernoulli():
    logits = torch.tensor([-2.0, 0.0, 3.0]).double()
    d = Bernoulli(logits)
    ref = torch.distributions.Bernoulli(logits=logits)
    x = torch.tensor([0.0, 1.0, 1.0]).double()
    torch.testing.assert_close(d.log_prob(x), ref.log_prob(x))
    torch.testing.assert_close(d.entropy(), ref.entropy())
    torch.testing.assert_close(d.mean(), torch.sigmoid(logits))
    assert torch.equal(d.mode(), torch.tensor([0.0, 0.0, 1.0]).double())
