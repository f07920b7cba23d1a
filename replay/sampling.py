"""Choosing which windows of the stored streams form a batch: uniform, with an optional recency mix,
after the queued windows of newly collected steps (online).

A window is `length` contiguous steps of one stream. Windows are addressed by their offset from the
oldest step a stream holds, so a choice depends only on how many steps each stream holds (and the
random generator), never on where the ring buffer happens to write: a replay reloaded from disk with
the same data draws the same windows.

The online queue (the reference's `replay.online`, embodied/core/replay.py) holds each stream's
consecutive windows of newly collected steps, oldest first, named by stream and the index in memory of
their first step; training batches take them before any uniform draw, so every collected step is
trained on at least once.
"""

from __future__ import annotations

from collections import deque
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


def take_online(queue: deque[tuple[int, int]], n: int, oldest: np.ndarray) -> Windows:
    """Up to `n` windows from the front of the online queue, oldest first, skipping those whose first
    step the FIFO has evicted since they were queued.

    Args:
        queue: (stream, index in memory of the window's first step) pairs, in order of arrival.
        oldest: [S] the index in memory of each stream's oldest held step.
    Returns:
        Windows with `stream` [<= n] and `offset` [<= n] from each stream's oldest held step.
    """
    stream, offset = [], []
    while queue and len(stream) < n:
        s, first = queue.popleft()
        if first >= oldest[s]:
            stream.append(s)
            offset.append(first - oldest[s])
    return Windows(np.array(stream, np.int64), np.array(offset, np.int64))


def drop_evicted(queue: deque[tuple[int, int]], oldest: np.ndarray) -> None:
    """Drop windows from the front of the queue while their first step is evicted (`oldest` [S]): the
    queue stays bounded by the steps held when training takes less than is collected."""
    while queue and queue[0][1] < oldest[queue[0][0]]:
        queue.popleft()
