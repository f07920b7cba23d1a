"""Pure tensor functions shared by the networks and the losses."""

from __future__ import annotations

import torch


def symlog(x: torch.Tensor) -> torch.Tensor:
    """sign(x) * log(1 + |x|): compresses large magnitudes, identity-like near 0 (DreamerV3 eq. 1).

    Written per branch so the gradient at exactly 0 is 1 (sign(x) * ... would give 0 there).
    """
    return torch.where(x >= 0, torch.log1p(x.clamp(min=0)), -torch.log1p((-x).clamp(min=0)))


def symexp(x: torch.Tensor) -> torch.Tensor:
    """sign(x) * (exp(|x|) - 1), the inverse of `symlog`; gradient 1 at 0."""
    return torch.where(x >= 0, torch.expm1(x.clamp(min=0)), -torch.expm1((-x).clamp(min=0)))
