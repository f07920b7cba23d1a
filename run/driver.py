"""The driver: steps a VecEnv with a policy and hands every step and finished episode to callbacks."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from envs.spaces import ActionSpace
from envs.vec_env import VecEnv

Policy = Callable[[dict[str, np.ndarray], Any], tuple[np.ndarray, Any]]


class Driver:
    """Runs `policy` in a VecEnv, keeping the current observation and policy state between calls.

    Per vector step: the policy picks actions [N, A] from the observation (or returns a dict of them,
    `action`, and further arrays [N, ...] to store with the step); every `on_step` callback gets the
    observation dict plus `action` (the action taken at that step, so `action[t-1]` led into step t)
    and the policy's further arrays; every env whose step is `is_last` reports `{"return", "length",
    "env"}` to the `on_episode` callbacks (length counts transitions, not the first step); then the
    envs step.
    """

    def __init__(self, env: VecEnv):
        self.env = env
        self._on_step: list[Callable[[dict[str, np.ndarray]], None]] = []
        self._on_episode: list[Callable[[dict], None]] = []
        self._obs: dict[str, np.ndarray] | None = None
        self._state: Any = None

    def on_step(self, fn: Callable[[dict[str, np.ndarray]], None]) -> None:
        """fn(step): step holds the observation keys, flags and `action`, arrays [N, ...]."""
        self._on_step.append(fn)

    def on_episode(self, fn: Callable[[dict], None]) -> None:
        """fn(stats): `return` (float), `length` (int, transitions), `env` (index), per finished episode."""
        self._on_episode.append(fn)

    def reset(self) -> None:
        """Reset every env and the policy state (None)."""
        self._obs = self.env.reset()
        self._state = None
        self._return = [0.0] * self.env.num_envs
        self._length = [0] * self.env.num_envs

    def __call__(self, policy: Policy, steps: int) -> None:
        """Run `steps` vector steps (steps x N env steps)."""
        if self._obs is None:
            self.reset()
        shape = (self.env.num_envs, self.env.act_space.dim)
        for _ in range(steps):
            out, self._state = policy(self._obs, self._state)
            out = out if isinstance(out, dict) else {"action": out}
            action = np.asarray(out["action"], np.float32)
            if action.shape != shape:
                raise ValueError(f"policy returned actions of shape {action.shape}; expected {shape} (N, A)")
            step = {**self._obs, **out, "action": action}
            for fn in self._on_step:
                fn(step)
            self._count(step)
            self._obs = self.env.step(action)

    def _count(self, step: dict[str, np.ndarray]) -> None:
        # Python scalars: for a handful of envs they are several times cheaper than numpy calls.
        first, last = step["is_first"].tolist(), step["is_last"].tolist()
        for i, reward in enumerate(step["reward"].tolist()):
            if first[i]:
                self._return[i], self._length[i] = 0.0, 0
            else:
                self._return[i] += reward
                self._length[i] += 1
            if last[i]:
                stats = {"return": self._return[i], "length": self._length[i], "env": i}
                for fn in self._on_episode:
                    fn(stats)


def random_policy(act_space: ActionSpace, num_envs: int, rng: np.random.Generator) -> Policy:
    """A policy of uniform random actions: one-hots (per sub-action) or uniform in [-1, 1]; for prefill."""
    if act_space.kind == "continuous":

        def policy(obs: dict[str, np.ndarray], state: Any) -> tuple[np.ndarray, Any]:
            return rng.uniform(-1.0, 1.0, (num_envs, act_space.dim)).astype(np.float32), state

        return policy
    nvec = np.asarray(act_space.nvec)
    offsets = np.concatenate([[0], np.cumsum(nvec)[:-1]])
    rows = np.arange(num_envs)[:, None]

    def policy(obs: dict[str, np.ndarray], state: Any) -> tuple[np.ndarray, Any]:
        # Uniform ints from uniform floats: one generator call for all sub-actions.
        picks = (rng.random((num_envs, len(nvec))) * nvec).astype(np.int64) + offsets
        action = np.zeros((num_envs, act_space.dim), np.float32)
        action[rows, picks] = 1.0
        return action, state

    return policy
