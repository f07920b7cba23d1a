"""Sequence replay: FIFO per-stream ring buffers, contiguous B x T samples, chunked to disk for resume."""

from replay.dataset import load_dataset
from replay.replay import NonFiniteStepError, Replay, check_config
from replay.spec import step_spec

__all__ = ["NonFiniteStepError", "Replay", "check_config", "load_dataset", "step_spec"]
