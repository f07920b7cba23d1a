"""Choosing which windows of the stored streams form a batch: uniform, with an optional recency mix.

A window is `length` contiguous steps of one stream. Windows are addressed by their offset from the
oldest step a stream holds, so a choice depends only on how many steps each stream holds (and the
random generator), never on where the ring buffer happens to write: a replay reloaded from disk with
the same data draws the same windows.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Windows(NamedTuple):
    """Sampled windows: `stream` [B] and `offset` [B] of the first step from the stream's oldest step."""

    stream: np.ndarray
    offset: np.ndarray


def window_counts(stored: np.ndarray, length: int) -> np.ndarray:
    """Windows of `length` steps in each stream holding `stored` [S] steps: [S], zero where too short."""
    return np.maximum(np.asarray(stored, np.int64) - length + 1, 0)


def recent_counts(stored: np.ndarray, length: int, window: int) -> np.ndarray:
    """Windows [S] lying entirely within each stream's newest `window` steps (`window >= length`)."""
    return window_counts(np.minimum(np.asarray(stored, np.int64), window), length)


def draw(rng: np.random.Generator, counts: np.ndarray, n: int) -> Windows:
    """Draw `n` windows uniformly among all `counts` [S] windows; offsets count from each stream's first."""
    cum = np.cumsum(counts)
    if n and cum[-1] == 0:
        raise ValueError(f"cannot sample: no stream holds a full window (windows {counts.tolist()})")
    flat = rng.integers(0, cum[-1], size=n) if n else np.zeros(0, np.int64)
    stream = np.searchsorted(cum, flat, side="right")
    offset = flat - (cum[stream] - counts[stream])
    return Windows(stream.astype(np.int64), offset.astype(np.int64))


def sample_windows(
    rng: np.random.Generator, stored: np.ndarray, length: int, batch: int, recency: float, recent: int
) -> Windows:
    """A batch of `batch` windows: `round(batch * recency)` among the newest `recent` steps per stream
    (drawn last), the rest uniform over every window.

    Args:
        stored: [S] steps held by each stream.
        recent: the recent window per stream in steps; raised to `length` if shorter.
    Returns:
        Windows with `stream` [batch] and `offset` [batch] from each stream's oldest held step.
    """
    n_recent = int(round(batch * recency))
    total = window_counts(stored, length)
    uniform = draw(rng, total, batch - n_recent)
    newest = recent_counts(stored, length, max(recent, length))
    near = draw(rng, newest, n_recent)
    # Recent windows are the last ones of their stream: shift them past the older windows.
    near_offset = near.offset + total[near.stream] - newest[near.stream]
    return Windows(
        np.concatenate([uniform.stream, near.stream]), np.concatenate([uniform.offset, near_offset])
    )
