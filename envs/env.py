"""One environment as the agent sees it: step dicts in, agent-format actions out."""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from envs.adapter import to_step
from envs.codec import ActCodec, ObsCodec
from envs.spaces import ActionSpace, ArraySpec


class Env:
    """A single env behind the step-dict interface.

    `reset()` seeds the env with `seed` the first time only, so the same seed gives the same
    sequence of episodes. After a step with `is_last`, the next `step` ignores its action, resets and
    returns the first step of the next episode (the same "next step" rule as `VecEnv`).
    """

    def __init__(self, env: gym.Env, seed: int, name: str = "the env"):
        self.gym_env = env
        self._obs_codec = ObsCodec(env.observation_space, f"env '{name}'")
        self._act_codec = ActCodec(env.action_space, f"env '{name}'")
        self._seed: int | None = seed
        self._needs_reset = True

    @property
    def obs_space(self) -> dict[str, ArraySpec]:
        return self._obs_codec.spec

    @property
    def act_space(self) -> ActionSpace:
        return self._act_codec.space

    def reset(self) -> dict[str, np.ndarray]:
        """Start an episode; returns its first step (reward 0, `is_first`)."""
        obs, _ = self.gym_env.reset(seed=self._seed)
        self._seed = None
        self._needs_reset = False
        return to_step(self._obs(obs), 0.0, False, False, True)

    def step(self, action: np.ndarray) -> dict[str, np.ndarray]:
        """action: [A] float32 in agent format (one-hot, or [-1, 1]) -> the next step dict."""
        if self._needs_reset:
            return self.reset()
        action = np.asarray(action, np.float32)
        if action.shape != (self.act_space.dim,):
            raise ValueError(f"action has shape {action.shape}; expected (dim,) = ({self.act_space.dim},)")
        native = self._act_codec(action[None])[0]
        obs, reward, terminated, truncated, info = self.gym_env.step(native)
        step = to_step(self._obs(obs), reward, terminated, truncated, info.get("restarted", False))
        self._needs_reset = bool(step["is_last"])
        return step

    def _obs(self, obs) -> dict[str, np.ndarray]:
        batched = (
            {k: np.asarray(v)[None] for k, v in obs.items()}
            if isinstance(obs, dict)
            else np.asarray(obs)[None]
        )
        return {k: v[0] for k, v in self._obs_codec(batched).items()}

    def close(self) -> None:
        self.gym_env.close()
