"""The sequential ELBO: free bits, KL balancing, normalized likelihoods, and that the bound is a bound.

The lower-bound test enumerates a tiny categorical world model exactly: with 2 latent groups of 2
classes and T = 3 steps there are 64 latent paths, so log p(x_{1:T} | a) is a finite sum and the ELBO and
the importance-weighted bound computed by `WorldModel.log_likelihood_bound` can be checked against it, as
can the particle (filtering) bound of `WorldModel.particle_bound`.
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
from world_model.world_model import WorldModel, select_particles


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


# --- the particle (filtering) bound ------------------------------------------------------------------


def test_smc_step_golden():
    # Weights carried (1/4, 3/4), increments (2, 1): the bound adds log(1/4 * 2 + 3/4 * 1) = log 1.25.
    carried = torch.log(torch.tensor([[1.0], [3.0]]))
    step, new = elbo.smc_step(carried, torch.log(torch.tensor([[2.0], [1.0]])))
    torch.testing.assert_close(step, torch.log(torch.tensor([1.25])))
    torch.testing.assert_close(new.exp(), torch.tensor([[0.4], [0.6]]))


def test_effective_sample_size_golden():
    weights = [[1.0, 1.0, 2.0], [1.0, 1e-30, 1.0], [1.0, 1e-30, 1.0], [1.0, 1e-30, 0.0]]  # [K = 4, 3]
    log_w = torch.log(torch.tensor(weights))
    # Equal weights: K; one particle holding all: 1; weights (2, 1, 1, 0) / 4: 1 / (1/4 + 2/16) = 8/3.
    torch.testing.assert_close(elbo.effective_sample_size(log_w), torch.tensor([4.0, 1.0, 8 / 3]))


def test_systematic_resampling_gives_floor_or_ceil_children():
    torch.manual_seed(0)
    K, B = 16, 500
    log_w = 3 * torch.randn(K, B)
    parents = elbo.resample(log_w, "systematic")
    children = F.one_hot(parents, K).sum(0).T  # [K, B]: children of each particle
    expected = K * torch.softmax(log_w.double(), 0)
    assert torch.all(children >= torch.floor(expected) - 1e-9) and torch.all(children <= torch.ceil(expected))
    assert torch.all(children.sum(0) == K)


def test_multinomial_resampling_draws_by_weight():
    torch.manual_seed(0)
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    parents = elbo.resample(probs.log()[:, None].expand(4, 20_000), "multinomial")
    freq = F.one_hot(parents.flatten(), 4).double().mean(0)
    se = torch.sqrt(probs * (1 - probs) / parents.numel()).double()  # binomial standard error per class
    assert torch.all((freq - probs.double()).abs() < 4 * se), (freq, probs)
    with pytest.raises(ValueError, match="resampling method must be one of"):
        elbo.resample(probs.log()[:, None], "stratified")


def test_select_particles_takes_deter_and_stoch_of_the_same_parent():
    K, B, D = 3, 2, 4
    # Particle k of sequence b (row k*B + b) holds the code 10 b + k in every entry of deter and stoch.
    code = (10 * torch.arange(B) + torch.arange(K)[:, None]).flatten().float()  # [K*B]
    state = RSSMState(code[:, None].expand(K * B, D), code[:, None, None].expand(K * B, 2, 2))
    parents = torch.tensor([[2, 0], [2, 1], [0, 1]])  # [K, B]
    out = select_particles(state, parents)
    expected = (10 * torch.arange(B) + parents).flatten().float()
    assert torch.equal(out.deter[:, 0], expected) and torch.equal(out.stoch[:, 0, 0], expected)
    assert torch.equal(out.deter, expected[:, None].expand(K * B, D))
    assert torch.equal(out.stoch, expected[:, None, None].expand(K * B, 2, 2))


def _copies(data, n):
    """The one sequence of `data` as a batch of n sequences [n, T, ...]."""
    return {k: v.expand(n, *v.shape[1:]) for k, v in data.items()}


@pytest.mark.parametrize("latent", ["categorical", "gaussian"])
def test_particle_bound_with_one_particle_is_the_single_sample_elbo_estimate(latent):
    wm, data = _tiny_model(latent, seed=1)
    batch = _copies(data, 500)
    # The same random numbers give the same posterior path: the same estimate log w, draw by draw.
    torch.manual_seed(5)
    single = wm.log_likelihood_bound(batch, 1)
    torch.manual_seed(5)
    particle = wm.particle_bound(batch, 1)
    torch.testing.assert_close(particle.smc, single.iwae)
    assert particle.resamples.sum() == 0  # one particle always has ESS 1 = K
    # Never resampling, K particles are K independent trajectories: the importance-weighted bound.
    torch.manual_seed(6)
    iw = wm.log_likelihood_bound(batch, 8).iwae
    torch.manual_seed(6)
    torch.testing.assert_close(wm.particle_bound(batch, 8, ess_threshold=0.0).smc, iw)


@pytest.mark.parametrize("seed, resampler", [(0, "systematic"), (0, "multinomial"), (1, "systematic")])
def test_particle_bound_tightens_with_k_to_the_exact_evidence(seed, resampler):
    wm, data = _tiny_model(seed=seed)
    T = data["is_first"].shape[1]
    log_px = _exact_log_px(wm, data).double().item()
    torch.manual_seed(seed + 20)
    elbo_mean, elbo_se = _mean_se(wm.log_likelihood_bound(_copies(data, 4000), 1).elbo_kl.double())
    # Mean and standard error of the bound over independent draws (fewer at the large, tight K).
    stats = {}
    for k, n in ((1, 2000), (4, 2000), (16, 1000), (64, 500), (256, 400)):
        stats[k] = _mean_se(wm.particle_bound(_copies(data, n), k, resampler).smc.double())
    for k, (mean, se) in stats.items():
        assert mean < log_px + 4 * se, (k, mean, se, log_px)  # a lower bound, up to 4 standard errors
    # K = 1 has the ELBO's mean (its single-sample estimate); more particles rise above it, towards log p(x).
    assert abs(stats[1][0] - elbo_mean) < 4 * math.hypot(stats[1][1], elbo_se)
    assert stats[4][0] > elbo_mean + 4 * math.hypot(stats[4][1], elbo_se)
    ks = list(stats)
    assert all(stats[a][0] < stats[b][0] for a, b in itertools.pairwise(ks)), stats
    assert stats[256][0] - stats[1][0] > 4 * math.hypot(stats[1][1], stats[256][1])
    assert (log_px - stats[256][0]) / T < 0.05, (log_px, stats[256])


def test_particle_bound_is_tighter_than_whole_trajectory_weights():
    # Seed 0's posterior is far from the true one (ELBO gap ~10 nats over 3 steps): there, resampling
    # by the per-step weights beats weighting K whole trajectories at the same K.
    wm, data = _tiny_model(seed=0)
    torch.manual_seed(30)
    for k in (16, 64):
        iw = _mean_se(wm.log_likelihood_bound(_copies(data, 500), k).iwae.double())
        smc = _mean_se(wm.particle_bound(_copies(data, 500), k).smc.double())
        assert smc[0] > iw[0] + 4 * math.hypot(iw[1], smc[1]), (k, iw, smc)


def test_gaussian_particle_bound_with_one_particle_has_the_elbo_mean_and_rises_with_k():
    wm, data = _tiny_model("gaussian", seed=3)
    torch.manual_seed(1)
    kl_mean, kl_se = _mean_se(wm.log_likelihood_bound(_copies(data, 4000), 1).elbo_kl)
    small = _mean_se(wm.particle_bound(_copies(data, 2000), 1).smc)
    large = _mean_se(wm.particle_bound(_copies(data, 1000), 64).smc)
    assert abs(small[0] - kl_mean) < 4 * math.hypot(small[1], kl_se)
    assert large[0] > small[0] + 4 * math.hypot(small[1], large[1])


def test_particles_follow_their_resampled_parents():
    wm, data = _tiny_model("gaussian", seed=2)
    K, B = 8, 5
    steps = []
    obs_step = wm.rssm.obs_step

    def recording(state, *args):
        out = obs_step(state, *args)
        steps.append((state, out[0]))
        return out

    wm.rssm.obs_step = recording
    torch.manual_seed(0)
    out = wm.particle_bound(_copies(data, B), K, "multinomial", ess_threshold=1.0)
    assert torch.all(out.resamples == 2)  # after both steps but the last
    moved = 0
    for (_, before), (after, _) in itertools.pairwise(steps):
        # Each particle entering a step is one particle of the step before, deter and stoch together;
        # continuous latents tell the particles apart.
        for b in range(B):
            rows = torch.arange(K) * B + b
            prev = torch.cat([before.deter[rows], before.stoch[rows]], -1)  # [K, D + S]
            new = torch.cat([after.deter[rows], after.stoch[rows]], -1)
            match = (new[:, None] == prev[None]).all(-1)  # [K new, K parents]
            assert torch.all(match.sum(1) == 1), match
            moved += int((match.float().argmax(1) != torch.arange(K)).sum())
    assert moved > 0  # some particles took another parent's place


def test_a_restart_inside_the_window_restarts_the_particles():
    wm, data = _tiny_model(seed=1)
    full = {k: torch.cat([v, v[:, :1]], 1) for k, v in _copies(data, 50).items()}  # T = 4
    full["is_first"][:, 2] = True
    full["is_terminal"][:, 1] = True
    parts = [{k: v[:, :2] for k, v in full.items()}, {k: v[:, 2:] for k, v in full.items()}]
    # Without resampling, the same random numbers give the same particles: with the weights reset at the
    # restart, the bound is the sum of the two episodes' bounds (the evidence factorizes there).
    torch.manual_seed(7)
    whole = wm.particle_bound(full, 4, ess_threshold=0.0).smc
    torch.manual_seed(7)
    split = sum(wm.particle_bound(p, 4, ess_threshold=0.0).smc for p in parts)
    torch.testing.assert_close(whole, split)
