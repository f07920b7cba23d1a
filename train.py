"""Train a world-model agent: `python train.py --configs debug cartpole --run.steps 300 --logdir runs/x`.

Starting the same command again on the same logdir resumes from its newest checkpoint (the replay
comes back from its chunks). `--run.from_checkpoint PATH` initializes the agent (weights, optimizer
states, return normalizer, slow critic) from another run's checkpoint when this logdir has none.
`torchrun --nproc_per_node N train.py ...` trains data-parallel on N processes (run/distributed.py).
SIGTERM or Ctrl-C writes a final checkpoint and exits with status 0 (SIGTERM) or 130 (SIGINT).
One process trains in a run folder at a time (run/lock.py): a second one on the same logdir exits.
Exit status 1: a runtime error (unwritable logdir, unusable checkpoint, a diverged run); 2: bad config,
or the logdir is in use by another process.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

from configs.loader import main_config, save_config, to_yaml
from configs.schema import Config
from run.lock import RunFolderBusyError, RunLock
from util.files import cannot_write

# torch, wandb and matplotlib take seconds to import: they are imported where they are used, so a
# mistyped command line is answered at once.
if TYPE_CHECKING:
    from run.checkpoint import Checkpointer, Loaded
    from run.distributed import World
    from run.logger import Logger
    from run.loop import Loop, Parts

# Eval envs get seeds far from the training envs' (seed + i).
EVAL_SEED_OFFSET = 10_000
KEEP_FREED_MEMORY_NOTE = (
    "run.keep_freed_memory: glibc keeps large freed blocks mapped for reuse on this CPU run (the process "
    "keeps its peak heap); turn it off with --run.keep_freed_memory false"
)


class LogdirError(RuntimeError):
    """The run folder cannot be created or written."""


class BadConfigError(ValueError):
    """A config value that the schema allows but this machine or environment cannot run (exit 2)."""


class RunIOError(RuntimeError):
    """A file of the run could not be written mid-run (exit 1, after a final checkpoint where possible)."""


def make_replay(config: Config, env: Any, logdir: Path, rank: int = 0, world_size: int = 1) -> Any:
    """The replay (shard) of one rank: `<logdir>/replay`, or `<logdir>/replay/rank<r>` across ranks."""
    from replay import Replay, step_spec
    from world_model.rssm import latent_spec

    latent = latent_spec(config.world_model) if config.replay.context else None
    spec = step_spec(env.obs_space, env.act_space.dim, latent)
    directory = None
    if config.replay.save:
        directory = logdir / "replay" / f"rank{rank}" if world_size > 1 else logdir / "replay"
    capacity = replay_capacity(config, env.num_envs, world_size)
    replay_config = dataclasses.replace(config.replay, capacity=capacity)
    return Replay(spec, replay_config, env.num_envs, directory, seed=config.seed + rank, env_id=config.env.id)


def replay_capacity(config: Config, num_envs: int, world_size: int = 1) -> int:
    """Steps one rank's replay preallocates: its share of `replay.capacity` (the total over all ranks), but
    never more than the run can collect (`run.steps` per env), so a short image run does not reserve
    memory it will never fill."""
    floor = max(config.run.steps, config.replay.batch_length, config.replay.chunk_size)
    return min(config.replay.capacity // world_size, floor * num_envs)


def make_logger(config: Config, logdir: Path, start_step: int = 0) -> Logger:
    """The logger of the `logger` config, with the resolved root config for wandb's run config; its
    outputs continue from `start_step` (a resumed run's checkpoint step: later rows are dropped)."""
    from omegaconf import OmegaConf

    from run.logger import make_logger as build_logger

    config_dict = OmegaConf.to_container(OmegaConf.structured(config))
    return build_logger(config.logger, logdir, config_dict, start_step)


class Factories(NamedTuple):
    """How the parts are built; tests replace any of them with stubs. A field left None is the real
    factory, imported when the run is built (torch takes seconds to import)."""

    make_env: Callable[..., Any] | None = None  # (env config, seed, num_envs) -> VecEnv; envs.make_vec_env
    make_replay: Callable[..., Any] = make_replay
    make_agent: Callable[..., Any] | None = None  # (config, obs_space, act_space) -> Agent; agent.make_agent
    make_logger: Callable[..., Logger] = make_logger  # (config, logdir, start_step) -> Logger


class Start(NamedTuple):
    """Where a run starts: its checkpointer, the logdir's newest checkpoint to resume (or None), and the
    state of another run's checkpoint to initialize the agent from (`run.from_checkpoint`, or None)."""

    checkpointer: Checkpointer
    resume: Loaded | None
    init: dict | None

    @property
    def step(self) -> int:
        """The policy step the run starts at."""
        return self.resume.state["step"] if self.resume else 0


def prepare_logdir(path: str) -> Path:
    """Create the run folder and check that it can be written, or raise LogdirError."""
    logdir = Path(path)
    why = cannot_write(logdir)
    if why:
        raise LogdirError(f"cannot write to logdir '{logdir}': {why}")
    return logdir


def build(config: Config, factories: Factories | None = None, world: World | None = None) -> Loop:
    """Compose the parts from the config; resume from the logdir's newest checkpoint if there is one.

    Under torchrun, `world` is this rank (run/distributed.py): its envs, replay shard and random states
    are its own, rank 0's weights are broadcast to all, and only rank 0 logs and checkpoints.
    """
    from run.distributed import World
    from run.seeding import seed_everything

    factories = with_real_parts(factories)
    world = world or World()
    config = with_precision(on_rank_device(config, world), announce=world.is_main)
    logdir = prepare_logdir(config.logdir)
    setup_host(config, announce=world.is_main)
    config_yaml = to_yaml(config)
    start = find_start(config, config_yaml, logdir, world)
    # Rank r's random states, envs and replay sampler are seeded apart from the other ranks'.
    seed_everything(config.seed + world.rank)
    if world.is_main:
        save_config(config, logdir / "config.yaml")
    parts = make_parts(config, factories, logdir, start, world)
    loop = make_loop(config, parts, config_yaml, world)
    restore(loop, start, config, world)
    join_world(parts.agent, world)
    return loop


def with_real_parts(factories: Factories | None) -> Factories:
    """`factories` (all real ones by default) with every field left None set to the real factory."""
    from agent import make_agent
    from envs import make_vec_env

    factories = factories or Factories()
    return factories._replace(
        make_env=factories.make_env or make_vec_env, make_agent=factories.make_agent or make_agent
    )


def on_rank_device(config: Config, world: World) -> Config:
    """The config with this rank's `run.device`: data-parallel CUDA ranks use their local rank's GPU."""
    from run.distributed import rank_device

    device = rank_device(config.run.device, world)
    return dataclasses.replace(config, run=dataclasses.replace(config.run, device=device))


def with_precision(config: Config, announce: bool = True) -> Config:
    """The config with `run.precision: auto` resolved for its device (agent/precision.py), the choice and
    its reason said in one line when `announce`; an explicit precision is kept. The saved config.yaml
    holds the resolved value, which a resume keeps unless `--run.precision` overrides it: checkpoints
    hold float32 weights and optimizer states, so a run resumes in either precision."""
    if config.run.precision != "auto":
        return config
    from agent import resolve_device
    from agent.precision import auto_precision

    choice = auto_precision(resolve_device(config.run.device))
    if announce:
        print(choice.line())
    return dataclasses.replace(config, run=dataclasses.replace(config.run, precision=choice.precision))


def setup_host(config: Config, announce: bool = True) -> None:
    """torch threads and, on a CPU run only, glibc's thresholds for freed memory (`run.keep_freed_memory`:
    process-wide, so it is said in one line when `announce`); on a CUDA run TF32 and cudnn's algorithm
    search (`run.tf32`, `run.cudnn_benchmark`)."""
    from agent import resolve_device
    from run.host import setup_cpu, setup_cuda

    device = resolve_device(config.run.device).type
    kept = setup_cpu(config.run.threads, config.run.keep_freed_memory and device == "cpu")
    if kept and announce:
        print(KEEP_FREED_MEMORY_NOTE)
    if device == "cuda":
        setup_cuda(config.run.tf32, config.run.cudnn_benchmark)


def find_start(config: Config, config_yaml: str, logdir: Path, world: World) -> Start:
    """The checkpoint to resume (the logdir's newest) or to initialize the agent from, each checked
    against the config (and a resumed one against the number of ranks)."""
    from run.checkpoint import Checkpointer, check_compatible, check_world_size
    from run.checkpoint import load as load_checkpoint

    checkpointer = Checkpointer(logdir / "checkpoints", config.run.keep_checkpoints)
    resume = checkpointer.load_latest()
    if resume:
        check_compatible(resume.state["config"], config_yaml, resume.path)
        check_world_size(resume.state, world.size, resume.path)
    init = None
    if resume is None and config.run.from_checkpoint:
        init = load_checkpoint(config.run.from_checkpoint)
        check_compatible(init["config"], config_yaml, config.run.from_checkpoint)
    return Start(checkpointer, resume, init)


def make_parts(config: Config, factories: Factories, logdir: Path, start: Start, world: World) -> Parts:
    """This rank's envs, replay (shard), agent and logger (only rank 0's logger writes)."""
    from run.logger import Logger
    from run.loop import Parts

    env, eval_env = make_envs(config, factories, start.step, world)
    replay = factories.make_replay(config, env, logdir, world.rank, world.size)
    agent = factories.make_agent(config, env.obs_space, env.act_space)
    logger = factories.make_logger(config, logdir, start.step) if world.is_main else Logger(logdir, [])
    return Parts(env, replay, agent, logger, start.checkpointer, eval_env)


def make_envs(config: Config, factories: Factories, step: int, world: World) -> tuple[Any, Any]:
    """This rank's training envs, and rank 0's eval envs when `run.eval_every` is set (else None).

    Seeds start from `seed + step`: a resumed run does not replay the episodes it started with.
    """
    env = factories.make_env(config.env, config.seed + step + world.rank * config.env.num_envs)
    eval_env = None
    if config.run.eval_every > 0 and world.is_main:
        seed = config.seed + EVAL_SEED_OFFSET + step
        eval_env = factories.make_env(config.env, seed, config.env.eval_num_envs)
    return env, eval_env


def make_loop(config: Config, parts: Parts, config_yaml: str, world: World) -> Loop:
    """The loop at `run.train_ratio`, counted over the effective batch: B sequences from every rank."""
    from run.loop import Loop
    from run.schedule import updates_per_step

    batch = config.replay.batch_size * world.size
    ratio = updates_per_step(config.run.train_ratio, batch, config.replay.batch_length)
    seed = config.seed + world.rank
    return Loop(config.run, parts, ratio, config.env.action_repeat, seed, config_yaml, world)


def restore(loop: Loop, start: Start, config: Config, world: World) -> None:
    """Continue the loop from the resumed checkpoint, or initialize the agent from `run.from_checkpoint`."""
    if start.resume:
        loop.load_state_dict(start.resume.state)
        if world.is_main:
            path, held = start.resume.path, len(loop.parts.replay)
            print(f"resumed from {path} at step {loop.counters.step} (replay holds {held} steps)")
    elif start.init:
        loop.agent.load_state_dict(start.init["agent"])
        print(f"agent initialized from {config.run.from_checkpoint}")


def join_world(agent: Any, world: World) -> None:
    """Data-parallel ranks start from rank 0's weights and average their gradients over all ranks; a
    single process has no replicas, and its agent keeps its plain update."""
    if world.distributed:
        world.broadcast_modules(agent.wm, agent.ac)
        agent.data_parallel(world)


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

    check_runnable(config)
    world = init_world(config.run.dist_backend, config.run.device, config.run.dist_timeout_s)
    lock = RunLock(config.logdir)
    try:
        try:
            claim_logdir(lock, config, world)
            loop = build(config, factories, world)
            with StopFlag() as stop:
                try:
                    counters = loop.run(stop)
                except NonFiniteError:
                    loop.write_logs()  # the metrics of the diverging updates are worth keeping
                    raise
                except OSError as e:
                    raise RunIOError(f"{e}; {final_checkpoint(loop, world)}") from None
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
    finally:
        lock.release()


def check_runnable(config: Config) -> None:
    """What the schema cannot check, before anything is written: the device exists, the env id builds an
    env with supported spaces (rendering too, when pixels are asked for), and the replay's sizes fit
    together. Raises BadConfigError with one line."""
    from agent import resolve_device
    from envs import make_vec_env
    from replay import check_config as check_replay

    try:
        resolve_device(config.run.device)
        replay = dataclasses.replace(config.replay, capacity=replay_capacity(config, config.env.num_envs))
        check_replay(replay, config.env.num_envs, config.replay.save)
        make_vec_env(config.env, seed=config.seed, num_envs=1).close()
    except ValueError as e:  # EnvError is a ValueError
        raise BadConfigError(str(e)) from None


def final_checkpoint(loop: Loop, world: World) -> str:
    """After an I/O error mid-run: a checkpoint of everything but the replay's unsaved steps, where the
    checkpoint folder still takes one (one process only: data-parallel ranks cannot agree after one of
    them failed). Says what became of it."""
    if world.distributed:
        return "no final checkpoint (a data-parallel rank failed)"
    try:
        loop.save(flush=False)
    except OSError as e:
        return f"no final checkpoint either ({e})"
    return f"final checkpoint at step {loop.counters.step} (replay steps since the last saved chunk are lost)"


def claim_logdir(lock: RunLock, config: Config, world: World) -> None:
    """Rank 0 takes the run folder's lock before anything is written into it, or raises
    RunFolderBusyError naming the holder. The other ranks wait for its verdict, so a second launch on a
    folder in use writes nothing on any rank."""
    error: Exception | None = None
    if world.is_main:
        try:
            lock.acquire()
        except RunFolderBusyError as e:
            error = e
        except OSError as e:
            error = LogdirError(f"cannot write to logdir '{config.logdir}': {e.strerror or e}")
    failed = error is not None
    if world.distributed:
        (failed,) = world.any([failed])
    if error is not None:
        raise error
    if failed:
        raise RunFolderBusyError(f"rank 0 could not lock the run folder {config.logdir}")


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
    from replay import NonFiniteStepError
    from run.checkpoint import CheckpointError
    from run.distributed import DistributedError
    from run.loop import NonFiniteError

    try:
        return train(config)
    except (RunFolderBusyError, BadConfigError) as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return 2
    except (
        LogdirError,
        CheckpointError,
        NonFiniteError,
        NonFiniteStepError,
        DistributedError,
        MemoryError,
        RunIOError,
    ) as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("train.py: interrupted twice; stopped without a final checkpoint", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
