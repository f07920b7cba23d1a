"""Lambda-returns and the percentile return scaler (DreamerV3, "Critic learning", "Actor learning").

The lambda-return is written once, in the general form of the reference's `lambda_return`
(dreamerv3/agent.py, v2), and serves both the imagined rollouts and the replayed sequences:

    R_{T-1} = b_{T-1}     (the last step bootstraps from its value)
    R_t = r_{t+1} + c_{t+1} * ((1 - l_{t+1}) * b_{t+1} + l_{t+1} * R_{t+1})

with rewards `r`, continuation weights `c` (discount and termination folded in), bootstrap values `b`
and per-step lambdas `l` (the constant lambda, or 0 where a replayed episode ended so the return does
not cross into the next episode).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn


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
    lam = torch.as_tensor(lam, dtype=value.dtype, device=value.device).expand_as(value)
    # Everything that does not depend on the recursion is computed in one go.
    interm = reward[:, 1:] + cont[:, 1:] * (1 - lam[:, 1:]) * value[:, 1:]
    decay = cont[:, 1:] * lam[:, 1:]
    rets = [value[:, -1]]
    for t in reversed(range(interm.shape[1])):
        rets.append(interm[:, t] + decay[:, t] * rets[-1])
    return torch.stack(rets[:0:-1], 1)


class ReturnScaler(nn.Module):
    """EMA of the low and high percentiles of the returns; the scale is `max(limit, hi - lo)`.

    As in the reference's `Normalize(impl="perc", debias=False)` (v2): both statistics start at zero and
    move by `(1 - decay)` towards the batch percentiles at each update. The statistics are buffers, so
    they are part of the module's state dict.
    """

    lo: Tensor
    hi: Tensor

    def __init__(self, decay: float = 0.99, low: float = 5.0, high: float = 95.0, limit: float = 1.0):
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"actor_critic.retnorm_decay must be in [0, 1), got {decay}")
        if not 0.0 <= low < high <= 100.0:
            raise ValueError(
                f"actor_critic.retnorm_low/high must satisfy 0 <= low < high <= 100, got {low}, {high}"
            )
        self.decay, self.low, self.high, self.limit = decay, low, high, limit
        self.register_buffer("lo", torch.zeros((), dtype=torch.float32))
        self.register_buffer("hi", torch.zeros((), dtype=torch.float32))
        # Pools the returns of all data-parallel replicas before the percentiles (None: this batch only).
        self.gather: Callable[[Tensor], Tensor] | None = None

    @torch.no_grad()
    def update(self, ret: Tensor) -> None:
        """Move the percentile EMAs towards the percentiles of `ret` (any shape, no gradient).

        A batch with a non-finite return leaves the statistics unchanged (checked on the device, without
        a synchronization), so one bad update cannot poison the scale for good.
        """
        q = torch.tensor([self.low / 100, self.high / 100], dtype=torch.float32, device=ret.device)
        ret = ret.detach().float().flatten()
        if self.gather is not None:
            ret = self.gather(ret)
        lo, hi = torch.quantile(ret, q)
        finite = torch.isfinite(ret).all()
        self.lo.copy_(torch.where(finite, torch.lerp(self.lo, lo, 1 - self.decay), self.lo))
        self.hi.copy_(torch.where(finite, torch.lerp(self.hi, hi, 1 - self.decay), self.hi))

    def scale(self) -> Tensor:
        """The return scale S = max(limit, hi - lo), a scalar without gradient."""
        return torch.clamp(self.hi - self.lo, min=self.limit).detach()
