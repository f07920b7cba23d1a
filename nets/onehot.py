"""One-hot latents held as their hot classes: what imagination without gradient feeds its layers.

A categorical latent sample is S exact one-hots of K classes, [..., S, K]. Where no gradient needs to
reach it (the imagined states of REINFORCE), it can be held as the hot class of each group, `OneHot`
([..., S] int64), and a layer's product with it is the sum of S weight columns (a gather) instead of a
matmul with S*K mostly zero inputs. The dense form is the plain version; everything here equals it:

- `concat(*parts)`: a layer input from dense parts [..., d] and `OneHot` parts (S*K entries each): the
  dense concatenation when every part is dense, else `Features`, which `linear` and `stack` accept.
- `linear(x, weight, bias)`: `F.linear` of `x.to_dense()`, up to float rounding.
- `sample_like(dist, like)`: a sample of a latent distribution in the representation of `like`.
"""

from __future__ import annotations

import functools
import operator
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

GATHER_CHUNK = 2048  # rows of the output gradient added into the table at a time (stay in cache)


class OneHot(NamedTuple):
    """S exact one-hots [..., S, K] of K = `classes`, held as the hot class of each group, index [..., S].

    Inputs only: no gradient reaches them. `flatten(-2)` reads them as S*K features (they stay as they
    are), like a dense latent's `flatten(-2)`.
    """

    index: Tensor
    classes: int

    @classmethod
    def of(cls, onehot: Tensor) -> OneHot:
        """From exact one-hots [..., S, K]."""
        return cls(onehot.argmax(-1), onehot.shape[-1])

    @property
    def width(self) -> int:
        return self.index.shape[-1] * self.classes

    def flatten(self, start_dim: int) -> OneHot:
        if start_dim != -2:
            raise ValueError(f"OneHot flattens its last two dims only (start_dim -2); got {start_dim}")
        return self

    def detach(self) -> OneHot:
        return self

    def to_dense(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """[..., S*K]."""
        return F.one_hot(self.index, self.classes).to(dtype).flatten(-2)


class Features(NamedTuple):
    """A layer input [..., sum of widths], the concatenation of `parts`: dense [..., d] and OneHot."""

    parts: tuple[Tensor | OneHot, ...]

    def detach(self) -> Features:
        return Features(tuple(p.detach() for p in self.parts))

    def to_dense(self, dtype: torch.dtype = torch.float32) -> Tensor:
        return torch.cat([p.to_dense(dtype) if isinstance(p, OneHot) else p for p in self.parts], -1)


def concat(*parts: Tensor | OneHot) -> Tensor | Features:
    """parts [..., d_i] (OneHot: S*K entries) -> [..., sum d_i]: a tensor, or Features with a OneHot."""
    if any(isinstance(p, OneHot) for p in parts):
        return Features(parts)
    return torch.cat(parts, -1) if len(parts) > 1 else parts[0]


def stack(xs: list[Tensor | Features], dim: int) -> Tensor | Features:
    """torch.stack of tensors, or of Features part by part (all with the same layout)."""
    if not isinstance(xs[0], Features):
        return torch.stack(xs, dim)
    stacked = []
    for parts in zip(*(x.parts for x in xs), strict=True):
        if isinstance(parts[0], OneHot):
            stacked.append(OneHot(torch.stack([p.index for p in parts], dim), parts[0].classes))
        else:
            stacked.append(torch.stack(parts, dim))
    return Features(tuple(stacked))


def sample_like(dist, like: Tensor | OneHot) -> Tensor | OneHot:
    """A sample of the latent distribution `dist` held like `like`: its hot classes if `like` is OneHot
    (drawn directly, `sample_index`), else the dense straight-through sample."""
    if isinstance(like, OneHot):
        return OneHot(dist.sample_index(), like.classes)
    return dist.sample()


def linear(x: Features, weight: Tensor, bias: Tensor | None) -> Tensor:
    """F.linear(x.to_dense(), weight, bias): the dense parts by matmuls (the first one adds the bias),
    then each OneHot by gathering and summing the weight columns of its hot classes.
    weight [O, I], x [..., I] -> [..., O]."""
    widths = [p.width if isinstance(p, OneHot) else p.shape[-1] for p in x.parts]
    if sum(widths) != weight.shape[1]:
        raise ValueError(f"a layer of {weight.shape[1]} inputs got features of widths {widths}")
    pairs = list(zip(x.parts, torch.split(weight, widths, 1), strict=True))
    dense = [(p, w) for p, w in pairs if not isinstance(p, OneHot)]
    outs = [F.linear(p, w, bias if i == 0 else None) for i, (p, w) in enumerate(dense)]
    if not dense and bias is not None:
        outs.append(bias)
    dtype = outs[0].dtype if outs else weight.dtype  # a matmul under autocast sets the dtype
    outs += [_gather_columns(p, w).to(dtype) for p, w in pairs if isinstance(p, OneHot)]
    return functools.reduce(operator.add, outs)


def _gather_columns(x: OneHot, weight: Tensor) -> Tensor:
    """sum over groups g of weight[:, g * K + index_g]: x [..., S], weight [O, S*K] -> [..., O]."""
    groups = x.index.shape[-1]
    rows = x.index + x.classes * torch.arange(groups, device=x.index.device)
    picked = gather_sum(weight.t().contiguous(), rows.reshape(-1, groups))
    return picked.view(*x.index.shape[:-1], weight.shape[0])


def gather_sum(table: Tensor, rows: Tensor) -> Tensor:
    """out[n] = sum over g of table[rows[n, g]]: table [R, D], rows [N, G] (int64) -> [N, D].

    `F.embedding_bag(rows, table, mode="sum")`; on the CPU its backward is replaced by `_GatherSum`'s.
    """
    if table.device.type == "cpu":
        return _GatherSum.apply(table, rows)
    return F.embedding_bag(rows, table, mode="sum")


class _GatherSum(torch.autograd.Function):
    """embedding_bag's sum, with a backward that adds each group's gradient rows into the table by
    `index_add_`, over chunks of rows that stay in cache (embedding_bag's CPU backward sorts the
    indices first, which is slower). Each table row receives its additions in the same order, so the
    result is deterministic."""

    @staticmethod
    def forward(ctx, table: Tensor, rows: Tensor) -> Tensor:
        ctx.save_for_backward(rows)
        ctx.table_rows = table.shape[0]
        return F.embedding_bag(rows, table, mode="sum")

    @staticmethod
    def backward(ctx, grad: Tensor):
        (rows,) = ctx.saved_tensors
        grad = grad.contiguous()
        grad_table = grad.new_zeros(ctx.table_rows, grad.shape[-1])
        for start in range(0, rows.shape[0], GATHER_CHUNK):
            chunk = grad[start : start + GATHER_CHUNK]
            for group in rows[start : start + GATHER_CHUNK].unbind(-1):
                grad_table.index_add_(0, group, chunk)
        return grad_table, None
