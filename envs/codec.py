"""Codecs between Gymnasium spaces and the agent's arrays, applied to whole batches at once.

The agent sees a dict of named arrays and acts with one float32 vector; Gymnasium envs speak many
space types. These conversions are cheap numpy operations on `[N, ...]` batches, applied once per
vector step rather than once per env, which keeps the stack's overhead small for fast envs.

Observation naming: a top-level Box or Discrete observation is `vector` (or `image` when it is a
uint8 H x W x C array); the keys of a Dict observation keep their names. Any uint8 array with three
dims is an image; every other Box, Discrete, MultiDiscrete or MultiBinary becomes a float32 vector
(Box flattened, Discrete one-hot, MultiDiscrete concatenated one-hots).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from gymnasium import spaces

from envs.errors import EnvError
from envs.spaces import ActionSpace, ArraySpec

SUPPORTED_OBS = "Box, Discrete, MultiDiscrete (1-D), MultiBinary, or a Dict of those"
SUPPORTED_ACT = "Discrete, MultiDiscrete (1-D), MultiBinary (1-D), or Box with finite float bounds"


def is_image_space(space: spaces.Space) -> bool:
    """A uint8 Box with three dims, H x W x C."""
    return isinstance(space, spaces.Box) and space.dtype == np.uint8 and len(space.shape) == 3


def _one_hots(values: np.ndarray, nvec: np.ndarray) -> np.ndarray:
    """values: [N, K] ints in [0, nvec) -> [N, sum(nvec)] float32 concatenated one-hots."""
    offsets = np.concatenate([[0], np.cumsum(nvec)[:-1]])
    out = np.zeros((values.shape[0], int(nvec.sum())), np.float32)
    out[np.arange(len(values))[:, None], values.astype(np.int64) + offsets] = 1.0
    return out


def _obs_converter(space: spaces.Space) -> tuple[ArraySpec, Callable[[np.ndarray], np.ndarray]] | None:
    """The agent-side spec of one observation space and the function converting a batch [N, ...],
    or None when the space is not supported."""
    if is_image_space(space):
        return ArraySpec(tuple(space.shape), np.dtype(np.uint8)), lambda x: np.array(x, np.uint8)
    if isinstance(space, spaces.Box) and len(space.shape) == 1:
        return ArraySpec(tuple(space.shape), np.dtype(np.float32)), lambda x: np.array(x, np.float32)
    if isinstance(space, (spaces.Box, spaces.MultiBinary)):
        size = int(np.prod(space.shape))
        return ArraySpec((size,), np.dtype(np.float32)), lambda x: np.array(x, np.float32).reshape(
            len(x), size
        )
    if isinstance(space, spaces.Discrete):
        eye, start = np.eye(int(space.n), dtype=np.float32), int(space.start)
        return ArraySpec((int(space.n),), np.dtype(np.float32)), lambda x: eye[np.asarray(x) - start]
    if isinstance(space, spaces.MultiDiscrete) and space.nvec.ndim == 1:
        nvec, start = space.nvec, space.start
        return ArraySpec((int(nvec.sum()),), np.dtype(np.float32)), lambda x: _one_hots(x - start, nvec)
    return None


class ObsCodec:
    """Batched env observations -> dict of agent arrays [N, ...] (see the module docstring).

    `env_id` names the env in error messages.
    """

    def __init__(self, space: spaces.Space, env_id: str = "the env"):
        if isinstance(space, spaces.Dict):
            self._dict = True
            items = list(space.spaces.items())
        else:
            self._dict = False
            items = [("image" if is_image_space(space) else "vector", space)]
        self.spec: dict[str, ArraySpec] = {}
        self._convert: list[tuple[str, Callable]] = []
        for name, sub in items:
            converter = _obs_converter(sub)
            if converter is None:
                where = f" under key '{name}'" if self._dict else ""
                raise EnvError(
                    f"{env_id}: unsupported observation space {sub}{where}; supported: {SUPPORTED_OBS}"
                )
            spec, fn = converter
            self.spec[name] = spec
            self._convert.append((name, fn))

    def __call__(self, obs) -> dict[str, np.ndarray]:
        """obs: the vector env's batched observation (an array, or a dict of arrays) -> fresh arrays."""
        if self._dict:
            return {name: fn(obs[name]) for name, fn in self._convert}
        name, fn = self._convert[0]
        return {name: fn(obs)}


class ActCodec:
    """Agent actions [N, A] float32 -> the env's batched native actions, and back (`to_agent`).

    `env_id` names the env in error messages.
    """

    def __init__(self, space: spaces.Space, env_id: str = "the env"):
        self.native = space
        if isinstance(space, spaces.Discrete):
            self.space = ActionSpace("discrete", int(space.n), (int(space.n),))
            self._start = np.array([space.start])
        elif isinstance(space, spaces.MultiDiscrete) and space.nvec.ndim == 1:
            self.space = ActionSpace(
                "multidiscrete", int(space.nvec.sum()), tuple(int(n) for n in space.nvec)
            )
            self._start = space.start
        elif isinstance(space, spaces.MultiBinary) and len(space.shape) == 1:
            self.space = ActionSpace("multidiscrete", 2 * space.n, (2,) * space.n)
            self._start = np.zeros(space.n, np.int64)
        elif isinstance(space, spaces.Box) and np.issubdtype(space.dtype, np.floating):
            if not (np.all(np.isfinite(space.low)) and np.all(np.isfinite(space.high))):
                raise EnvError(
                    f"unsupported action space {space}: continuous actions need finite bounds "
                    "to be mapped from [-1, 1]"
                )
            self.space = ActionSpace("continuous", int(np.prod(space.shape)))
            self._low = space.low.reshape(-1).astype(np.float64)
            self._range = (space.high - space.low).reshape(-1).astype(np.float64)
        else:
            raise EnvError(f"{env_id}: unsupported action space {space}; supported: {SUPPORTED_ACT}")
        self._split = np.cumsum(self.space.nvec)[:-1]

    def __call__(self, action: np.ndarray) -> np.ndarray:
        """action: [N, A] agent format -> [N, ...] native (ints for discrete kinds, bounded floats)."""
        kind = self.space.kind
        if kind == "continuous":
            unit = (np.clip(action, -1.0, 1.0) + 1.0) / 2.0
            native = self._low + unit * self._range
            return native.reshape((len(action), *self.native.shape)).astype(self.native.dtype)
        if kind == "discrete":
            index = action.argmax(-1)
            return index + self._start[0] if self._start[0] else index
        picks = [np.argmax(part, axis=-1) for part in np.split(action, self._split, axis=-1)]
        return (np.stack(picks, axis=-1) + self._start).astype(self.native.dtype)

    def to_agent(self, native: np.ndarray) -> np.ndarray:
        """Inverse of the call: native batched actions [N, ...] -> agent format [N, A] float32."""
        native = np.asarray(native)
        if self.space.kind == "continuous":
            flat = native.reshape(len(native), -1).astype(np.float64)
            safe = np.where(self._range > 0, self._range, 1.0)
            return (2.0 * (flat - self._low) / safe - 1.0).astype(np.float32)
        values = native.reshape(len(native), -1) - np.asarray(self._start).reshape(1, -1)
        return _one_hots(values, np.asarray(self.space.nvec))
