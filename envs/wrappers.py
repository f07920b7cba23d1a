"""One-job Gymnasium wrappers that run inside each environment (in its subprocess when parallel).

Each does one thing to one env; the order they are stacked in is written out once, in
`envs.make.make_gym_env`. Conversions that are cheap on whole batches (one-hot actions, [-1, 1]
rescaling, naming observation keys) live in `envs.codec` instead.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import cv2
import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.codec import is_image_space

log = logging.getLogger(__name__)


class _ImageWrapper(gym.ObservationWrapper):
    """Applies `frame` to every image of the observation: the observation itself or Dict entries."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        space = env.observation_space
        if isinstance(space, spaces.Dict):
            self._keys = [k for k, s in space.spaces.items() if self.wants(s)]
            new = {k: self.frame_space(s) if k in self._keys else s for k, s in space.spaces.items()}
            self.observation_space = spaces.Dict(new)
        else:
            self._keys = None
            self.observation_space = self.frame_space(space) if self.wants(space) else space

    @property
    def active(self) -> bool:
        """Whether any image is changed (a no-op wrapper need not be stacked)."""
        return bool(self._keys) if self._keys is not None else self.wants(self.env.observation_space)

    def observation(self, obs: Any) -> Any:
        if self._keys is None:
            return self.frame(obs)
        return {k: self.frame(v) if k in self._keys else v for k, v in obs.items()}

    def wants(self, space: spaces.Space) -> bool:
        raise NotImplementedError

    def frame_space(self, space: spaces.Box) -> spaces.Box:
        raise NotImplementedError

    def frame(self, image: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class ResizeImages(_ImageWrapper):
    """Resizes every H x W x C uint8 image to `size` = (H, W) with cv2 INTER_AREA (area averaging)."""

    def __init__(self, env: gym.Env, size: tuple[int, int]):
        self.size = (int(size[0]), int(size[1]))
        super().__init__(env)

    def wants(self, space: spaces.Space) -> bool:
        return is_image_space(space) and tuple(space.shape[:2]) != self.size

    def frame_space(self, space: spaces.Box) -> spaces.Box:
        return spaces.Box(0, 255, (*self.size, space.shape[2]), np.uint8)

    def frame(self, image: np.ndarray) -> np.ndarray:
        # cv2 takes (width, height) and drops a channel axis of size 1.
        out = cv2.resize(image, (self.size[1], self.size[0]), interpolation=cv2.INTER_AREA)
        return out.reshape(*self.size, image.shape[2])


class GrayscaleImages(_ImageWrapper):
    """Turns every RGB image into one luminance channel, H x W x 1 (ITU-R 601 weights, as cv2)."""

    def wants(self, space: spaces.Space) -> bool:
        return is_image_space(space) and space.shape[2] == 3

    def frame_space(self, space: spaces.Box) -> spaces.Box:
        return spaces.Box(0, 255, (*space.shape[:2], 1), np.uint8)

    def frame(self, image: np.ndarray) -> np.ndarray:
        return cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)[..., None]


class RestartOnError(gym.Wrapper):
    """Rebuilds the env when its `step` or `reset` raises, and reports the error.

    The failed step returns the first observation of a fresh episode with reward 0, no termination
    and `info["restarted"] = True`, which the adapter turns into `is_first`. The env that failed is
    named by `name` and `index` in the logged warning. After `max_tries` failed rebuilds in a row the
    last error propagates.
    """

    def __init__(self, make: Callable[[], gym.Env], name: str, index: int, max_tries: int = 3):
        super().__init__(make())
        self._make, self._name, self._index, self._max_tries = make, name, index, max_tries
        self._seed: int | None = None
        self.restarts = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self._seed = seed
        try:
            return self.env.reset(seed=seed, options=options)
        except Exception as error:  # reported and restarted; re-raised after max_tries
            self._report("reset", error)
            return self._restart()

    def step(self, action: Any):
        try:
            return self.env.step(action)
        except Exception as error:  # reported and restarted; re-raised after max_tries
            self._report("step", error)
            obs, info = self._restart()
            return obs, 0.0, False, False, {**info, "restarted": True}

    def _report(self, where: str, error: Exception) -> None:
        log.warning(
            "env %s (index %d) raised in %s: %s: %s; restarting it",
            self._name,
            self._index,
            where,
            type(error).__name__,
            error,
        )

    def _restart(self) -> tuple[Any, dict]:
        for attempt in range(1, self._max_tries + 1):
            self.restarts += 1
            try:
                self.env.close()
            except Exception as error:  # a broken env may fail to close; the rebuild matters
                log.warning("env %s (index %d) failed to close: %s", self._name, self._index, error)
            try:
                self.env = self._make()
                seed = None if self._seed is None else self._seed + 7919 * self.restarts
                return self.env.reset(seed=seed)
            except Exception as error:
                if attempt == self._max_tries:
                    raise
                self._report("restart", error)
        return None
