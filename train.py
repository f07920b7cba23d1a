"""Train a world-model agent: `python train.py --configs debug cartpole --run.steps 300 --logdir runs/x`.

Starting the same command again on the same logdir resumes from its newest checkpoint (the replay
comes back from its chunks). `--run.from_checkpoint PATH` initializes the agent (weights, optimizer
states, return scaler, slow critic) from another run's checkpoint when this logdir has none.
`torchrun --nproc_per_node N train.py ...` trains data-parallel on N processes (run/distributed.py).
SIGTERM or Ctrl-C writes a final checkpoint and exits with status 0 (SIGTERM) or 130 (SIGINT).
Exit status 1: a runtime error (unwritable logdir, unusable checkpoint, a diverged run); 2: bad config.
"""

from __future__ import annotations

import dataclasses
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

from configs.loader import main_config, save_config, to_yaml
from configs.schema import Config

# torch, wandb and matplotlib take seconds to import: they are imported where they are used, so a
# mistyped command line is answered at once.
if TYPE_CHECKING:
    from run.distributed import World
    from run.logger import Logger
    from run.loop import Loop, Parts

# Eval envs get seeds far from the training envs' (seed + i).
EVAL_SEED_OFFSET = 10_000


class LogdirError(RuntimeError):
    """The run folder cannot be created or written."""


def make_env(config: Config, seed: int, num_envs: int | None = None) -> Any:
    """`num_envs` envs seeded `seed`, `seed + 1`, ... (the config's `env.num_envs` by default)."""
    from envs import make_vec_env

    return make_vec_env(config.env, seed=seed, num_envs=num_envs)


def make_replay(config: Config, env: Any, logdir: Path, rank: int = 0, world_size: int = 1) -> Any:
    """The replay (shard) of one rank: `<logdir>/replay`, or `<logdir>/replay/rank<r>` across ranks."""
    from replay import make_replay as build_replay
    from replay import step_spec

    spec = step_spec(env.obs_space, env.act_space.dim)
    directory = None
    if config.replay.save:
        directory = logdir / "replay" / f"rank{rank}" if world_size > 1 else logdir / "replay"
    capacity = replay_capacity(config, env.num_envs, world_size)
    replay_config = dataclasses.replace(config.replay, capacity=capacity)
    seed = config.seed + rank
    return build_replay(replay_config, spec, num_streams=env.num_envs, directory=directory, seed=seed)


def replay_capacity(config: Config, num_envs: int, world_size: int = 1) -> int:
    """Steps one rank's replay preallocates: its share of `replay.capacity` (the total over all ranks), but
    never more than the run can collect (`run.steps` per env), so a short image run does not reserve
    memory it will never fill."""
    floor = max(config.run.steps, config.replay.batch_length, config.replay.chunk_size)
    return min(config.replay.capacity // world_size, floor * num_envs)


def make_agent(config: Config, obs_space: dict, act_space: Any) -> Any:
    from agent import make_agent as build_agent

    return build_agent(config, obs_space, act_space)


def make_logger(config: Config, logdir: Path) -> Logger:
    from omegaconf import OmegaConf

    from run.logger import make_logger as build_logger

    return build_logger(config.logger, logdir, OmegaConf.to_container(OmegaConf.structured(config)))


class Factories(NamedTuple):
    """How the parts are built; tests replace any of them with stubs."""

    make_env: Callable[..., Any] = make_env
    make_replay: Callable[..., Any] = make_replay
    make_agent: Callable[..., Any] = make_agent
    make_logger: Callable[..., Logger] = make_logger


def prepare_logdir(path: str) -> Path:
    """Create the run folder and check that it can be written, or raise LogdirError."""
    logdir = Path(path)
    probe = logdir / f".write-test-{uuid.uuid4().hex[:8]}"
    try:
        logdir.mkdir(parents=True, exist_ok=True)
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise LogdirError(f"cannot write to logdir '{logdir}': {e.strerror or e}") from None
    return logdir


def build(config: Config, factories: Factories | None = None, world: World | None = None) -> Loop:
    """Compose the parts from the config; resume from the logdir's newest checkpoint if there is one.

    Under torchrun, `world` is this rank (run/distributed.py): its envs, replay shard and random states
    are its own, rank 0's weights are broadcast to all, and only rank 0 logs and checkpoints.
    """
    from run.checkpoint import Checkpointer, check_compatible, check_world_size
    from run.checkpoint import load as load_checkpoint
    from run.distributed import World, rank_device
    from run.host import setup_cpu
    from run.logger import Logger
    from run.loop import Loop, Parts
    from run.schedule import updates_per_step
    from run.seeding import seed_everything

    factories = factories or Factories()
    world = world or World()
    if world.distributed:
        config = dataclasses.replace(
            config, run=dataclasses.replace(config.run, device=rank_device(config.run.device, world))
        )
    logdir = prepare_logdir(config.logdir)
    setup_cpu(config.run.threads, config.run.keep_freed_memory)
    config_yaml = to_yaml(config)
    checkpointer = Checkpointer(logdir / "checkpoints", config.run.keep_checkpoints)
    resume = checkpointer.load_latest()
    if resume:
        check_compatible(resume.state["config"], config_yaml, resume.path)
        check_world_size(resume.state, world.size, resume.path)
    init = None
    if resume is None and config.run.from_checkpoint:
        init = load_checkpoint(config.run.from_checkpoint)
        check_compatible(init["config"], config_yaml, config.run.from_checkpoint)
    # Rank r's random states, envs and replay sampler are seeded apart from the other ranks'.
    seed_everything(config.seed + world.rank)
    if world.is_main:
        save_config(config, logdir / "config.yaml")
    # A resumed run reseeds its fresh envs so it does not replay the episodes it started with.
    start = resume.state["step"] if resume else 0
    env = factories.make_env(config, config.seed + start + world.rank * config.env.num_envs)
    eval_env = None
    if config.run.eval_every > 0 and world.is_main:
        eval_env = factories.make_env(
            config, config.seed + EVAL_SEED_OFFSET + start, config.env.eval_num_envs
        )
    replay = factories.make_replay(config, env, logdir, world.rank, world.size)
    agent = factories.make_agent(config, env.obs_space, env.act_space)
    logger = factories.make_logger(config, logdir) if world.is_main else Logger(logdir, outputs=[])
    parts = Parts(env, replay, agent, logger, checkpointer, eval_env)
    batch = config.replay.batch_size * world.size  # the effective batch: B sequences from every rank
    ratio = updates_per_step(config.run.train_ratio, batch, config.replay.batch_length)
    loop = Loop(
        config.run, parts, ratio, config.env.action_repeat, config.seed + world.rank, config_yaml, world
    )
    if resume:
        loop.load_state_dict(resume.state)
        if world.is_main:
            print(
                f"resumed from {resume.path} at step {loop.counters.step} (replay holds {len(replay)} steps)"
            )
    elif init:
        agent.load_state_dict(init["agent"])
        print(f"agent initialized from {config.run.from_checkpoint}")
    if world.distributed:
        world.broadcast_modules(agent.wm, agent.ac)
        agent.data_parallel(world)
    return loop


def close(parts: Parts) -> None:
    parts.logger.close()
    parts.env.close()
    if parts.eval_env is not None:
        parts.eval_env.close()


def train(config: Config, factories: Factories | None = None) -> int:
    """Build and run; returns the exit status (0 done or terminated, 130 interrupted)."""
    from run.distributed import init_world
    from run.loop import NonFiniteError
    from run.stop import StopFlag

    world = init_world(config.run.dist_backend, config.run.device)
    try:
        loop = build(config, factories, world)
        with StopFlag() as stop:
            try:
                counters = loop.run(stop)
            except NonFiniteError:
                loop.write_logs()  # the metrics of the diverging updates are worth keeping
                raise
            finally:
                close(loop.parts)
        world.barrier()  # every rank is done with the collectives before any leaves the group
    finally:
        world.close()
    if world.is_main:
        ended = f"stopped by signal {stop.signum} at" if stop.requested else "finished after"
        print(f"{ended} {counters.step} steps, {counters.updates} updates")
        summarize(Path(config.logdir), loop.parts.logger)
    return stop.exit_status()


def summarize(logdir: Path, logger: Logger) -> None:
    """Write the plots and print where the run folder, plots and videos are."""
    from run.plots import make_plots

    plots = make_plots(logdir)
    print(f"run folder: {logdir}")
    print(f"plots: {', '.join(map(str, plots)) or 'none (nothing logged yet)'}")
    videos = sorted((logdir / "videos").glob("*")) if (logdir / "videos").is_dir() else []
    print(f"videos: {logdir / 'videos'} ({len(videos)} files)" if videos else "videos: none")


def main(argv: list[str] | None = None) -> int:
    config = main_config(argv, prog="train.py")
    from run.checkpoint import CheckpointError
    from run.distributed import DistributedError
    from run.loop import NonFiniteError

    try:
        return train(config)
    except (LogdirError, CheckpointError, NonFiniteError, DistributedError, MemoryError) as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("train.py: interrupted twice; stopped without a final checkpoint", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
