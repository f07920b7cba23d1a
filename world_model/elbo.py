"""The sequential ELBO as pure functions: KL balancing with free bits, rate, distortion, bounds.

For x_{1:T} with actions a_{1:T} (DESIGN.md, "The sequential ELBO"):

    log p(x_{1:T} | a) >= sum_t E_q[log p(x_t | s_t)] - sum_t E_q[KL(q(z_t | h_t, x_t) || p(z_t | h_t))]

Distortion is the negative log-likelihood term (per decoded key, reward and continuation), rate the KL
term, both per step in nats. The training loss (v2) replaces the KL by the balanced, free-bits terms
`dyn` and `rep`; the pure ELBO is reported beside it.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch

LOG_2PI = math.log(2.0 * math.pi)
LN2 = math.log(2.0)
# Bits of one 8-bit pixel value: the discretization term of bits/dim (see `bits_per_dim`).
BITS_8 = 8.0


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
