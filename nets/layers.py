"""Building blocks: linear and conv layers with truncated-normal fan-in init, norms, MLPs, block-linear.

Init follows the reference (danijar/dreamerv3 `embodied/jax/nets.py`, "trunc_normal_in"): weights from a
normal truncated at two standard deviations, scaled so their std is `outscale / sqrt(fan_in)`; biases 0.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from configs.schema import NORM_KINDS
from nets import onehot
from nets.onehot import Features

# Std of a standard normal truncated to [-2, 2]; dividing by it restores unit variance.
TRUNC_STD = 0.87962566103423978
# Epsilons of the reference's norms (RMSNorm 1e-4, LayerNorm 1e-3 in embodied/jax/nets.py).
RMS_EPS = 1e-4
LAYER_EPS = 1e-3


def trunc_normal_fan_in_(weight: torch.Tensor, fan_in: int, outscale: float = 1.0) -> None:
    """Fill `weight` in place with std outscale / sqrt(fan_in), truncated at 2 std; zeros if outscale is 0."""
    with torch.no_grad():
        if outscale == 0.0:
            weight.zero_()
            return
        std = outscale * math.sqrt(1.0 / fan_in) / TRUNC_STD
        nn.init.trunc_normal_(weight, 0.0, std, -2.0 * std, 2.0 * std)


class Linear(nn.Linear):
    """nn.Linear with truncated-normal fan-in init scaled by `outscale` (0: zero weights and bias).

    Also takes `nets.onehot.Features`, with the same result as their dense form up to float rounding.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, outscale: float = 1.0):
        self.outscale = outscale
        super().__init__(in_features, out_features, bias)

    def reset_parameters(self) -> None:
        trunc_normal_fan_in_(self.weight, self.in_features, self.outscale)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor | Features) -> torch.Tensor:
        if isinstance(x, Features):
            return onehot.linear(x, self.weight, self.bias)
        return super().forward(x)


class Conv2d(nn.Conv2d):
    """nn.Conv2d with truncated-normal fan-in init scaled by `outscale`, same-padded: stride 1 keeps the
    size, stride 2 halves an even size (the v1 strided stages, kernel 4)."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel: int, outscale: float = 1.0, stride: int = 1
    ):
        self.outscale = outscale
        padding = kernel // 2 if stride == 1 else (kernel - 1) // 2
        super().__init__(in_channels, out_channels, kernel, stride=stride, padding=padding)

    def reset_parameters(self) -> None:
        fan_in = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
        trunc_normal_fan_in_(self.weight, fan_in, self.outscale)
        nn.init.zeros_(self.bias)


class ConvTranspose2d(nn.ConvTranspose2d):
    """Stride-2 transposed conv that exactly doubles the size (v1 decoder stages), fan-in init."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, outscale: float = 1.0):
        self.outscale = outscale
        padding = (kernel - 1) // 2
        # (H - 1) * 2 - 2 * padding + kernel + output_padding = 2H
        super().__init__(
            in_channels,
            out_channels,
            kernel,
            stride=2,
            padding=padding,
            output_padding=2 - kernel + 2 * padding,
        )

    def reset_parameters(self) -> None:
        fan_in = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
        trunc_normal_fan_in_(self.weight, fan_in, self.outscale)
        nn.init.zeros_(self.bias)


class Norm(nn.Module):
    """RMSNorm (v2) or LayerNorm (v1) with a learned scale (and offset for LayerNorm).

    Normalizes over `axis`: -1 for features [..., D], 1 for conv maps [N, C, H, W].
    """

    def __init__(self, dim: int, kind: str = "rms", axis: int = -1):
        super().__init__()
        if kind not in NORM_KINDS:
            raise ValueError(f"norm kind must be one of {NORM_KINDS}; got {kind!r}")
        if axis not in (-1, 1):
            raise ValueError(f"norm axis must be -1 (features) or 1 (channels); got {axis}")
        self.kind, self.axis, self.dim = kind, axis, dim
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if kind == "layer" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.axis == 1:
            # [N, C, H, W] -> [N, H, W, C] is a free view of a channels-last map, so the fused kernels of
            # the feature case apply; the result is a channels-last map again, as the next conv wants it.
            return self._norm_last(x.movedim(1, -1)).movedim(-1, 1)
        return self._norm_last(x)

    def _norm_last(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "rms":
            return F.rms_norm(x, (self.dim,), self.weight.to(x.dtype), RMS_EPS)
        return F.layer_norm(x, (self.dim,), self.weight, self.bias, LAYER_EPS)


class BlockLinear(nn.Module):
    """Block-diagonal linear map: `blocks` independent Linear(in/blocks -> out/blocks) on feature groups.

    x: [..., in_features] -> [..., out_features]; group g of the output sees only group g of the input.
    The init's fan-in is the whole `in_features`, not a block's share: the reference's `compute_fans`
    multiplies the kernel [blocks, in/blocks, out/blocks] out to blocks x in/blocks.
    """

    def __init__(self, in_features: int, out_features: int, blocks: int, outscale: float = 1.0):
        super().__init__()
        if in_features % blocks or out_features % blocks:
            raise ValueError(
                f"BlockLinear: in_features {in_features} and out_features {out_features} must be "
                f"divisible by blocks {blocks}"
            )
        self.in_features, self.out_features, self.blocks = in_features, out_features, blocks
        self.weight = nn.Parameter(torch.empty(blocks, in_features // blocks, out_features // blocks))
        self.bias = nn.Parameter(torch.zeros(out_features))
        trunc_normal_fan_in_(self.weight, in_features, outscale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x = rearrange(x.reshape(-1, self.in_features), "n (g i) -> g n i", g=self.blocks)
        y = torch.bmm(x, self.weight)  # [G, N, out/G]
        y = rearrange(y, "g n o -> n (g o)")
        return (y + self.bias).reshape(*lead, self.out_features)


class MLP(nn.Module):
    """`layers` x [Linear -> Norm -> SiLU], then an optional output Linear with `outscale`.

    x: [..., in_features] -> [..., out_features] (or [..., units] without an output layer).
    """

    def __init__(
        self,
        in_features: int,
        units: int,
        layers: int,
        norm: str = "rms",
        out_features: int | None = None,
        outscale: float = 1.0,
    ):
        super().__init__()
        mods: list[nn.Module] = []
        dim = in_features
        for _ in range(layers):
            mods += [Linear(dim, units), Norm(units, norm), nn.SiLU()]
            dim = units
        if out_features is not None:
            mods.append(Linear(dim, out_features, outscale=outscale))
            dim = out_features
        self.net = nn.Sequential(*mods)
        self.out_features = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
