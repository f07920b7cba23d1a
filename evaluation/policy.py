"""Policy rollouts for evaluation: whole episodes from a vector env, and statistics of their returns.

Each env runs a fixed quota of episodes (env i gets N // n, plus one for the first N % n envs), so
short episodes do not crowd out long ones, as they would if the first N to finish were kept. Episodes
are ordered by env, then by their order in that env: the same seed gives the same list.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import numpy as np
import torch

from configs.schema import EVAL_POLICIES
from run.driver import Driver
from run.video import VIDEO_MAX_FRAMES, PolicyFrames

# Two-sided 95% Student-t quantiles t_{0.975, df} for df = 1..30; beyond, a Cornish-Fisher expansion.
T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip
Z975 = 1.959964
# Vector steps after which a rollout that has not finished its episodes is stopped with an error.
MAX_VECTOR_STEPS = 1_000_000


class Episode(NamedTuple):
    """One finished episode: its steps {key: [T, ...]} (T = length + 1, the first step included),
    return (sum of rewards after the first step), length (transitions), env index, and the frames of its
    policy video [T', H, W, C] uint8 (the first VIDEO_MAX_FRAMES steps) when it was recorded, else None."""

    steps: dict[str, np.ndarray]
    ret: float
    length: int
    env: int
    frames: np.ndarray | None = None


def t_quantile_975(df: int) -> float:
    """t_{0.975, df}: the 97.5% quantile of Student's t with `df` degrees of freedom."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1; got {df}")
    if df <= len(T975):
        return T975[df - 1]
    z = Z975
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def summary_stats(values: Any) -> dict[str, float | None]:
    """n, mean, std (ddof 1), min, max, median and the 95% t confidence interval of the mean.

    With a single value the std is 0 and the interval is unknown (None).
    """
    x = np.asarray(values, np.float64).reshape(-1)
    if not len(x):
        raise ValueError("statistics need at least one value")
    n, mean = len(x), float(x.mean())
    std = float(x.std(ddof=1)) if n > 1 else 0.0
    half = t_quantile_975(n - 1) * std / math.sqrt(n) if n > 1 else None
    return {
        "n": n,
        "mean": mean,
        "std": std,
        "min": float(x.min()),
        "max": float(x.max()),
        "median": float(np.median(x)),
        "ci95_low": None if half is None else mean - half,
        "ci95_high": None if half is None else mean + half,
    }


def agent_policy(agent: Any, kind: str) -> Callable:
    """The agent's policy in the driver's signature: `kind` "sample" draws actions from the policy (as
    the reference evaluates), "mode" takes the distribution's mode (see `run.eval_policy`)."""
    if kind not in EVAL_POLICIES:
        raise ValueError(f"policy kind must be one of {EVAL_POLICIES}, got {kind!r}")

    def act(obs: dict[str, np.ndarray], state: Any) -> tuple[np.ndarray, Any]:
        return agent.policy(obs, state, sample=kind == "sample")

    return act


def quotas(episodes: int, num_envs: int) -> list[int]:
    """Episodes per env: `episodes` spread as evenly as possible, the first envs taking the remainder."""
    if episodes < 1:
        raise ValueError(f"the number of evaluation episodes must be >= 1; got {episodes}")
    return [episodes // num_envs + (i < episodes % num_envs) for i in range(num_envs)]


class EpisodeCollector:
    """A driver step callback that assembles each env's episodes until its quota is met, recording the
    policy video of the first `videos` of them (in the order of `episodes()`) from `frames`."""

    def __init__(self, quota: list[int], frames: PolicyFrames | None = None, videos: int = 0):
        self.quota = quota
        self.done: list[list[Episode]] = [[] for _ in quota]
        self.open: list[list[dict] | None] = [None for _ in quota]
        self.frames, self.videos = frames, videos if frames is not None and frames.available else 0
        self.recording: list[list[np.ndarray] | None] = [None for _ in quota]
        self.position = np.cumsum([0, *quota[:-1]]).tolist()  # env i's first episode in `episodes()`

    @property
    def finished(self) -> bool:
        return all(len(d) >= q for d, q in zip(self.done, self.quota, strict=True))

    def __call__(self, step: dict[str, np.ndarray]) -> None:
        for i in range(len(self.quota)):
            if len(self.done[i]) >= self.quota[i]:
                continue
            if step["is_first"][i]:
                self.open[i] = []
                self.recording[i] = [] if self.position[i] + len(self.done[i]) < self.videos else None
            if self.open[i] is None:
                continue  # joined mid-episode: wait for the next start
            self.open[i].append({k: np.array(v[i]) for k, v in step.items()})
            self._record(step, i)
            if step["is_last"][i]:
                frames = np.stack(self.recording[i]) if self.recording[i] else None
                self.done[i].append(to_episode(self.open[i], i, frames))
                self.open[i] = self.recording[i] = None

    def _record(self, step: dict[str, np.ndarray], i: int) -> None:
        recording = self.recording[i]
        if recording is None or len(recording) >= VIDEO_MAX_FRAMES:
            return
        frame = self.frames(step, i)
        if frame is None or (recording and frame.shape != recording[0].shape):
            self.recording[i] = None  # the source changed mid-episode (a renderer failed): no video
        else:
            recording.append(frame)

    def episodes(self) -> list[Episode]:
        return [e for per_env in self.done for e in per_env]


def to_episode(steps: list[dict[str, np.ndarray]], env: int, frames: np.ndarray | None = None) -> Episode:
    data = {k: np.stack([s[k] for s in steps]) for k in steps[0]}
    return Episode(data, float(data["reward"][1:].astype(np.float64).sum()), len(steps) - 1, env, frames)


def collect_episodes(env: Any, policy: Callable, episodes: int, videos: int = 0) -> list[Episode]:
    """Run `policy` on a fresh reset of `env` until every env has finished its quota of episodes; the
    first `videos` episodes carry the frames of their policy video (when the env has a source of them)."""
    collector = EpisodeCollector(quotas(episodes, env.num_envs), PolicyFrames(env), videos)
    driver = Driver(env)
    driver.on_step(collector)
    driver.reset()
    for _ in range(MAX_VECTOR_STEPS):
        if collector.finished:
            return collector.episodes()
        driver(policy, steps=1)
    raise RuntimeError(
        f"evaluation did not finish {episodes} episodes in {MAX_VECTOR_STEPS} vector steps; "
        "set env.time_limit to bound the episodes"
    )


def episode_rows(episodes: list[Episode], mode: str) -> list[dict[str, Any]]:
    """Per-episode rows for the CSV: mode, episode index, env, return, length."""
    return [
        {"mode": mode, "episode": i, "env": e.env, "return": e.ret, "length": e.length}
        for i, e in enumerate(episodes)
    ]


def policy_summary(episodes: list[Episode]) -> dict[str, dict]:
    """{"return": stats, "length": stats} of the episodes (see `summary_stats`)."""
    return {
        "return": summary_stats([e.ret for e in episodes]),
        "length": summary_stats([e.length for e in episodes]),
    }


@torch.no_grad()
def reconstruction_video(world_model: Any, episode: Episode, key: str = "image") -> np.ndarray:
    """uint8 [T, H, 2W, C]: the real frames of image observation `key` beside the world model's
    posterior reconstructions."""
    device = next(world_model.parameters()).device
    data = {k: torch.as_tensor(v[None]).to(device) for k, v in episode.steps.items()}
    T = data["is_first"].shape[1]
    recon = world_model.open_loop(data, context=T)[key][0].float().clamp(0, 1)
    recon = (recon * 255).round().to(torch.uint8).cpu().numpy()
    return np.concatenate([episode.steps[key], recon], axis=2)
