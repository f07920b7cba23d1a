"""Environment steps per second: raw Gymnasium against our stack, so the stack's overhead is visible.

    .venv/bin/python bench/collect.py [--seconds 2]

Rows: CartPole-v1 (vector observations, discrete actions) and Pendulum-v1 (64x64 rendered pixels,
continuous actions), with N = 1 and 4 envs in this process. Columns (env steps/s, random actions):
- raw env: N `gym.make` envs stepped in a Python loop with native actions (pixels: render + cv2
  INTER_AREA resize per step), the floor no stack can beat;
- raw vec: Gymnasium's SyncVectorEnv over the same envs, native actions;
- make_vec_env: our VecEnv (agent-format actions in, step dicts out);
- driver: our VecEnv run by the Driver with `random_policy` (action sampling included).
Overhead = 1 - make_vec_env / raw vec (the target is < 15% on vector observations).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
from gymnasium.vector import AutoresetMode, SyncVectorEnv  # noqa: E402
from gymnasium.wrappers import AddRenderObservation, ResizeObservation  # noqa: E402

from configs.loader import load_config  # noqa: E402
from envs import make_vec_env  # noqa: E402
from run.driver import Driver, random_policy  # noqa: E402

SIZE = (64, 64)


def rate(step, n_envs: int, seconds: float) -> float:
    """Env steps per second of `step()` (one call = n_envs env steps), timed for about `seconds`."""
    for _ in range(10):
        step()
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(50):
            step()
        calls += 50
    return calls * n_envs / elapsed


def raw_env(env_id: str, pixels: bool, n: int, seconds: float) -> float:
    envs = [gym.make(env_id, render_mode="rgb_array" if pixels else None) for _ in range(n)]
    for i, env in enumerate(envs):
        env.reset(seed=i)
    actions = [[env.action_space.sample() for env in envs] for _ in range(256)]
    t = [0]

    def step():
        for env, action in zip(envs, actions[t[0] % 256], strict=True):
            _, _, terminated, truncated, _ = env.step(action)
            if pixels:
                cv2.resize(env.render(), SIZE[::-1], interpolation=cv2.INTER_AREA)
            if terminated or truncated:
                env.reset()
        t[0] += 1

    return rate(step, n, seconds)


def raw_vec(env_id: str, pixels: bool, n: int, seconds: float) -> float:
    def make():
        if not pixels:
            return gym.make(env_id)
        return ResizeObservation(AddRenderObservation(gym.make(env_id, render_mode="rgb_array")), SIZE)

    vec = SyncVectorEnv([make] * n, autoreset_mode=AutoresetMode.NEXT_STEP)
    vec.reset(seed=0)
    actions = [vec.action_space.sample() for _ in range(256)]
    it = iter(range(10**12))
    return rate(lambda: vec.step(actions[next(it) % 256]), n, seconds)


def ours(config, n: int, seconds: float, driver: bool) -> float:
    env = make_vec_env(config, seed=0, num_envs=n, parallel=False)
    policy = random_policy(env.act_space, n, np.random.default_rng(0))
    if driver:
        run = Driver(env)
        return rate(lambda: run(policy, 1), n, seconds)
    env.reset()
    actions = [policy({}, None)[0] for _ in range(256)]
    it = iter(range(10**12))
    return rate(lambda: env.step(actions[next(it) % 256]), n, seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="timing per cell")
    args = parser.parse_args()
    cases = [("CartPole-v1", "state"), ("Pendulum-v1", "pixels")]
    print(
        f"{'env':<12}{'obs':<8}{'N':>3}{'raw env':>11}{'raw vec':>11}{'make_vec_env':>14}{'driver':>11}"
        f"{'overhead':>10}"
    )
    for env_id, obs in cases:
        config = dataclasses.replace(load_config().env, id=env_id, obs=obs, size=list(SIZE))
        for n in (1, 4):
            pixels = obs == "pixels"
            a = raw_env(env_id, pixels, n, args.seconds)
            b = raw_vec(env_id, pixels, n, args.seconds)
            c = ours(config, n, args.seconds, driver=False)
            d = ours(config, n, args.seconds, driver=True)
            print(f"{env_id:<12}{obs:<8}{n:>3}{a:>11.0f}{b:>11.0f}{c:>14.0f}{d:>11.0f}{1 - c / b:>10.1%}")


if __name__ == "__main__":
    main()
