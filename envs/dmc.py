"""DeepMind Control Suite tasks as Gymnasium envs: `dmc_<domain>_<task>`, e.g. `dmc_walker_walk`.

Needs the `dmc` extra (`pip install -e '.[dmc]'`). Observations ("state"): a Dict with the suite's own
proprioceptive keys (`orientations`, `height`, `velocity`, ...), each a float32 vector (scalars as
[1]); pixels come from `render()` (camera 0, or camera 2 for quadruped, as in the reference) at the
configured size, added by the generic stack like any rendering env. Actions are the suite's bounded
Box. The suite's 1000-step episodes end by truncation (`discount` 1); a `discount` of 0 terminates.
The reference uses action repeat 2 (the `dmc_proprio` / `dmc_vision` presets); the generic stack
applies it.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.errors import EnvError
from envs.mujoco_render import fast_rendering

EXTRA = "pip install -e '.[dmc]'"
# Tasks whose domain name contains an underscore; every other id splits at its first underscore.
TWO_WORD_DOMAINS = ("ball_in_cup", "point_mass")


def split_task(name: str) -> tuple[str, str]:
    """'dmc_walker_walk' -> ('walker', 'walk'); 'dmc_ball_in_cup_catch' -> ('ball_in_cup', 'catch')."""
    rest = name.removeprefix("dmc_")
    for domain in TWO_WORD_DOMAINS:
        if rest.startswith(domain + "_"):
            return domain, rest[len(domain) + 1 :]
    domain, _, task = rest.partition("_")
    return domain, task


def make_dmc(name: str, size, camera: int | None = None, **kwargs: Any) -> gym.Env:
    """The DMC task `name` (dmc_<domain>_<task>); kwargs go to the suite's `task_kwargs`."""
    try:
        from dm_control import suite
    except ImportError:
        raise EnvError(f"env '{name}' needs DeepMind Control, which is not installed; run: {EXTRA}") from None
    domain, task = split_task(name)
    if (domain, task) not in suite.ALL_TASKS:
        tasks = ", ".join(f"dmc_{d}_{t}" for d, t in suite.ALL_TASKS[:8])
        raise EnvError(
            f"unknown DeepMind Control task '{name}' (domain '{domain}', task '{task}'); e.g. {tasks}, ..."
        )
    camera = (2 if domain == "quadruped" else 0) if camera is None else camera
    return DMCEnv(suite.load(domain, task, task_kwargs=kwargs), size, camera)


class DMCEnv(gym.Env):
    """A dm_control environment behind Gymnasium's API, rendering rgb_array frames of `size`."""

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, env, size, camera: int):
        self._env = env
        self._size = (int(size[0]), int(size[1]))
        self._camera = camera
        self.render_mode = "rgb_array"
        obs = {
            k: spaces.Box(-np.inf, np.inf, (int(np.prod(v.shape)),), np.float32)
            for k, v in env.observation_spec().items()
        }
        self.observation_space = spaces.Dict(obs)
        spec = env.action_spec()
        self.action_space = spaces.Box(
            spec.minimum.astype(np.float32), spec.maximum.astype(np.float32), spec.shape, np.float32
        )
        fast_rendering(env.physics.model)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            # The task draws its initial states from this generator.
            self._env.task._random = np.random.RandomState(seed)
        return self._obs(self._env.reset().observation), {}

    def step(self, action: np.ndarray):
        time_step = self._env.step(action)
        last = time_step.last()
        terminated = bool(last and time_step.discount == 0)
        return (
            self._obs(time_step.observation),
            float(time_step.reward or 0.0),
            terminated,
            last and not terminated,
            {},
        )

    def render(self) -> np.ndarray:
        return self._env.physics.render(*self._size, camera_id=self._camera)

    def _obs(self, obs: dict) -> dict[str, np.ndarray]:
        return {k: np.asarray(v, np.float32).reshape(-1) for k, v in obs.items()}

    def close(self) -> None:
        self._env.close()
