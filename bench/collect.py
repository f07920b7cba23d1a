"""Environment steps per second: raw Gymnasium against our stack, so the stack's overhead is visible.

    .venv/bin/python bench/collect.py [--seconds 1] [--rounds 5]

Rows: CartPole-v1 (vector observations, discrete actions) and Pendulum-v1 (64x64 rendered pixels,
continuous actions), with N = 1 and 4 envs in this process. Columns, in env steps per CPU second of
this process (best of interleaved trials, random actions):
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


def trial(step, n_envs: int, seconds: float) -> float:
    """Env steps per CPU second of `step()` (one call = n_envs env steps), timed for about `seconds`.

    CPU time of this process, not wall time: everything runs in this process (Sync vector envs), and
    the CPU is shared, so wall time would mostly measure the other processes.
    """
    calls, start = 0, time.process_time()
    while (elapsed := time.process_time() - start) < seconds:
        for _ in range(20):
            step()
        calls += 20
    return calls * n_envs / elapsed


def best_rates(steppers: list, n_envs: int, seconds: float, rounds: int) -> list[float]:
    """The best of `rounds` interleaved trials per stepper: other processes only ever slow a trial
    down (caches, frequency), so the fastest one is the closest to the code's own speed."""
    for step in steppers:
        for _ in range(10):
            step()
    best = [0.0] * len(steppers)
    for _ in range(rounds):
        for i, step in enumerate(steppers):
            best[i] = max(best[i], trial(step, n_envs, seconds / rounds))
    return best


def raw_env(env_id: str, pixels: bool, n: int):
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

    return step


def raw_vec(env_id: str, pixels: bool, n: int):
    def make():
        if not pixels:
            return gym.make(env_id)
        return ResizeObservation(AddRenderObservation(gym.make(env_id, render_mode="rgb_array")), SIZE)

    vec = SyncVectorEnv([make] * n, autoreset_mode=AutoresetMode.NEXT_STEP)
    vec.reset(seed=0)
    actions = [vec.action_space.sample() for _ in range(256)]
    it = iter(range(10**12))
    return lambda: vec.step(actions[next(it) % 256])


def ours(config, n: int, driver: bool):
    env = make_vec_env(config, seed=0, num_envs=n, parallel=False)
    policy = random_policy(env.act_space, n, np.random.default_rng(0))
    if driver:
        run = Driver(env)
        return lambda: run(policy, 1)
    env.reset()
    actions = [policy({}, None)[0] for _ in range(256)]
    it = iter(range(10**12))
    return lambda: env.step(actions[next(it) % 256])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="CPU seconds per cell")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved trials per cell; the best counts")
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
            steppers = [
                raw_env(env_id, pixels, n),
                raw_vec(env_id, pixels, n),
                ours(config, n, False),
                ours(config, n, True),
            ]
            a, b, c, d = best_rates(steppers, n, args.seconds, args.rounds)
            print(f"{env_id:<12}{obs:<8}{n:>3}{a:>11.0f}{b:>11.0f}{c:>14.0f}{d:>11.0f}{1 - c / b:>10.1%}")


if __name__ == "__main__":
    main()
