"""Observation encoder: symlog MLP for vector keys, conv stages for image keys, outputs concatenated.

v2 (danijar/dreamerv3 `dreamerv3/rssm.py` Encoder): vectors are symlogged and concatenated, then
`layers` x (Linear -> norm -> SiLU); images (concatenated on channels) become x/255 - 0.5, then stages of
conv (kernel k, stride 1) -> 2x2 max-pool -> norm -> SiLU with depth x mults channels, down to `minres`.
`strided` (the 2023 code, v1) halves with the conv itself instead: conv (kernel k, stride 2) -> norm -> SiLU,
which computes a quarter of the output positions of a stride-1 conv.
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from envs.spaces import ArraySpec
from nets.functional import symlog
from nets.layers import MLP, Conv2d, Norm


def select_keys(obs_space: dict[str, ArraySpec], vector_pattern: str, image_pattern: str):
    """(vector keys, image keys), sorted, matched by full-match regexes ("" matches none)."""

    def match(pattern: str, key: str) -> bool:
        return bool(pattern) and re.fullmatch(pattern, key) is not None

    vec = sorted(k for k, s in obs_space.items() if len(s.shape) == 1 and match(vector_pattern, k))
    img = sorted(k for k, s in obs_space.items() if s.is_image and match(image_pattern, k))
    return vec, img


def conv_stages(height: int, width: int, minres: int, keys: list[str]) -> int:
    """Number of halvings from the image size to `minres`; errors name the keys and sizes."""
    stages = int(round(math.log2(max(height // minres, 1))))
    if height != minres * 2**stages or width % 2**stages or width // 2**stages < minres:
        raise ValueError(
            f"images {keys} of size {height}x{width} cannot be halved down to minres {minres}: the height "
            f"must be minres x 2^k and the width a multiple of 2^k (env.size / world_model.encoder.minres)"
        )
    return stages


def stage_channels(depth: int, mults: list[int], stages: int) -> list[int]:
    """Channels per stage: depth x mults[i] (the last multiplier repeats if there are more stages)."""
    return [depth * mults[min(i, len(mults) - 1)] for i in range(stages)]


class Encoder(nn.Module):
    """obs dict of [*lead, ...] (images uint8 [H, W, C], vectors float [D]) -> embed [*lead, E].

    config: the `world_model.encoder` subtree; norm: "rms" or "layer" (`world_model.norm`).
    """

    def __init__(self, config, obs_space: dict[str, ArraySpec], norm: str = "rms"):
        super().__init__()
        self.norm = norm
        self.vector_keys, self.image_keys = select_keys(obs_space, config.vector_keys, config.image_keys)
        if not self.vector_keys and not self.image_keys:
            raise ValueError(
                f"the encoder matches no observation key: keys {sorted(obs_space)}, vector_keys "
                f"{config.vector_keys!r}, image_keys {config.image_keys!r}"
            )
        self.strided = config.strided
        self.out_features = 0
        if self.vector_keys:
            dim = sum(obs_space[k].shape[0] for k in self.vector_keys)
            self.mlp = MLP(dim, config.units, config.layers, norm)
            self.out_features += self.mlp.out_features
        if self.image_keys:
            self.convs = self._build_convs(config, obs_space)

    def _build_convs(self, config, obs_space) -> nn.ModuleList:
        h, w, _ = obs_space[self.image_keys[0]].shape
        if any(obs_space[k].shape[:2] != (h, w) for k in self.image_keys):
            raise ValueError(f"image keys {self.image_keys} must share one height and width")
        channels = sum(obs_space[k].shape[2] for k in self.image_keys)
        stages = conv_stages(h, w, config.minres, self.image_keys)
        layers = nn.ModuleList()
        stride = 2 if config.strided else 1
        for out in stage_channels(config.depth, config.mults, stages):
            conv = Conv2d(channels, out, config.kernel, stride=stride)
            layers.append(nn.ModuleList([conv, Norm(out, self.norm, axis=1)]))
            channels = out
        self.out_features += channels * (h // 2**stages) * (w // 2**stages)
        # Channels-last weights and maps: the faster conv kernels on CPU (and tensor cores on GPU).
        return layers.to(memory_format=torch.channels_last)

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        outs = []
        key = (self.vector_keys or self.image_keys)[0]
        lead = obs[key].shape[: obs[key].dim() - (1 if self.vector_keys else 3)]
        if self.vector_keys:
            x = torch.cat([symlog(obs[k].float()) for k in self.vector_keys], -1)
            outs.append(self.mlp(x.reshape(-1, x.shape[-1])))
        if self.image_keys:
            x = torch.cat([obs[k] for k in self.image_keys], -1)
            x = rearrange(x.reshape(-1, *x.shape[-3:]), "n h w c -> n c h w").float() / 255.0 - 0.5
            for conv, norm in self.convs:
                x = conv(x) if self.strided else F.max_pool2d(conv(x), 2)
                x = F.silu(norm(x))
            outs.append(x.flatten(1))
        return torch.cat(outs, -1).reshape(*lead, self.out_features)
