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


@torch.no_grad()
def where_(cond: torch.Tensor | bool, dst: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """dst <- src where `cond`, else dst unchanged, in place. `cond` is a bool or a 0-d bool tensor on
    dst's device, which the device reads: choosing costs no host-device synchronization."""
    if isinstance(cond, bool):
        return dst.copy_(src) if cond else dst
    return dst.copy_(torch.where(cond, src, dst))
