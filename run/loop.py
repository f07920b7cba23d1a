"""The training loop: collect with the policy, add to replay, train at the configured ratio, log,
evaluate, checkpoint.

The first `run.prefill` policy steps use uniform random actions and train nothing; with 0 the (untrained)
policy acts from the first step, as in the reference. Training starts once the prefill is over and the
replay is ready (it holds batch_size x batch_length windows, the reference's condition), with one update
at once, then follows the train ratio; training batches take the replay's online queue of new windows
first (`replay.online`). The schedules (logging, checkpoints, evaluation) run throughout. Every
`run.video_every` steps the agent's open-loop report is logged and the next training episode of env 0 is
recorded; policy videos (training and evaluation episodes) show what the env renders (`rgb_array`), else
its first image observation (run/video.py's `PolicyFrames`), and the env renders only while an episode is
being recorded.

Counters are in policy steps (one per env per vector step) and env frames (policy steps x action
repeat). On resume the loop state (counters, schedules, the training carry, random states) comes back
from the checkpoint and the replay from its chunks; the environments cannot be saved, so they are reset
and the first step after a resume starts a new episode (`is_first`). The updates that follow a resume
are bit-identical on CPU to those of the uninterrupted run (`train_updates` draws the same batches
from the restored replay sampler and applies them to the same weights and optimizer states).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, NamedTuple

import numpy as np

from configs.schema import RunConfig
from evaluation.policy import collect_episodes, policy_summary
from run.checkpoint import Checkpointer
from run.distributed import World, fingerprint, to_cpu
from run.driver import Driver, random_policy
from run.logger import Logger
from run.schedule import Clock, Every, Ratio
from run.seeding import generator_state, rng_state, set_generator_state, set_rng_state
from run.stop import StopFlag
from run.video import VIDEO_MAX_FRAMES, PolicyFrames
from util.transfers import to_floats


class NonFiniteError(RuntimeError):
    """Too many updates in a row had a non-finite loss or gradient."""


class Parts(NamedTuple):
    """What the loop drives; built by train.py's factories (tests swap any of them)."""

    env: Any  # VecEnv: obs_space, act_space, num_envs, reset(), step(action), close()
    replay: Any  # Replay: add, sample_torch, update, ready, context, __len__, stats, flush, state_dict
    agent: Any  # Agent: policy, train, report, carry_state, load_carry, state_dict, device (bounds)
    logger: Logger
    checkpointer: Checkpointer
    eval_env: Any = None  # a VecEnv with its own seeds, or None when run.eval_every is 0


@dataclass
class Counters:
    step: int = 0  # policy steps collected, all envs together
    updates: int = 0  # updates applied to the weights
    episodes: int = 0  # training episodes finished
    nonfinite: int = 0  # updates skipped for a non-finite loss or gradient, in total
    nonfinite_run: int = 0  # ... in a row, up to the latest update


# The parts of a checkpoint that differ between data-parallel ranks.
RANK_KEYS = ("replay", "loop", "rng")


def rank_part(state: dict) -> dict:
    """A data-parallel rank's own part of a checkpoint (on the CPU) and the sha256 of its weights."""
    own = {key: to_cpu(state[key]) for key in RANK_KEYS}
    own["weights_sha256"] = fingerprint(state["agent"]["world_model"], state["agent"]["actor_critic"])
    return own


class EpisodeRecorder:
    """Records the frames of env 0's next full episode (its first VIDEO_MAX_FRAMES), once armed."""

    def __init__(self, source: PolicyFrames):
        self.source = source
        self.armed = False
        self.frames: list[np.ndarray] = []
        self.done: np.ndarray | None = None

    def arm(self) -> None:
        self.armed, self.frames, self.done = self.source.available, [], None

    def __call__(self, step: dict[str, np.ndarray]) -> None:
        if not self.armed:
            return
        if not self.frames and not step["is_first"][0]:
            return  # wait for the start of an episode
        frame = self.source(step, 0)
        if frame is None or (self.frames and frame.shape != self.frames[0].shape):
            # The source changed mid-episode (a renderer failed): start again with the next episode.
            self.frames, self.armed = [], self.source.available
            return
        self.frames.append(frame)
        if step["is_last"][0] or len(self.frames) >= VIDEO_MAX_FRAMES:
            self.armed, self.done = False, np.stack(self.frames)

    def take(self) -> np.ndarray | None:
        """The finished episode's frames [T, H, W, C] (once), or None."""
        done, self.done = self.done, None
        return done


class Loop:
    """Owns the schedules and counters; `run` is the loop itself."""

    def __init__(
        self,
        config: RunConfig,
        parts: Parts,
        updates_per_step: float,
        action_repeat: int,
        seed: int,
        config_yaml: str = "",
        world: World | None = None,
    ):
        """`config_yaml` (the resolved root config) is stored in checkpoints for the compatibility check.
        `world`: this process among data-parallel ranks (see run/distributed.py); a single process by
        default. `updates_per_step` counts global policy steps (all ranks and envs)."""
        self.config = config
        self.world = world or World()
        self.config_yaml = config_yaml
        self.parts = parts
        self.env, self.replay, self.agent, self.logger = parts.env, parts.replay, parts.agent, parts.logger
        self.action_repeat = action_repeat
        self.counters = Counters()
        self.train_state: Any = None  # the agent's training carry between batches (opaque; None at first)
        self.saved_step: int | None = None
        self.rng = np.random.default_rng(seed)  # actions of the random prefill policy
        self.ratio = Ratio(updates_per_step)
        # Only rank 0 evaluates and renders (no collective operation happens inside either).
        main = self.world.is_main
        self.should_eval = Every(config.eval_every if parts.eval_env is not None and main else 0)
        self.should_video = Every(config.video_every if main else 0)
        self.should_save_steps = Every(config.save_every_steps)
        self.should_save_time = Clock(config.save_every if config.save_every_steps <= 0 else -1)
        self.should_log = Clock(config.log_every)
        self.recorder = EpisodeRecorder(PolicyFrames(self.env))
        self.driver = Driver(self.env)
        self.driver.on_step(self._on_step)
        self.driver.on_episode(self._on_episode)
        self._speed = (time.monotonic(), 0, 0)

    # --- the loop -----------------------------------------------------------------------------------

    def run(self, stop: StopFlag) -> Counters:
        """Collect, train, log, evaluate and checkpoint until `run.steps` or a stop request."""
        explore = random_policy(self.env.act_space, self.env.num_envs, self.rng)
        policy = self.policy(sample=True, store_latent=self.replay.context > 0)
        while self.counters.step < self.config.steps and not stop.requested:
            prefilling = self.counters.step < self.config.prefill
            self.driver(explore if prefilling else policy, steps=1)
            if not prefilling and self.replay.ready:
                self.train_updates(self.ratio(self.env.num_envs * self.world.size))
            if self.should_video(self.counters.step):
                self.report()
            if self.should_eval(self.counters.step):
                self.evaluate()
            log, save_time = self._agree(stop)
            if log:
                self.write_logs()
            if self.should_save_steps(self.counters.step) or save_time:
                self.save()
            self.logger.progress(self.counters.step, self.config.steps)
        # Writing logs pools every rank's scalars: all ranks write if any has some pending.
        (pending,) = self.world.any([self.logger.pending])
        if pending:
            self.write_logs()
        if self.saved_step != self.counters.step:
            self.save()
        return self.counters

    def _agree(self, stop: StopFlag) -> tuple[bool, bool]:
        """Whether to write logs and a timed checkpoint now. Across ranks, rank 0's clocks decide and a
        stop request on any rank stops every rank, so all ranks take the same collective steps."""
        main = self.world.is_main
        log, save = main and self.should_log(), main and self.should_save_time()
        log, save, stopping = self.world.any([log, save, stop.requested])
        if stopping and not stop.requested:
            stop.request()
        return log, save

    # --- the steps of the loop ------------------------------------------------------------------------

    def policy(self, sample: bool, store_latent: bool = False) -> Callable:
        """The agent's policy in the driver's signature, sampling actions or taking the distribution's
        mode; a None state starts from the initial state. With `store_latent` each step carries the
        latent the policy reached there, for the replay to keep (`replay.context`)."""

        def act(obs: dict[str, np.ndarray], state: Any) -> tuple[Any, Any]:
            if state is None:
                state = self.agent.initial_policy_state(len(obs["is_first"]))
            action, state = self.agent.policy(obs, state, sample=sample)
            if store_latent:
                return {"action": action, **self.agent.latent_arrays(state)}, state
            return action, state

        return act

    def train_updates(self, count: int) -> list[dict[str, float]]:
        """Run `count` updates on replay batches; returns their metrics. Stops a diverged run.

        The next batch is gathered while the device runs an update (nothing in an update makes the host
        wait), so it holds the stored latents from before that update's write-back, as the reference's
        prefetching dataset does. Prefetching stays within one call: a checkpoint never falls between a
        batch's sampling and its update."""
        history = []
        batch = self.replay.sample_torch(self.agent.device) if count > 0 else None
        for i in range(count):
            carry = self.train_state
            out = self.agent.train(batch, carry)
            trained, batch = batch, self.replay.sample_torch(self.agent.device) if i + 1 < count else None
            self.train_state = out.carry
            metrics = to_floats(out.metrics)  # read back from the device once per update
            if out.replay and not metrics.get("nonfinite"):
                self.replay.update(out.replay)  # refresh the latents of the trained steps
            self._check_finite(metrics)
            if self._bounds_due(metrics):
                metrics.update(self.agent.bounds(trained, carry, self.config.bound_particles))
            self.logger.scalars(metrics, prefix="train/")
            history.append(metrics)
        return history

    def _bounds_due(self, metrics: dict[str, float]) -> bool:
        """Whether this update (applied, the `run.bound_every`-th since the last) gets the bound metrics."""
        every = self.config.bound_every
        return every > 0 and not metrics.get("nonfinite") and self.counters.updates % every == 0

    def _check_finite(self, metrics: dict[str, float]) -> None:
        losses = [v for k, v in metrics.items() if k.startswith("loss")]
        if metrics.get("nonfinite", 0.0) > 0 or not all(math.isfinite(v) for v in losses):
            self.counters.nonfinite += 1
            self.counters.nonfinite_run += 1
        else:
            self.counters.updates += 1
            self.counters.nonfinite_run = 0
        if self.counters.nonfinite_run >= self.config.max_nonfinite:
            last = self.parts.checkpointer.latest()
            raise NonFiniteError(
                f"stopping after {self.counters.nonfinite_run} updates in a row with a non-finite loss or "
                f"gradient (run.max_nonfinite = {self.config.max_nonfinite}); the last good checkpoint is "
                f"{last or 'none (no checkpoint was written yet)'}"
            )

    def report(self) -> None:
        """Open-loop predictions on a replay batch, and the last recorded policy episode, to the logger."""
        self.recorder.arm()
        if not self.replay.ready:
            return
        batch = self.replay.sample_torch(self.agent.device, online=False)  # leaves new windows to training
        for name, value in self.agent.report(batch).items():
            value = np.asarray(value)
            if value.dtype == np.uint8 and value.ndim == 4:
                self.logger.video(f"report/{name}", value)
            elif value.size == 1:
                self.logger.scalar(f"report/{name}", float(value))

    def evaluate(self) -> None:
        """Run `run.eval_episodes` episodes with the eval policy (`run.eval_policy`: sampled actions by
        default, as the reference) on the eval envs (an even share per env, so short episodes are not
        over-represented); log return and length statistics and a video."""
        policy = self.policy(sample=self.config.eval_policy == "sample")
        episodes = collect_episodes(self.parts.eval_env, policy, self.config.eval_episodes, videos=1)
        for name, stats in policy_summary(episodes).items():
            self.logger.scalar(f"eval/{name}", stats["mean"])
            for key in ("std", "min", "max", "median", "ci95_low", "ci95_high"):
                if stats[key] is not None:
                    self.logger.scalar(f"eval/{name}_{key}", stats[key])
        self.logger.histogram("eval/returns", np.array([e.ret for e in episodes]))
        if episodes[0].frames is not None:
            self.logger.video("eval/policy", episodes[0].frames)

    def write_logs(self) -> None:
        now, last_step, last_updates = self._speed
        elapsed = max(time.monotonic() - now, 1e-9)
        self.logger.scalar("fps/policy", (self.counters.step - last_step) / elapsed)
        self.logger.scalar("fps/updates", (self.counters.updates - last_updates) / elapsed)
        self._speed = (time.monotonic(), self.counters.step, self.counters.updates)
        self.logger.scalars(self.counter_scalars())
        self.logger.scalars({k: float(v) for k, v in self.replay.stats().items()}, prefix="replay/")
        self._pool_scalars()
        frames = self.recorder.take()
        if frames is not None:
            self.logger.video("policy/episode", frames)
        self.logger.write(self.counters.step)

    def counter_scalars(self) -> dict[str, float]:
        c = self.counters
        return {
            "frames": c.step * self.action_repeat,
            "updates": c.updates,
            # Each rank counts its own episodes; all ranks log the total.
            "episodes": self.world.sum(c.episodes),
            "nonfinite": c.nonfinite,
        }

    def _pool_scalars(self) -> None:
        """Pool every rank's pending scalars into rank 0's logger, so each logged value is the mean over
        all ranks' values (every rank's episodes count); other ranks' loggers have no outputs."""
        pooled = self.world.gather_object((dict(self.logger.sums), dict(self.logger.counts)))
        if pooled is None:
            return
        for sums, counts in pooled[1:]:
            for name, value in sums.items():
                self.logger.sums[name] += value
                self.logger.counts[name] += counts[name]

    def save(self, flush: bool = True) -> None:
        """Flush the replay to its chunks (so disk equals memory; not with `flush` False, after the replay
        failed to write) and write a checkpoint.

        Across ranks every rank flushes its own replay shard and rank 0 writes one checkpoint holding
        the shared weights and every rank's own state, after checking that all ranks' weights agree.
        """
        if flush:
            self.replay.flush()
        state = self.world.gather_ranks(self.state_dict(), rank_part)
        if self.world.is_main:
            self.parts.checkpointer.save(state, self.counters.step)
        self.saved_step = self.counters.step

    # --- callbacks and state ------------------------------------------------------------------------

    def _on_step(self, step: dict[str, np.ndarray]) -> None:
        self.replay.add(step)
        self.counters.step += len(step["is_first"]) * self.world.size  # the ranks step in lockstep
        self.recorder(step)

    def _on_episode(self, stats: dict[str, Any]) -> None:
        self.counters.episodes += 1
        self.logger.scalar("episode/return", float(stats["return"]))
        self.logger.scalar("episode/length", float(stats["length"]))

    def state_dict(self) -> dict:
        return {
            "config": self.config_yaml,
            "agent": self.agent.state_dict(),
            "replay": self.replay.state_dict(),
            "loop": {
                "counters": asdict(self.counters),
                "train_state": self.agent.carry_state(self.train_state),
                "ratio": self.ratio.state_dict(),
                "eval": self.should_eval.state_dict(),
                "video": self.should_video.state_dict(),
                "save": self.should_save_steps.state_dict(),
            },
            "rng": {"global": rng_state(), "prefill": generator_state(self.rng)},
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from a checkpoint: weights, optimizers, replay sampler, counters, schedules, RNG.

        A checkpoint of a data-parallel run continues on the same number of ranks (`check_world_size`),
        each rank from its own part.
        """
        state = self.world.own_state(state)
        self.agent.load_state_dict(state["agent"])
        self.replay.load_state_dict(state["replay"])
        loop = state["loop"]
        self.counters = Counters(**loop["counters"])
        self.train_state = self.agent.load_carry(loop["train_state"])
        self.ratio.load_state_dict(loop["ratio"])
        self.should_eval.load_state_dict(loop["eval"])
        self.should_video.load_state_dict(loop["video"])
        self.should_save_steps.load_state_dict(loop["save"])
        set_generator_state(self.rng, state["rng"]["prefill"])
        set_rng_state(state["rng"]["global"])
        self._speed = (time.monotonic(), self.counters.step, self.counters.updates)
        self.saved_step = self.counters.step
