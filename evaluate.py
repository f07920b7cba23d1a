"""Evaluate a checkpoint: policy rollouts in the real env and the world model against reality.

    python evaluate.py --logdir RUN [--checkpoint PATH|all] [--episodes N] [--modes sample,mode]
                       [--context C] [--openloop-steps H] [--samples K [K ...]] [--bounds elbo iw smc]
                       [--resampler systematic|multinomial] [--ess-threshold F] [--dataset DIR]
                       [--wandb [MODE]] [--env.* / other dotted config overrides]
    python evaluate.py --compare RUN [RUN ...] [--out DIR]

Writes into `<RUN>/eval` (or `--out`, e.g. for a run folder that cannot be written): `summary.json`
(return and length statistics per policy mode: `sample` draws actions from the policy, as the
reference evaluates; `mode` takes the distribution's mode), `episodes.csv` (one row per episode),
`world_model.json` (ELBO, rate, distortion, K-sample bound at the largest K, reward / continuation
errors, open-loop error per imagined step; under `bounds`, the ELBO, importance-weighted and particle
bounds in nats per step for each K of `--samples`, their gaps above the ELBO and their seconds),
`plots/*.png` (`bounds.png`: the bounds per K) and `videos/` (`policy_<i>`: what the env renders, else
its image observation; `episode_<i>`: an image observation beside the model's reconstruction).
The config is the checkpoint's own, with the overrides applied; eval envs are seeded from
`seed + EVAL_SEED_OFFSET` (`--seed` changes it), apart from the training envs' seeds.
Checkpoints follow train.py's rules: with a run folder, an unreadable newest checkpoint is reported and
the previous one is evaluated; an unreadable older one is skipped, with a warning, where all are scored.
The run folder is never changed (a corrupt checkpoint is left where it is).
Exit status 1: no readable checkpoint, a checkpoint that does not fit the env, an env that cannot be
made, an output folder that cannot be written (checked before any rollout); 2: a bad option or config
override.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np
from omegaconf import OmegaConf

from agent import make_agent
from configs.loader import ConfigError, load_config, parse_overrides
from configs.schema import EVAL_POLICIES, Config
from envs import EnvError, make_vec_env
from evaluation import compare
from evaluation import plots as eval_plots
from evaluation.policy import (
    Episode,
    agent_policy,
    collect_episodes,
    episode_rows,
    policy_summary,
    reconstruction_video,
)
from evaluation.world_model import (
    BOUNDS,
    bound_metrics,
    bound_sweep,
    episode_batches,
    episode_windows,
    open_loop_errors,
    open_loop_json,
)
from run.checkpoint import CheckpointError, checkpoint_paths, open_checkpoint
from run.checkpoint import load as load_checkpoint
from run.logger import Summary, WandbOutput
from run.seeding import seed_everything
from run.video import write_video
from train import EVAL_SEED_OFFSET, setup_host
from util.files import cannot_write
from world_model.elbo import RESAMPLERS

PROG = "evaluate.py"
# Open-loop windows cut from the evaluation episodes, at most.
MAX_WINDOWS = 64


class EvalError(RuntimeError):
    """Evaluation cannot start or go on; the message is one line for the user."""


class Loaded(NamedTuple):
    config: Config
    path: Path
    state: dict


# --- command line -----------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, allow_abbrev=False, description=__doc__.split("\n")[0])
    p.add_argument("--logdir", help="the run folder to evaluate (its newest checkpoint by default)")
    p.add_argument("--checkpoint", help="a checkpoint file or folder; 'all' also scores every checkpoint")
    p.add_argument("--episodes", type=int, default=10, help="episodes per policy mode (default 10)")
    p.add_argument(
        "--modes",
        help="policies, comma separated: sample (actions drawn, as the reference evaluates), mode (the "
        "distribution's mode); default: the checkpoint's run.eval_policy (sample unless set)",
    )
    p.add_argument("--videos", type=int, default=1, help="episodes recorded as videos (default 1)")
    p.add_argument("--context", type=int, default=5, help="open-loop context steps (default 5)")
    p.add_argument("--openloop-steps", type=int, default=10, help="open-loop imagined steps (default 10)")
    p.add_argument(
        "--samples",
        type=int,
        nargs="+",
        default=[1, 4, 16, 64],
        help="K of the bounds, one or more (default 1 4 16 64); the largest also for the `bound` summary",
    )
    p.add_argument(
        "--bounds",
        nargs="+",
        default=list(BOUNDS),
        help="bounds per K: elbo, iw (K whole trajectories), smc (K particles, resampled); default all",
    )
    p.add_argument("--resampler", default="systematic", help="particle resampling: systematic, multinomial")
    p.add_argument(
        "--ess-threshold",
        type=float,
        default=0.5,
        help="resample the particles when their effective sample size is at most this fraction of K "
        "(default 0.5; 1: every step, 0: never)",
    )
    p.add_argument("--dataset", help="score the world model on this folder of saved episodes / chunks")
    p.add_argument("--batches", type=int, default=4, help="batches drawn from --dataset (default 4)")
    p.add_argument("--seed", type=int, help="first eval env seed (default: config seed + EVAL_SEED_OFFSET)")
    p.add_argument("--out", help="output folder (default: <logdir>/eval, or ./compare with --compare)")
    p.add_argument("--wandb", nargs="?", const="offline", default="disabled", help="log to the run's wandb")
    p.add_argument("--compare", nargs="+", metavar="RUN", help="compare run folders instead")
    return p


def parse(argv: list[str]) -> tuple[argparse.Namespace, dict]:
    """Own options and the remaining `--group.key value` config overrides; ConfigError when bad."""
    args, rest = parser().parse_known_args(argv)
    overrides = parse_overrides(rest)
    modes = None if args.modes is None else [m for m in args.modes.split(",") if m]
    if modes is not None and (not modes or any(m not in EVAL_POLICIES for m in modes)):
        allowed = " and/or ".join(EVAL_POLICIES)
        raise ConfigError(f"--modes takes {allowed} (comma separated); got '{args.modes}'")
    for name in ("episodes", "context", "openloop_steps", "batches"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1; got {getattr(args, name)}")
    if any(b not in BOUNDS for b in args.bounds):
        raise ConfigError(f"--bounds takes {', '.join(BOUNDS)}; got {' '.join(args.bounds)}")
    if args.resampler not in RESAMPLERS:
        raise ConfigError(f"--resampler takes {' or '.join(RESAMPLERS)}; got '{args.resampler}'")
    if min(args.samples) < 1:
        raise ConfigError(f"--samples must be >= 1; got {' '.join(map(str, args.samples))}")
    if not 0.0 <= args.ess_threshold <= 1.0:
        raise ConfigError(f"--ess-threshold must be in [0, 1]; got {args.ess_threshold}")
    if args.videos < 0:
        raise ConfigError(f"--videos must be >= 0; got {args.videos}")
    if not args.compare and not args.logdir and not args.checkpoint:
        raise ConfigError("give --logdir RUN (or --checkpoint PATH), or --compare RUN [RUN ...]")
    args.modes = modes
    return args, overrides


# --- building the parts -----------------------------------------------------------------------------


def load_run(logdir: str | None, checkpoint: str | None, overrides: dict) -> Loaded:
    """The checkpoint (newest of the logdir unless given) and its config with the overrides applied."""
    source = checkpoint if checkpoint and checkpoint != "all" else logdir
    if logdir and not Path(logdir).is_dir() and source == logdir:
        raise EvalError(f"logdir {logdir} does not exist")
    try:
        path, state = open_checkpoint(source)
    except CheckpointError as e:
        raise EvalError(str(e)) from None
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / f"config-of-{path.name}.yaml"
        base.write_text(state["config"])
        config = load_config([], overrides, base=base)
    return Loaded(config, path, state)


def prepare_out(out: Path, given: bool) -> Path:
    """The output folder, created and checked before any rollout, or EvalError."""
    why = cannot_write(out)
    if why:
        hint = "" if given else "; give --out DIR to write the results elsewhere"
        raise EvalError(f"cannot write the results to '{out}': {why}{hint}")
    return out


def build_env(config: Config, seed: int, num_envs: int | None = None) -> Any:
    try:
        return make_vec_env(config.env, seed, num_envs)
    except (EnvError, gym.error.Error, ImportError) as e:
        raise EvalError(f"cannot make env '{config.env.id}': {e}") from None


def describe_spaces(env: Any) -> str:
    obs = ", ".join(f"{k} {np.dtype(s.dtype).name}{tuple(s.shape)}" for k, s in env.obs_space.items())
    return f"observations {obs}; actions {env.act_space.kind} dim {env.act_space.dim}"


def build_agent(config: Config, env: Any, loaded: Loaded) -> Any:
    """The agent for the env's spaces with the checkpoint's weights, or EvalError when they do not fit."""
    agent = make_agent(config, env.obs_space, env.act_space)
    load_weights(agent, loaded.state, loaded.path, config, env)
    return agent


def load_weights(agent: Any, state: dict, path: Path, config: Config, env: Any) -> None:
    """Put the checkpoint's weights into `agent`, or raise EvalError when they do not fit."""
    try:
        agent.load_state_dict(state["agent"])
    except (RuntimeError, KeyError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EvalError(
            f"checkpoint {path} does not match the spaces of env '{config.env.id}' "
            f"({describe_spaces(env)}): {first}"
        ) from None


def policy_modes(args: argparse.Namespace, config: Config) -> list[str]:
    """The policies to roll out: `--modes`, else the config's `run.eval_policy`."""
    return args.modes or [config.run.eval_policy]


# --- the evaluations --------------------------------------------------------------------------------


def run_policy(agent: Any, env: Any, modes: list[str], args: argparse.Namespace) -> dict[str, list[Episode]]:
    """Episodes per policy mode ("sample", "mode"), each mode on a fresh reset of the same seeded envs; the
    first `--videos` episodes of the first mode are recorded."""
    return {
        mode: collect_episodes(env, agent_policy(agent, mode), args.episodes, args.videos if i == 0 else 0)
        for i, mode in enumerate(modes)
    }


def world_model_data(agent: Any, config: Config, episodes: list[Episode], args: argparse.Namespace):
    """(bound batches, open-loop batch or None): the evaluation episodes of every policy mode, or
    batches of `--dataset`."""
    length = args.context + args.openloop_steps
    if not args.dataset:
        return episode_batches(episodes), episode_windows(episodes, length, MAX_WINDOWS)
    from replay import load_dataset, step_spec

    spec = step_spec(agent.obs_space, agent.act_space.dim)
    replay_config = dataclasses.replace(config.replay, batch_length=length)
    try:
        replay = load_dataset(args.dataset, spec, replay_config, seed=config.seed)
    except (FileNotFoundError, ValueError) as e:
        raise EvalError(str(e)) from None
    batches = [replay.sample() for _ in range(args.batches)]
    return batches, batches[0]


def evaluate_world_model(agent: Any, batches: list, window: Any, args: argparse.Namespace, out: Path) -> dict:
    """Bound metrics, the bounds per K and open-loop errors; writes their plots."""
    wm = agent.wm
    result: dict[str, Any] = {"bound": bound_metrics(wm, batches, max(args.samples)), "open_loop": None}
    ks = sorted(set(args.samples))
    result["bounds"] = bound_sweep(wm, batches, ks, args.bounds, args.resampler, args.ess_threshold)
    eval_plots.plot_bounds(result["bounds"], out / "plots" / "bounds.png")
    if window is None:
        print(f"open loop: no episode has {args.context + args.openloop_steps} steps; skipped")
        return result
    open_loop = open_loop_errors(wm, window, args.context)
    result["open_loop"] = open_loop_json(open_loop, args.context)
    eval_plots.plot_open_loop(open_loop, out / "plots" / "open_loop.png")
    eval_plots.plot_strip(open_loop, args.context, wm.image_keys, out / "plots" / "open_loop_strip.png")
    return result


def score_checkpoints(
    agent: Any, env: Any, loaded: Loaded, batches: list, args: argparse.Namespace
) -> list[dict]:
    """Rate, distortion and ELBO of every checkpoint of the run on the same data (and, with
    `--checkpoint all`, its return under the first policy mode); a checkpoint that cannot be read or used
    is skipped with a warning. Restores the evaluated checkpoint's weights after."""
    points = []
    for path in checkpoint_paths(loaded.path.parent):
        try:
            state = loaded.state if path == loaded.path else load_checkpoint(path)
            load_weights(agent, state, path, loaded.config, env)
        except (CheckpointError, EvalError) as e:
            print(f"warning: {e}; checkpoint skipped", file=sys.stderr)
            continue
        bound = bound_metrics(agent.wm, batches, 1)
        point = {"step": int(state["step"]), "path": str(path)}
        point.update({k: bound[k] for k in ("rate", "distortion", "elbo")})
        if args.checkpoint == "all":
            policy = agent_policy(agent, policy_modes(args, loaded.config)[0])
            rollout = collect_episodes(env, policy, args.episodes)
            point["return"] = policy_summary(rollout)
        points.append(point)
    agent.load_state_dict(loaded.state["agent"])
    return points


def write_videos(agent: Any, config: Config, episodes: list[Episode], count: int, out: Path) -> list[Path]:
    """The first `count` episodes: `policy_<i>` (what the env rendered, else an image observation) and,
    with image observations, `episode_<i>` (the first image key beside the model's reconstruction)."""
    suffix, fps, videos = config.logger.video_format, config.logger.fps, []
    for i, episode in enumerate(episodes[:count]):
        if episode.frames is not None:
            videos.append(write_video(out / "videos" / f"policy_{i}.{suffix}", episode.frames, fps))
        if agent.wm.image_keys:
            frames = reconstruction_video(agent.wm, episode, agent.wm.image_keys[0])
            videos.append(write_video(out / "videos" / f"episode_{i}.{suffix}", frames, fps))
    return videos


# --- outputs ----------------------------------------------------------------------------------------


def write_json(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def write_csv(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["mode", "episode", "env", "return", "length"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def log_wandb(config: Config, logdir: Path, mode: str, step: int, summary: dict, wm: dict, videos) -> None:
    """Scalars (eval/<mode>/return_mean ..., eval/wm/...) and videos to the run's wandb run."""
    scalars = {
        f"eval/{m}/{name}_{stat}": value
        for m, stats in summary["policy"].items()
        for name in ("return", "length")
        for stat, value in stats[name].items()
        if value is not None
    }
    scalars.update({f"eval/wm/{k}": v for k, v in wm["bound"].items()})
    wandb_config = dataclasses.replace(config.logger.wandb, mode=mode)
    output = WandbOutput(wandb_config, logdir, OmegaConf.to_container(OmegaConf.structured(config)))
    output.write(Summary(step, scalars, {}, {f"eval/{p.stem}": p for p in videos}))
    output.close()


def print_summary(summary: dict, wm: dict) -> None:
    for mode, stats in summary["policy"].items():
        r = stats["return"]
        ci = f" 95% CI [{r['ci95_low']:.2f}, {r['ci95_high']:.2f}]" if r["ci95_low"] is not None else ""
        print(
            f"policy {mode}: return {r['mean']:.2f} +- {r['std']:.2f}{ci} (median {r['median']:.2f}, "
            f"min {r['min']:.2f}, max {r['max']:.2f}) over {r['n']} episodes; "
            f"length {stats['length']['mean']:.1f}"
        )
    b = wm["bound"]
    print(
        f"world model: elbo {b['elbo_kl']:.3f} nats/step (rate {b['rate']:.3f}, "
        f"distortion {b['distortion']:.3f}), "
        f"iwae K={int(b['k'])} {b['iwae']:.3f} (gap {b['iwae_gap']:.4f}), reward mse {b['reward_mse']:.4f}"
    )
    print(bounds_table(wm["bounds"]))


def bounds_table(sweep: dict) -> str:
    """The bounds per K (nats per step) and the seconds each took, one row per K."""
    names = [n for n in BOUNDS if n in sweep]
    timed = [n for n in ("iw", "smc") if f"seconds/{n}" in sweep]
    header = f"{'K':>5}" + "".join(f"  {n:>10}" for n in names) + "".join(f"  {'s/' + n:>8}" for n in timed)
    lines = [f"bounds (nats per step) over {sweep['steps']} steps:", header]
    for i, k in enumerate(sweep["k"]):
        row = f"{k:>5}" + "".join(f"  {sweep[n][i]:>10.4f}" for n in names)
        lines.append(row + "".join(f"  {sweep['seconds/' + n][i]:>8.2f}" for n in timed))
    return "\n".join(lines)


# --- entry points -----------------------------------------------------------------------------------


def evaluate(args: argparse.Namespace, overrides: dict) -> dict:
    """The whole evaluation of one checkpoint; returns summary.json's content."""
    loaded = load_run(args.logdir, args.checkpoint, overrides)
    config = loaded.config
    logdir = Path(args.logdir) if args.logdir else loaded.path.parent.parent
    out = prepare_out(Path(args.out) if args.out else logdir / "eval", bool(args.out))
    if args.wandb != "disabled":
        prepare_wandb(logdir)
    setup_host(config)
    seed_everything(config.seed)
    seed = config.seed + EVAL_SEED_OFFSET if args.seed is None else args.seed
    env = build_env(config, seed, config.env.eval_num_envs)
    try:
        return evaluate_with(env, loaded, logdir, out, seed, args)
    finally:
        env.close()


def prepare_wandb(logdir: Path) -> None:
    """--wandb logs into the run's own wandb folder: checked before any rollout, or EvalError."""
    why = cannot_write(logdir)
    if why:
        raise EvalError(f"--wandb logs into the run folder '{logdir}', which cannot be written: {why}")


def evaluate_with(env: Any, loaded: Loaded, logdir: Path, out: Path, seed: int, args) -> dict:
    config = loaded.config
    agent = build_agent(config, env, loaded)
    # 1. Policy rollouts.
    modes = policy_modes(args, config)
    episodes = run_policy(agent, env, modes, args)
    summary = {
        "checkpoint": str(loaded.path),
        "step": int(loaded.state["step"]),
        "env": config.env.id,
        "seed": seed,
        "policy": {mode: policy_summary(eps) for mode, eps in episodes.items()},
    }
    write_csv(out / "episodes.csv", [row for m, eps in episodes.items() for row in episode_rows(eps, m)])
    videos = write_videos(agent, config, episodes[modes[0]], args.videos, out)
    summary["videos"] = [str(p) for p in videos]
    # 2. World model against reality.
    every = [e for eps in episodes.values() for e in eps]
    batches, window = world_model_data(agent, config, every, args)
    wm = evaluate_world_model(agent, batches, window, args, out)
    wm["checkpoints"] = score_checkpoints(agent, env, loaded, batches, args)
    if len(wm["checkpoints"]) > 1:
        eval_plots.plot_rate_distortion(wm["checkpoints"], out / "plots" / "rate_distortion.png")
    write_json(out / "summary.json", summary)
    write_json(out / "world_model.json", wm)
    print_summary(summary, wm)
    if args.checkpoint == "all":
        print(checkpoint_table(wm["checkpoints"]))
    if args.wandb != "disabled":
        log_wandb(config, logdir, args.wandb, summary["step"], summary, wm, videos)
    print(f"results: {out}")
    return summary


def checkpoint_table(points: list[dict]) -> str:
    lines = [f"{'step':>10}  {'return':>16}  {'elbo':>9}  {'rate':>8}  {'distortion':>10}"]
    for p in points:
        r = p["return"]["return"]
        lines.append(
            f"{p['step']:>10}  {r['mean']:>8.2f} +- {r['std']:<5.2f}  {p['elbo']:>9.3f}  "
            f"{p['rate']:>8.3f}  {p['distortion']:>10.3f}"
        )
    return "\n".join(lines)


def run_compare(logdirs: list[str], out: str | None) -> str:
    """Print the table of the runs and write the return plot; returns the table."""
    try:
        records = compare.read_runs(logdirs)
    except FileNotFoundError as e:
        raise EvalError(str(e)) from None
    folder = prepare_out(Path(out or "compare"), bool(out))
    text = compare.table(records)
    print(text)
    plot = eval_plots.plot_compare(compare.groups(records), folder / "compare_returns.png")
    print(f"plot: {plot}")
    return text


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args, overrides = parse(argv)
    except ConfigError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    try:
        if args.compare:
            run_compare(args.compare, args.out)
        else:
            evaluate(args, overrides)
    except ConfigError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except EvalError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
