"""N environments stepped together through Gymnasium's vector API, behind the step-dict interface."""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from envs.adapter import to_step
from envs.codec import ActCodec, ObsCodec
from envs.spaces import ActionSpace, ArraySpec


class VecEnv:
    """A Gymnasium vector env (Sync or Async, `autoreset_mode=NEXT_STEP`) seen as batched step dicts.

    Auto-reset ("next step"): after a step that returned `is_last` for env i, the next `step` ignores
    env i's action, resets it and returns its first observation with `is_first` and reward 0. So every
    transition of every episode is returned, in order, and none mixes two episodes. An env rebuilt by
    `RestartOnError` also returns an `is_first` step.

    `reset()` seeds env i with `seed + i` the first time only (Gymnasium's vector seeding), so the
    same seed gives the same episodes.
    """

    def __init__(self, env: gym.vector.VectorEnv, seed: int, name: str = "the env"):
        self.gym_env = env
        self.num_envs = env.num_envs
        self._obs_codec = ObsCodec(env.single_observation_space, f"env '{name}'")
        self._act_codec = ActCodec(env.single_action_space, f"env '{name}'")
        self._seed: int | None = seed
        self._last = np.zeros(self.num_envs, bool)
        self._action_shape = (self.num_envs, self.act_space.dim)

    @property
    def obs_space(self) -> dict[str, ArraySpec]:
        """Per-env observation specs (no batch dim)."""
        return self._obs_codec.spec

    @property
    def act_space(self) -> ActionSpace:
        return self._act_codec.space

    def reset(self) -> dict[str, np.ndarray]:
        """Reset every env; returns the first steps, arrays [N, ...]."""
        obs, _ = self.gym_env.reset(seed=self._seed)
        self._seed = None
        self._last = np.zeros(self.num_envs, bool)
        first = np.ones(self.num_envs, bool)
        return to_step(self._obs_codec(obs), np.zeros(self.num_envs), ~first, ~first, first)

    def step(self, action: np.ndarray) -> dict[str, np.ndarray]:
        """action: [N, A] float32 agent format -> the next step dict, arrays [N, ...]."""
        action = np.asarray(action, np.float32)
        if action.shape != self._action_shape:
            raise ValueError(
                f"action has shape {action.shape}; expected (num_envs, dim) = "
                f"({self.num_envs}, {self.act_space.dim})"
            )
        obs, reward, terminated, truncated, info = self.gym_env.step(self._act_codec(action))
        is_first = self._last | info["_restarted"] if "_restarted" in info else self._last.copy()
        step = to_step(self._obs_codec(obs), reward, terminated, truncated, is_first)
        self._last = step["is_last"]
        return step

    @property
    def renders(self) -> bool:
        """Whether `render` gives frames: the envs were made with render mode `rgb_array`."""
        return self.gym_env.render_mode == "rgb_array"

    def render(self, index: int = 0) -> np.ndarray | None:
        """Env `index`'s current frame from its `render()` ([H, W, 3] uint8 for `rgb_array`), showing the
        observation of the latest step dict; None when the envs do not render `rgb_array`."""
        if not self.renders:
            return None
        if isinstance(self.gym_env, gym.vector.SyncVectorEnv):
            return self.gym_env.envs[index].render()
        return self.gym_env.call("render")[index]  # subprocess envs render together

    def close(self) -> None:
        self.gym_env.close()
