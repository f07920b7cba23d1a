"""What the agent knows of an environment: array specs of observations and the action space.

The world model and the agent see only these (never Gymnasium spaces).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Keys every step dict carries besides the observations (and `action`, the action taken at that step).
STEP_KEYS = ("reward", "is_first", "is_last", "is_terminal")


@dataclass(frozen=True)
class ArraySpec:
    """Shape (without batch dims) and dtype of one observation key.

    Images are uint8 [H, W, C], vectors float32 [D].
    """

    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def is_image(self) -> bool:
        return len(self.shape) == 3 and np.dtype(self.dtype) == np.uint8


@dataclass(frozen=True)
class ActionSpace:
    """The agent-side action: a float vector of length `dim`.

    - "discrete": one-hot over `nvec[0]` classes (dim = nvec[0]).
    - "multidiscrete": concatenated one-hots, one per sub-action (dim = sum(nvec)).
    - "continuous": values in [-1, 1] (dim = number of action dimensions); a wrapper maps them to the
      env's bounds.
    """

    kind: str
    dim: int
    nvec: tuple[int, ...] = ()

    @property
    def discrete(self) -> bool:
        return self.kind in ("discrete", "multidiscrete")
