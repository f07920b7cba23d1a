"""Observation decoder: mirrors the encoder, returns one distribution per decoded key.

Vectors: MLP on the features, then one linear output per key in symlog space (`SymlogMSE`, v2).
Images: an input layer to a minres x minres map (`BlockSpace`, v2: a block layer on h plus a two-layer
path on z; `DenseSpace`: one dense layer on [h, z], v1), then stages of nearest 2x upsample -> conv ->
norm -> SiLU, and a last upsample + conv to the image channels with a sigmoid mean in [0, 1] (`MSE` over
H, W, C against x / 255, as the reference; v1: x + 0.5). `strided` (v1) uses stride-2 transposed convs
(kernel k) instead of upsample + conv.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from envs.spaces import ArraySpec
from nets.distributions import MSE, SymlogMSE
from nets.layers import MLP, BlockLinear, Conv2d, ConvTranspose2d, Linear, Norm
from world_model.encoder import conv_stages, select_keys, stage_channels


class BlockSpace(nn.Module):
    """v2 image input layer (reference `Decoder` with `bspace`): feat [N, D + Z] -> map [N, C, h, w].

    A block-diagonal layer on the deterministic state h [N, D], whose block g gives channels group g
    at every position, plus Linear -> norm -> SiLU -> Linear (2 x units wide) on the stochastic state
    z [N, Z]; the sum goes through norm -> SiLU. Far fewer weights than a dense layer on [h, z].
    """

    def __init__(self, deter: int, stoch: int, shape: tuple[int, int, int], blocks: int, units: int, norm):
        super().__init__()
        channels, self.height, self.width = shape
        if deter % blocks or channels % blocks:
            raise ValueError(
                f"world_model.decoder.bspace ({blocks}) must divide world_model.deter ({deter}) and the "
                f"decoder's last conv channels ({channels})"
            )
        self.deter, self.blocks = deter, blocks
        size = channels * self.height * self.width
        self.from_deter = BlockLinear(deter, size, blocks)
        self.from_stoch = MLP(stoch, 2 * units, 1, norm, out_features=size)
        self.norm = Norm(channels, norm, axis=1)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        deter, stoch = feat[:, : self.deter], feat[:, self.deter :]
        hw = dict(h=self.height, w=self.width)
        x0 = rearrange(self.from_deter(deter), "n (g h w c) -> n (g c) h w", g=self.blocks, **hw)
        x1 = rearrange(self.from_stoch(stoch), "n (h w c) -> n c h w", **hw)
        return F.silu(self.norm(x0 + x1))


class DenseSpace(nn.Module):
    """Image input layer as one dense layer: feat [N, F] -> map [N, C, h, w], then norm -> SiLU (the
    reference's `bspace: 0` branch) or nothing (`norm` None: the 2023 code's linear `in` layer, v1)."""

    def __init__(self, feat_size: int, shape: tuple[int, int, int], norm: str | None):
        super().__init__()
        channels, self.height, self.width = shape
        self.linear = Linear(feat_size, channels * self.height * self.width)
        self.norm = Norm(channels, norm, axis=1) if norm else None

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        x = rearrange(self.linear(feat), "n (c h w) -> n c h w", h=self.height, w=self.width)
        return x if self.norm is None else F.silu(self.norm(x))


class Decoder(nn.Module):
    """feat [*lead, F] -> {key: SymlogMSE over [*lead, D] | MSE over [*lead, H, W, C]}.

    config: the `world_model.decoder` subtree; deter: size D of h, the first D features (the rest are z);
    norm: "rms" or "layer".
    """

    def __init__(
        self, config, obs_space: dict[str, ArraySpec], feat_size: int, deter: int, norm: str = "rms"
    ):
        super().__init__()
        self.vector_keys, self.image_keys = select_keys(obs_space, config.vector_keys, config.image_keys)
        if not self.vector_keys and not self.image_keys:
            raise ValueError(
                f"the decoder matches no observation key: keys {sorted(obs_space)}, vector_keys "
                f"{config.vector_keys!r}, image_keys {config.image_keys!r}"
            )
        self.vector_sizes = [obs_space[k].shape[0] for k in self.vector_keys]
        if self.vector_keys:
            self.mlp = MLP(feat_size, config.units, config.layers, norm, out_features=sum(self.vector_sizes))
        if self.image_keys:
            self._build_image(config, obs_space, feat_size, deter, norm)

    def _build_image(self, config, obs_space, feat_size: int, deter: int, norm: str) -> None:
        h, w, _ = obs_space[self.image_keys[0]].shape
        self.image_channels = [obs_space[k].shape[2] for k in self.image_keys]
        stages = conv_stages(h, w, config.minres, self.image_keys)
        channels = stage_channels(config.depth, config.mults, stages)
        shape = (channels[-1], h // 2**stages, w // 2**stages)
        if config.bspace:
            self.space = BlockSpace(deter, feat_size - deter, shape, config.bspace, config.units, norm)
        else:
            self.space = DenseSpace(feat_size, shape, norm if config.space_norm else None)
        self.strided, self.sigmoid = config.strided, config.sigmoid
        conv = ConvTranspose2d if self.strided else Conv2d
        self.convs = nn.ModuleList()
        for cin, cout in zip(channels[::-1][:-1], channels[::-1][1:], strict=True):
            self.convs.append(nn.ModuleList([conv(cin, cout, config.kernel), Norm(cout, norm, axis=1)]))
        self.out = conv(channels[0], sum(self.image_channels), config.kernel)
        # Channels-last weights and maps: the faster conv kernels on CPU (and tensor cores on GPU).
        self.convs.to(memory_format=torch.channels_last)
        self.out.to(memory_format=torch.channels_last)

    def _upsample(self, x: torch.Tensor) -> torch.Tensor:
        """Nearest 2x upsampling before a stride-1 conv; strided (transposed) convs double by themselves."""
        return x if self.strided else F.interpolate(x, scale_factor=2, mode="nearest")

    def forward(self, feat: torch.Tensor) -> dict[str, MSE]:
        lead = feat.shape[:-1]
        feat = feat.reshape(-1, feat.shape[-1])
        # Every output is upcast to float32 before its distribution: under bf16 autocast the squared
        # errors would otherwise be taken against targets rounded to bf16.
        dists = {}
        if self.vector_keys:
            outs = self.mlp(feat).split(self.vector_sizes, -1)
            for key, out in zip(self.vector_keys, outs, strict=True):
                dists[key] = SymlogMSE(out.reshape(*lead, out.shape[-1]).float(), event_dims=1)
        if self.image_keys:
            x = self.space(feat)
            for conv, norm in self.convs:
                x = F.silu(norm(conv(self._upsample(x))))
            x = self.out(self._upsample(x))
            # The 2023 code (v1) shifts instead of squashing: its mean is unbounded.
            x = torch.sigmoid(x) if self.sigmoid else x + 0.5
            x = rearrange(x, "n c h w -> n h w c")
            for key, img in zip(self.image_keys, x.split(self.image_channels, -1), strict=True):
                dists[key] = MSE(img.reshape(*lead, *img.shape[1:]).float(), event_dims=3)
        return dists
