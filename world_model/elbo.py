"""The sequential ELBO as pure functions: KL balancing with free bits, rate, distortion, bounds.

For x_{1:T} with actions a_{1:T} (DESIGN.md, "The sequential ELBO"):

    log p(x_{1:T} | a) >= sum_t E_q[log p(x_t | s_t)] - sum_t E_q[KL(q(z_t | h_t, x_t) || p(z_t | h_t))]

Distortion is the negative log-likelihood term (per decoded key, reward and continuation), rate the KL
term, both per step in nats. The training loss (v2) replaces the KL by the balanced, free-bits terms
`dyn` and `rep`; the pure ELBO is reported beside it.

Two tighter bounds on the same evidence are reported beside the ELBO: the importance-weighted bound of K
whole posterior trajectories (`iwae_bound`), whose weights spread out over long sequences, and the
filtering (particle, sequential Monte Carlo) bound, whose K particles are reweighted and resampled step
by step (`smc_step`, `effective_sample_size`, `resample`; Maddison et al. 2017, Le et al. 2018, Naesseth
et al. 2018, "filtering variational objectives").
"""

from __future__ import annotations

import math
from typing import Callable, Literal, NamedTuple, get_args

import torch

LOG_2PI = math.log(2.0 * math.pi)
LN2 = math.log(2.0)
# Bits of one 8-bit pixel value: the discretization term of bits/dim (see `bits_per_dim`).
BITS_8 = 8.0
# How the particle bound draws the parents of its new particles.
Resampler = Literal["systematic", "multinomial"]
RESAMPLERS: tuple[str, ...] = get_args(Resampler)


class KLTerms(NamedTuple):
    """dyn, rep: [B, T] training terms (free bits applied); rate: [B, T] the pure KL, no gradient."""

    dyn: torch.Tensor
    rep: torch.Tensor
    rate: torch.Tensor


def free_bits(kl: torch.Tensor, free_nats: float) -> torch.Tensor:
    """max(free_nats, kl): below `free_nats` the value is constant and the gradient exactly zero."""
    return torch.clamp(kl, min=free_nats)


def kl_balance(dist: Callable, post: torch.Tensor, prior: torch.Tensor, free_nats: float) -> KLTerms:
    """KL balancing with free bits (v2, reference `RSSM.loss`).

    Args:
        dist: maps latent stats to a distribution whose `kl` sums over latent groups (`RSSM.dist`).
        post, prior: stats [B, T, S, *] of q(z_t | h_t, e_t) and p(z_t | h_t).
        free_nats: free bits on the per-step KL summed over groups.
    Returns:
        dyn = max(free, KL[sg(q) || p]) (trains the prior only), rep = max(free, KL[q || sg(p)]) (trains
        the posterior only), rate = KL[q || p] detached (no free bits, no balancing).
    """
    dyn = dist(post.detach()).kl(dist(prior))
    rep = dist(post).kl(dist(prior.detach()))
    return KLTerms(free_bits(dyn, free_nats), free_bits(rep, free_nats), rep.detach())


def gaussian_nll(sq_error: torch.Tensor, dims: int, std: float) -> torch.Tensor:
    """-log N(x; mu, std^2 I) in nats from the summed squared error over `dims` dimensions."""
    return 0.5 * sq_error / std**2 + dims * (math.log(std) + 0.5 * LOG_2PI)


def bits_per_dim(nll: torch.Tensor, dims: int) -> torch.Tensor:
    """Bits per dimension of an 8-bit image from the NLL (nats) of a density over u = x / 255 in [0, 1].

    Convention: the density on [0, 1] is read as a probability of 256 equal bins (the usual convention of
    image likelihood papers, uniform dequantization), so bits/dim = nll / (dims ln 2) + log2(256). The
    scaling by 255 instead of 256 shifts this by log2(256 / 255) = 0.006 bits, which we ignore.
    """
    return nll / (dims * LN2) + BITS_8


def sequence_elbo(distortion: dict[str, torch.Tensor], rate: torch.Tensor) -> torch.Tensor:
    """Per-step ELBO [B, T] in nats: -(sum of distortion terms) - rate."""
    return -sum(distortion.values()) - rate


def iwae_bound(log_weights: torch.Tensor) -> torch.Tensor:
    """Importance-weighted bound log (1/K) sum_k w_k from log_weights [K, ...] -> [...].

    With log w_k = log p(x, z_k) - log q(z_k | x) for K independent posterior samples this is a lower
    bound on log p(x) that increases with K (Burda et al. 2016); K = 1 is the single-sample ELBO estimate.
    """
    return torch.logsumexp(log_weights, 0) - math.log(log_weights.shape[0])


def smc_step(log_weights: torch.Tensor, log_increments: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of the particle bound: log_weights [K, ...] (unnormalized, carried from the previous
    steps) and the step's log incremental weights [K, ...] -> (log sum_k W_k w_k [...], the new log
    weights [K, ...], normalized), with W = softmax(log_weights) over the K particles.

    Summed over the steps, log sum_k W_k w_k is the log of an unbiased estimate of p(x_{1:T}), so its
    expectation is a lower bound on log p(x_{1:T}) (Jensen).
    """
    joint = torch.log_softmax(log_weights, 0) + log_increments
    return torch.logsumexp(joint, 0), torch.log_softmax(joint, 0)


def effective_sample_size(log_weights: torch.Tensor) -> torch.Tensor:
    """1 / sum_k W_k^2 of the normalized weights W = softmax(log_weights) over dim 0: [K, ...] -> [...],
    in [1, K] (K for equal weights, 1 when one particle holds all the weight)."""
    return torch.exp(-torch.logsumexp(2.0 * torch.log_softmax(log_weights, 0), 0))


def resample(log_weights: torch.Tensor, method: Resampler) -> torch.Tensor:
    """The parents [K, B] (indices into the K particles) of K new particles per sequence, drawn with the
    probabilities softmax(log_weights [K, B]) over dim 0.

    multinomial: K independent draws. systematic: one uniform u per sequence and the points
    (u + i) / K, i < K, so particle k has floor(K W_k) or ceil(K W_k) children (lower variance).
    """
    K, B = log_weights.shape
    cdf = torch.softmax(log_weights.T.double(), -1).cumsum(-1)  # [B, K]
    if method == "systematic":
        u = (torch.rand(B, 1, dtype=cdf.dtype, device=cdf.device) + torch.arange(K, device=cdf.device)) / K
    elif method == "multinomial":
        u = torch.rand(B, K, dtype=cdf.dtype, device=cdf.device)
    else:
        raise ValueError(f"resampling method must be one of {RESAMPLERS}; got {method!r}")
    # Scaled by the row's own total, so float rounding of the sum cannot leave a gap above the last one.
    parents = torch.searchsorted(cdf, u * cdf[:, -1:], right=True).clamp_(max=K - 1)
    return parents.T
