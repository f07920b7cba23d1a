"""Lambda-returns and the percentile return normalizer `RetNorm` (DreamerV3, "Critic learning").

The lambda-return is written once, in the general form of the reference's `lambda_return`
(dreamerv3/agent.py, v2), and serves both the imagined rollouts and the replayed sequences:

    R_{T-1} = b_{T-1}     (the last step bootstraps from its value)
    R_t = r_{t+1} + c_{t+1} * ((1 - l_{t+1}) * b_{t+1} + l_{t+1} * R_{t+1})

with rewards `r`, continuation weights `c` (discount and termination folded in), bootstrap values `b`
and per-step lambdas `l` (the constant lambda, or 0 where a replayed episode ended so the return does
not cross into the next episode).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from nets.functional import where_


def lambda_return(reward: Tensor, cont: Tensor, value: Tensor, lam: float | Tensor) -> Tensor:
    """Lambda-returns of every step but the last, computed backwards in time.

    Args:
        reward: [N, T] reward r_t received on entering step t (index 0 is unused).
        cont: [N, T] continuation weight c_t of step t: the discount times the probability that the
            episode goes on (index 0 is unused).
        value: [N, T] bootstrap value b_t of step t.
        lam: the lambda in [0, 1], a float or an [N, T] tensor of per-step lambdas (index 0 unused).
    Returns:
        [N, T - 1] returns R_0 ... R_{T-2}.
    """
    if not (reward.shape == cont.shape == value.shape) or reward.ndim != 2:
        raise ValueError(
            f"lambda_return needs reward, cont and value of one shape [N, T]; got "
            f"{tuple(reward.shape)}, {tuple(cont.shape)}, {tuple(value.shape)}"
        )
    # A float lambda fills a tensor on the device (no host-to-device copy).
    lam = lam.to(value.dtype).expand_as(value) if isinstance(lam, Tensor) else torch.full_like(value, lam)
    # Everything that does not depend on the recursion is computed in one go.
    interm = reward[:, 1:] + cont[:, 1:] * (1 - lam[:, 1:]) * value[:, 1:]
    decay = cont[:, 1:] * lam[:, 1:]
    rets = [value[:, -1]]
    for t in reversed(range(interm.shape[1])):
        rets.append(interm[:, t] + decay[:, t] * rets[-1])
    return torch.stack(rets[:0:-1], 1)


class RetStats(NamedTuple):
    """The return normalizer's statistics: EMAs of the low and high percentile of the returns (scalars)."""

    lo: Tensor
    hi: Tensor

    def scale(self, limit: float) -> Tensor:
        """The return scale S = max(limit, hi - lo), a scalar without gradient."""
        return torch.clamp(self.hi - self.lo, min=limit).detach()


@torch.no_grad()
def percentile_ema(stats: RetStats, ret: Tensor, decay: float, quantiles: Tensor) -> RetStats:
    """The statistics moved by (1 - decay) towards the low and high `quantiles` [2] (in [0, 1], on the
    device of `ret`) of `ret` (any shape): the reference's `Normalize(impl="perc", debias=False)` (v2)."""
    ret = ret.detach().float().flatten()
    lo, hi = torch.quantile(ret, quantiles)
    return RetStats(torch.lerp(stats.lo, lo, 1 - decay), torch.lerp(stats.hi, hi, 1 - decay))


class RetNorm(nn.Module):
    """Holds the return normalizer's statistics (buffers, so they are in the state dict; both start at 0)
    and its settings. `update` returns new statistics without keeping them; `commit` keeps them."""

    lo: Tensor
    hi: Tensor
    quantiles: Tensor

    def __init__(self, decay: float = 0.99, low: float = 5.0, high: float = 95.0, limit: float = 1.0):
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"actor_critic.retnorm_decay must be in [0, 1), got {decay}")
        if not 0.0 <= low < high <= 100.0:
            raise ValueError(
                f"actor_critic.retnorm_low/high must satisfy 0 <= low < high <= 100, got {low}, {high}"
            )
        self.decay, self.limit = decay, limit
        self.register_buffer("lo", torch.zeros((), dtype=torch.float32))
        self.register_buffer("hi", torch.zeros((), dtype=torch.float32))
        # A buffer, so it moves with the module and an update puts nothing on the device.
        self.register_buffer("quantiles", torch.tensor([low / 100, high / 100]), persistent=False)

    @property
    def stats(self) -> RetStats:
        return RetStats(self.lo, self.hi)

    def update(self, ret: Tensor) -> RetStats:
        """The statistics after seeing the returns `ret` (the held ones stay as they are)."""
        return percentile_ema(self.stats, ret, self.decay, self.quantiles)

    @torch.no_grad()
    def commit(self, stats: RetStats, applied: Tensor | bool = True) -> None:
        """Keep `stats` where `applied` (a bool, or a 0-d bool tensor on the device: no host read)."""
        where_(applied, self.lo, stats.lo)
        where_(applied, self.hi, stats.hi)
