"""The sequential ELBO: free bits, KL balancing, normalized likelihoods, and that the bound is a bound.

The lower-bound test enumerates a tiny categorical world model exactly: with 2 latent groups of 2
classes and T = 3 steps there are 64 latent paths, so log p(x_{1:T} | a) is a finite sum and the ELBO and
the importance-weighted bound computed by `WorldModel.log_likelihood_bound` can be checked against it.
"""

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from configs.loader import load_config
from envs.spaces import ActionSpace, ArraySpec
from nets.distributions import DiagNormal
from world_model import elbo
from world_model.rssm import RSSMState
from world_model.world_model import WorldModel


def test_free_bits_zero_gradient_below_threshold():
    kl = torch.tensor([0.2, 0.99, 1.5, 3.0], requires_grad=True)
    out = elbo.free_bits(kl, 1.0)
    torch.testing.assert_close(out, torch.tensor([1.0, 1.0, 1.5, 3.0]))
    out.sum().backward()
    assert torch.equal(kl.grad, torch.tensor([0.0, 0.0, 1.0, 1.0]))


def test_kl_balance_stop_gradient_directions():
    torch.manual_seed(0)
    dist = lambda s: DiagNormal(s[..., 0], F.softplus(s[..., 1]) + 0.1, event_dims=1)
    post = torch.randn(2, 3, 4, 2, requires_grad=True)
    prior = torch.randn(2, 3, 4, 2, requires_grad=True)
    terms = elbo.kl_balance(dist, post, prior, free_nats=0.0)
    torch.testing.assert_close(terms.dyn, terms.rep)
    torch.testing.assert_close(terms.rate, dist(post).kl(dist(prior)))
    assert not terms.rate.requires_grad
    g_post, g_prior = torch.autograd.grad(terms.dyn.sum(), [post, prior], allow_unused=True)
    assert g_post is None and g_prior.abs().sum() > 0
    g_post, g_prior = torch.autograd.grad(terms.rep.sum(), [post, prior], allow_unused=True)
    assert g_prior is None and g_post.abs().sum() > 0


def test_gaussian_nll_has_normalizing_constant():
    x, mu = torch.randn(5, 7).double(), torch.randn(5, 7).double()
    ref = -torch.distributions.Normal(mu, 0.3).log_prob(x).sum(-1)
    torch.testing.assert_close(elbo.gaussian_nll((x - mu).square().sum(-1), 7, 0.3), ref)


def test_bits_per_dim_golden():
    # A uniform density on [0, 1] has NLL 0: exactly 8 bits per 8-bit dimension.
    assert elbo.bits_per_dim(torch.tensor(0.0), 12).item() == 8.0
    torch.testing.assert_close(elbo.bits_per_dim(torch.tensor(12 * math.log(2.0)), 12), torch.tensor(9.0))


def test_iwae_bound_golden():
    lw = torch.tensor([[-1.0, 0.0], [-3.0, 0.0]])
    expected = torch.tensor([math.log((math.exp(-1) + math.exp(-3)) / 2), 0.0])
    torch.testing.assert_close(elbo.iwae_bound(lw), expected)
    torch.testing.assert_close(elbo.iwae_bound(lw[:1]), lw[0])
    assert torch.all(elbo.iwae_bound(lw) >= lw.mean(0))


def test_sequence_elbo_is_minus_distortion_minus_rate():
    d = {"a": torch.tensor([[1.0, 2.0]]), "b": torch.tensor([[0.5, 0.5]])}
    torch.testing.assert_close(
        elbo.sequence_elbo(d, torch.tensor([[0.25, 1.0]])), torch.tensor([[-1.75, -3.5]])
    )


def _tiny_model(latent="categorical", seed=0):
    torch.manual_seed(seed)
    overrides = {"stoch": 2, "classes": 2, "latent": latent, "cont_discount": False, "obs_std": 0.5}
    cfg = load_config(["debug"], {"world_model": overrides})
    wm = WorldModel(
        cfg.world_model, {"vector": ArraySpec((3,), np.float32)}, ActionSpace("continuous", 2), 0.99
    )
    T = 3
    data = {
        "vector": torch.randn(1, T, 3),
        "action": torch.rand(1, T, 2) * 2 - 1,
        # Rewards on a bin (0) and undiscounted continuation targets make every term a normalized
        # likelihood, so ELBO <= log p(x) holds exactly.
        "reward": torch.zeros(1, T),
        "is_first": torch.tensor([[True, False, False]]),
        "is_last": torch.tensor([[False, False, True]]),
        "is_terminal": torch.tensor([[False, False, True]]),
    }
    return wm, data


@torch.no_grad()
def _exact_log_px(wm, data):
    """log p(x_{1:T} | a) by summing over every categorical latent path (K^S)^T."""
    rssm, (_, T) = wm.rssm, data["is_first"].shape
    codes = list(itertools.product(range(rssm.classes), repeat=rssm.stoch))
    paths = torch.tensor([[codes[c] for c in p] for p in itertools.product(range(len(codes)), repeat=T)])
    z = F.one_hot(paths, rssm.classes).float()  # [N, T, S, K]
    N = z.shape[0]
    is_first = data["is_first"].expand(N, T)
    prev = wm.prev_actions(data["action"], data["is_first"]).expand(N, T, -1)
    state, log_prior, deters = wm.initial(N), 0.0, []
    for t in range(T):
        state, action = rssm._reset(state, prev[:, t], is_first[:, t])
        deter = rssm._dynamics(state, action)
        log_prior = log_prior + rssm.dist(rssm.prior(deter)).log_prob(z[:, t])
        state = RSSMState(deter, z[:, t])
        deters.append(deter)
    feat = rssm.feat(RSSMState(torch.stack(deters, 1), z))
    lik = wm.likelihood(feat, {k: v.expand(N, *v.shape[1:]) for k, v in data.items()})
    return torch.logsumexp(log_prior - sum(lik.nll.values()).sum(1), 0)


@torch.no_grad()
def _single_samples(wm, data, n):
    """n independent K = 1 bounds of the one sequence in `data`, in one batch: BoundOutput of [n]."""
    return wm.log_likelihood_bound({k: v.expand(n, *v.shape[1:]) for k, v in data.items()}, 1)


def _mean_se(x):
    return x.mean().item(), (x.std() / math.sqrt(x.numel())).item()


@pytest.mark.parametrize("seed", [0, 1])
def test_elbo_is_a_lower_bound_and_iwae_tightens_exact_enumeration(seed):
    wm, data = _tiny_model(seed=seed)
    log_px = _exact_log_px(wm, data).item()
    torch.manual_seed(seed + 10)
    # K = 1: the bound is the single-sample ELBO estimate itself.
    b1 = wm.log_likelihood_bound(data, 1)
    torch.testing.assert_close(b1.iwae, b1.elbo)
    # The ELBO (closed-form KL per step), averaged over 4000 posterior paths, is below log p(x).
    elbo_mean, elbo_se = _mean_se(_single_samples(wm, data, 4000).elbo_kl)
    assert elbo_mean + 4 * elbo_se < log_px, (elbo_mean, elbo_se, log_px)
    # The importance-weighted bound rises with K towards log p(x) and stays below it (up to noise).
    means = {}
    for k in (1, 10, 300):
        means[k], se = _mean_se(torch.cat([wm.log_likelihood_bound(data, k).iwae for _ in range(16)]))
        assert means[k] < log_px + 4 * se
    assert means[1] < means[10] < means[300]
    assert log_px - means[300] < 0.2 * (log_px - elbo_mean)


def test_gaussian_latent_single_sample_bound_is_unbiased_elbo_and_rises_with_k():
    wm, data = _tiny_model("gaussian", seed=3)
    torch.manual_seed(0)
    single = _single_samples(wm, data, 4000)
    # E[log w] for one sample equals the ELBO with the closed-form KL (the same expectation).
    lw_mean, lw_se = _mean_se(single.iwae)
    kl_mean, kl_se = _mean_se(single.elbo_kl)
    assert abs(lw_mean - kl_mean) < 4 * math.hypot(lw_se, kl_se)
    bounds = [
        _mean_se(torch.cat([wm.log_likelihood_bound(data, k).iwae for _ in range(16)])) for k in (1, 30)
    ]
    assert bounds[0][0] + 2 * math.hypot(bounds[0][1], bounds[1][1]) < bounds[1][0]
    assert bounds[1][0] > kl_mean
