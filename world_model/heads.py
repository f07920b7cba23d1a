"""Heads on the model features: reward (two-hot) and continuation (Bernoulli)."""

from __future__ import annotations

import torch
from torch import nn

from configs.schema import REWARD_BINS
from nets.distributions import Bernoulli, TwoHot, symexp_bins, symlog_bins
from nets.layers import MLP


def make_bins(kind: str, n: int) -> tuple[torch.Tensor, str]:
    """(bins [n], TwoHot space) for "symexp" (v2: raw-space two-hot) or "symlog" (v1: symlog space)."""
    if kind not in REWARD_BINS:
        raise ValueError(f"world_model.reward_bins must be one of {REWARD_BINS}; got {kind!r}")
    return (symexp_bins(n), "raw") if kind == "symexp" else (symlog_bins(n), "symlog")


class TwoHotHead(nn.Module):
    """feat [..., F] -> TwoHot over `bins` (mean is the predicted scalar). Output init scaled by outscale
    (0 in v2, so the prediction starts at exactly 0)."""

    def __init__(self, feat_size: int, config, bins: int, kind: str = "symexp", norm: str = "rms"):
        super().__init__()
        bin_values, self.space = make_bins(kind, bins)
        self.register_buffer("bins", bin_values, persistent=False)
        self.mlp = MLP(
            feat_size, config.units, config.layers, norm, out_features=bins, outscale=config.outscale
        )

    def forward(self, feat: torch.Tensor) -> TwoHot:
        # float32 logits: under bf16 autocast TwoHot would cast the bins and targets to the logits' dtype
        # (1000.5 -> 999.8).
        return TwoHot(self.mlp(feat).float(), self.bins, self.space)


class BernoulliHead(nn.Module):
    """feat [..., F] -> Bernoulli [...] (the continuation probability)."""

    def __init__(self, feat_size: int, config, norm: str = "rms"):
        super().__init__()
        self.mlp = MLP(feat_size, config.units, config.layers, norm, out_features=1, outscale=config.outscale)

    def forward(self, feat: torch.Tensor) -> Bernoulli:
        # float32 logits: in bf16 the soft target 1 - 1/333 would round to 0.99609.
        return Bernoulli(self.mlp(feat).squeeze(-1).float())
