"""Sequence replay: FIFO per-stream ring buffers, contiguous B x T samples, chunked to disk for resume."""

from replay.dataset import load_dataset
from replay.replay import Replay, make_replay
from replay.spec import step_spec

__all__ = ["Replay", "load_dataset", "make_replay", "step_spec"]
