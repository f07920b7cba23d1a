"""Ours beside the official DreamerV3 (danijar/dreamerv3, JAX): learning curves on the same Gymnasium
task, and seconds per update at equal dims. The official code is a separate install (its source folder
and its virtualenv's Python, see bench/README.md); `bench/official_launch.py` runs it.

    python bench/reference.py learn --official-src /work/official \\
        --official-python /work/official-venv/bin/python --tasks cartpole pendulum --seeds 0 1 2 \\
        --steps 3000 --out /work/reference_runs
    python bench/reference.py learn ... --only official      # one side only (report as usual)
    python bench/reference.py report --tasks cartpole pendulum --seeds 0 1 2 --steps 3000 \\
        --out /work/reference_runs                            # CSV and PNG from the runs there
    python bench/reference.py time --official-src /work/official \\
        --official-python /work/official-venv/bin/python --sizes size1m size12m --obs vector image

`learn`: a task is one of our task presets (`cartpole`, `pendulum`). Ours runs `train.py --configs
<task> <--configs...>` (default `small`); the official side gets the same dims, batch, train ratio,
learning rate, warm-up, checkpoint interval, seed and budget, translated from our resolved config
through `KEY_PAIRS` (`passed`), on top of its `size1m` preset. Every run is pinned to `--core` with one
thread (`taskset`, OMP_NUM_THREADS=1, single-threaded XLA) and runs after the previous one. Runs go to
`OUT/<task>/<side>/seed<S>/` (output in `seed<S>.log` beside it). A run that finished is skipped (the
marker `reference_done.json` in its folder records its budget); an unfinished one runs again on its
folder, which resumes it: ours from its checkpoint (train.py), the official from `ckpt/` (its
`load_or_save`).

Outputs in OUT: `reference.csv` (side, task, seed, step, seconds, return), `reference.png` (return vs
env steps and vs wall-clock seconds, one column per task), `final.json` (per complete run, the mean
return over the last 20% of its budget; printed per task as our mean against the official's seed range),
`settings.json` (the official flags, the settings that still differ, and the differences no config key
expresses); the differences are printed.
Official episode returns come from `episodes.jsonl` (one per episode, with wall-clock seconds since the
launch). Ours from `metrics.jsonl`: `episode/return` is the mean return of the episodes that ended in a
log interval (10 s), and the seconds of a row are rebuilt from the log intervals (steps over
`fps/policy`), counted from the training loop's start.

`time`: seconds per update at equal dims (our `--sizes` preset against the official preset of the same
name, B16 x T64, one thread) on `--obs` observations (`vector`: CartPole's shapes; `image`: 64x64x3, 2
discrete actions), the sides alternating round by round in fresh processes: ours through
`bench/update.py` at `--precision`, theirs through `official_launch.py time` in each of
`--official-precisions`; the table compares the official's fastest precision with ours.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import statistics
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import NamedTuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from agent.precision import BF16_CPU_FLAGS, auto_precision, cpu_flags  # noqa: E402
from bench.learning import run_logged, write_csv  # noqa: E402
from configs.loader import load_config, parse_overrides  # noqa: E402
from evaluation.compare import RunRecord, aggregate  # noqa: E402
from run.plots import plt, read_metrics, save_figure  # noqa: E402

SIDES = ("ours", "official")
PRECISIONS = ("auto", "float32", "bfloat16")  # ours, in bench/update.py
OFFICIAL_PRECISIONS = ("float32", "bfloat16")  # the official's jax.compute_dtype
TASK_ENV_IDS = {"cartpole": "CartPole-v1", "pendulum": "Pendulum-v1"}  # our task presets
DONE_FILE = "reference_done.json"
CURVE_FIELDS = ("side", "task", "seed", "step", "seconds", "return")
FINAL_SHARE = 0.2  # returns are compared over this last share of each run's budget
SINGLE_THREAD_ENV = {
    "OMP_NUM_THREADS": "1",
    "OMP_WAIT_POLICY": "PASSIVE",
    "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
}
# Official flags that are not translations of our settings: CPU in fp32 (its bf16 default is about 2x
# slower on a CPU), no open-loop report (diagnostics only; ours has none), scores to jsonl.
OFFICIAL_CPU = [
    "--jax.platform", "cpu", "--jax.compute_dtype", "float32", "--jax.prealloc", "False",
    "--logger.outputs", "jsonl", "--run.report_every", "0",
]  # fmt: skip
OFFICIAL_BASE_PRESET = "size1m"  # the learning runs' dims all come from our config, over this preset


class KeyPair(NamedTuple):
    """One setting in both configs: our dotted key, the official one, whether the official side is given
    our value (`passed`), and how our value reads in the official's terms."""

    ours: str
    official: str
    passed: bool = False
    convert: object = None


def one_minus(x: float) -> float:
    """Our EMA decay as the official's EMA rate."""
    return 1.0 - x


WORLD_MODEL_LOSSES = ("rec", "rew", "con", "dyn", "rep")
ACTOR_CRITIC_LOSSES = ("policy", "value", "repval")


CODERS = ("encoder", "decoder")
CONV_KEYS = ("mults", "kernel", "strided")  # of the image encoder and decoder
# Settings with a counterpart in the official config. The official batch_length, like ours, is the
# number of trained steps per sequence: its replay samples batch_length + replay_context (1) steps and
# the first only seeds the carry, so our T is passed unchanged (T=32 trains 32 steps, samples 33). Both
# count train_ratio in trained steps (B x T per update).
KEY_PAIRS = (
    KeyPair("seed", "seed", True),
    KeyPair("run.steps", "run.steps", True),
    KeyPair("env.num_envs", "run.envs", True),
    KeyPair("run.train_ratio", "run.train_ratio", True),
    KeyPair("run.save_every", "run.save_every", True),
    KeyPair("replay.batch_size", "batch_size", True),
    KeyPair("replay.batch_length", "batch_length", True),
    KeyPair("world_model.deter", "agent.dyn.rssm.deter", True),
    KeyPair("world_model.hidden", "agent.dyn.rssm.hidden", True),
    KeyPair("world_model.stoch", "agent.dyn.rssm.stoch", True),
    KeyPair("world_model.classes", "agent.dyn.rssm.classes", True),
    KeyPair("world_model.encoder.units", "agent.enc.simple.units", True),
    KeyPair("world_model.encoder.layers", "agent.enc.simple.layers", True),
    KeyPair("world_model.decoder.units", "agent.dec.simple.units", True),
    KeyPair("world_model.decoder.layers", "agent.dec.simple.layers", True),
    KeyPair("world_model.encoder.depth", "agent.enc.simple.depth", True),
    KeyPair("world_model.decoder.depth", "agent.dec.simple.depth", True),
    KeyPair("world_model.reward_head.units", "agent.rewhead.units", True),
    KeyPair("world_model.cont_head.units", "agent.conhead.units", True),
    KeyPair("actor_critic.actor.units", "agent.policy.units", True),
    KeyPair("actor_critic.actor.layers", "agent.policy.layers", True),
    KeyPair("actor_critic.critic.units", "agent.value.units", True),
    KeyPair("actor_critic.critic.layers", "agent.value.layers", True),
    KeyPair("optim.lr", "agent.opt.lr", True),
    KeyPair("optim.warmup", "agent.opt.warmup", True),
    KeyPair("run.precision", "jax.compute_dtype"),
    KeyPair("world_model.blocks", "agent.dyn.rssm.blocks"),
    KeyPair("world_model.unimix", "agent.dyn.rssm.unimix"),
    KeyPair("world_model.free_nats", "agent.dyn.rssm.free_nats"),
    KeyPair("world_model.prior_layers", "agent.dyn.rssm.imglayers"),
    KeyPair("world_model.post_layers", "agent.dyn.rssm.obslayers"),
    KeyPair("world_model.norm", "agent.dyn.rssm.norm"),
    KeyPair("world_model.bins", "agent.rewhead.bins"),
    KeyPair("world_model.reward_head.layers", "agent.rewhead.layers"),
    KeyPair("world_model.reward_head.outscale", "agent.rewhead.outscale"),
    KeyPair("world_model.cont_head.layers", "agent.conhead.layers"),
    KeyPair("world_model.cont_head.outscale", "agent.conhead.outscale"),
    KeyPair("world_model.cont_discount", "agent.contdisc"),
    *(KeyPair(f"world_model.{n}.{k}", f"agent.{n[:3]}.simple.{k}") for n in CODERS for k in CONV_KEYS),
    KeyPair("world_model.decoder.bspace", "agent.dec.simple.bspace"),
    *(KeyPair(f"world_model.loss_scales.{k}", f"agent.loss_scales.{k}") for k in WORLD_MODEL_LOSSES),
    *(KeyPair(f"actor_critic.loss_scales.{k}", f"agent.loss_scales.{k}") for k in ACTOR_CRITIC_LOSSES),
    KeyPair("actor_critic.imag_horizon", "agent.imag_length"),
    KeyPair("actor_critic.discount_horizon", "agent.horizon"),
    KeyPair("actor_critic.return_lambda", "agent.imag_loss.lam"),
    KeyPair("actor_critic.entropy", "agent.imag_loss.actent"),
    KeyPair("actor_critic.slow_rate", "agent.slowvalue.rate"),
    KeyPair("actor_critic.slow_reg", "agent.imag_loss.slowreg"),
    KeyPair("actor_critic.repval_grad", "agent.repval_grad"),
    KeyPair("actor_critic.unimix", "agent.policy.unimix"),
    KeyPair("actor_critic.min_std", "agent.policy.minstd"),
    KeyPair("actor_critic.max_std", "agent.policy.maxstd"),
    KeyPair("actor_critic.actor.outscale", "agent.policy.outscale"),
    KeyPair("actor_critic.critic.outscale", "agent.value.outscale"),
    KeyPair("actor_critic.retnorm_low", "agent.retnorm.perclo"),
    KeyPair("actor_critic.retnorm_high", "agent.retnorm.perchi"),
    KeyPair("actor_critic.retnorm_limit", "agent.retnorm.limit"),
    KeyPair("actor_critic.retnorm_decay", "agent.retnorm.rate", convert=one_minus),
    KeyPair("optim.eps", "agent.opt.eps"),
    KeyPair("optim.beta1", "agent.opt.beta1"),
    KeyPair("optim.beta2", "agent.opt.beta2"),
    KeyPair("optim.agc", "agent.opt.agc"),
)
# Differences that no pair of config keys expresses: of the learning runs, and of one update.
PREFILL = (
    "first actions: ours takes run.prefill uniform random steps before its first update; the official acts "
    "with its (untrained) policy from the start and trains once its replay holds B x T windows"
)
REPLAY_CONTEXT = (
    "replay context: the official starts each sequence from the latent state its replay stored for the "
    "step before (replay_context 1); ours (replay.context 0) from the training carry (the previous "
    "batch's last posterior states)"
)
STRUCTURAL_DIFFERENCES = (
    "the official JAX profiler traces updates 100-120 into the run folder (no flag turns it off)",
    "returns logged: the official logs every episode; ours the mean of the episodes ending in each log "
    "interval (run.log_every seconds)",
    "wall-clock: the official's from its launch (imports and compilation included); ours from the "
    "training loop's start, rebuilt from the log intervals",
)
UPDATE_DIFFERENCES = (
    "timed: ours one update in bench/update.py; the official agent.train on batches already on the "
    "device, blocking on the new parameters",
)
RUN_LOOP_KEYS = ("seed", "run.steps", "env.num_envs", "run.save_every", "run.train_ratio")  # not in an update


def structural_differences(ours: dict) -> tuple[str, ...]:
    """The differences no paired key expresses, for our resolved config `ours` (flat)."""
    own = (PREFILL,) if ours["run.prefill"] > 0 else ()
    own += (REPLAY_CONTEXT,) if ours["replay.context"] == 0 else ()
    return own + STRUCTURAL_DIFFERENCES


def set_overrides(settings: list[str]) -> list[str]:
    """`--set` settings KEY=VALUE as command-line overrides: --KEY VALUE."""
    out = []
    for setting in settings:
        key, _, value = setting.partition("=")
        out += [f"--{key}", value]
    return out


def flatten(tree: dict, prefix: str = "") -> dict:
    """A nested dict as {dotted key: leaf}."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def our_config(presets: list[str], overrides: list[str]) -> dict:
    """Our resolved config, flat, from presets and command-line overrides (`--key value`)."""
    return flatten(asdict(load_config(presets, parse_overrides(overrides))))


def official_value(pair: KeyPair, ours: dict):
    """Our value of `pair` in the official's terms."""
    value = ours[pair.ours]
    return pair.convert(value) if pair.convert else value


def official_flags(ours: dict, task: str, logdir: Path) -> list[str]:
    """The official `main.py` flags of a run matching our resolved config `ours` on `task`."""
    flags = ["--configs", OFFICIAL_BASE_PRESET, *OFFICIAL_CPU, "--task", f"gymnasium_{TASK_ENV_IDS[task]}"]
    flags += ["--logdir", str(logdir)]
    for pair in KEY_PAIRS:
        if pair.passed:
            flags += [f"--{pair.official}", str(official_value(pair, ours))]
    return flags


def same(a, b) -> bool:
    """Equal settings: numbers within float rounding, anything else by its text."""
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-12)
    return str(a).lower() == str(b).lower()


def differences(ours: dict, official: dict, ignore: tuple[str, ...] = ()) -> list[dict]:
    """The paired settings whose values differ, less our keys in `ignore`: {ours, official, our_value,
    official_value}."""
    out = []
    for pair in (p for p in KEY_PAIRS if p.ours not in ignore):
        mine, theirs = official_value(pair, ours), official.get(pair.official)
        if not same(mine, theirs):
            out.append(dict(ours=pair.ours, official=pair.official, our_value=mine, official_value=theirs))
    return out


def format_differences(diffs: list[dict], structural: tuple[str, ...] = STRUCTURAL_DIFFERENCES) -> str:
    """The differences as text lines, the `structural` ones last."""
    lines = [f"  {d['ours']}={d['our_value']}  vs  {d['official']}={d['official_value']}" for d in diffs]
    lines = ["settings that differ (ours vs official):", *(lines or ["  none"])]
    lines.append("differences no config key expresses:")
    return "\n".join(lines + [f"  {s}" for s in structural])


class Run(NamedTuple):
    """One learning run: side, task, seed, its folder and command line."""

    side: str
    task: str
    seed: int
    logdir: Path
    command: list[str]


def run_dir(out: Path, side: str, task: str, seed: int) -> Path:
    """The folder of one run under `out`."""
    return out / task / side / f"seed{seed}"


def is_complete(logdir: Path, steps: int) -> bool:
    """Whether the run in `logdir` finished a budget of at least `steps`."""
    done = logdir / DONE_FILE
    return done.exists() and json.loads(done.read_text()).get("steps", -1) >= steps


def mark_complete(logdir: Path, steps: int, seconds: float) -> None:
    """Record in `logdir` that its run finished a budget of `steps` in `seconds`."""
    logdir.mkdir(parents=True, exist_ok=True)
    (logdir / DONE_FILE).write_text(json.dumps({"steps": steps, "seconds": seconds}) + "\n")


def pinned(core: int, command: list[str]) -> list[str]:
    """`command` run on CPU core `core` only."""
    return ["taskset", "-c", str(core), *command]


def run_pair(args: argparse.Namespace, out: Path, task: str, seed: int) -> list[Run]:
    """Our run and the official one of (task, seed), pinned to `args.core`."""
    presets = [task, *args.configs]
    overrides = ["--seed", str(seed), "--run.steps", str(args.steps), *set_overrides(args.set)]
    ours, official = run_dir(out, "ours", task, seed), run_dir(out, "official", task, seed)
    our_cmd = [sys.executable, str(ROOT / "train.py"), "--configs", *presets, *overrides]
    our_cmd += ["--logdir", str(ours), "--logger.wandb.mode", "disabled", "--run.threads", "1"]
    flags = official_flags(our_config(presets, overrides), task, official)
    return [
        Run("ours", task, seed, ours, pinned(args.core, our_cmd)),
        Run("official", task, seed, official, pinned(args.core, launch(args, "train", [], flags))),
    ]


def make_runs(args: argparse.Namespace, out: Path) -> list[Run]:
    """The runs of `learn`, task-major then seed, ours before the official (one side with `--only`)."""
    runs = [run for task in args.tasks for seed in args.seeds for run in run_pair(args, out, task, seed)]
    return [run for run in runs if args.only in (None, run.side)]


def execute(run: Run, steps: int) -> int:
    """Run `run` unless it is complete; returns its exit status (0 when skipped)."""
    label = f"{run.side} {run.task} seed {run.seed}"
    if is_complete(run.logdir, steps):
        print(f"{label}: done already ({run.logdir})", flush=True)
        return 0
    env = {**os.environ, **SINGLE_THREAD_ENV}
    status, seconds = run_logged(label, run.command, run.logdir.with_suffix(".log"), env)
    if status == 0:
        mark_complete(run.logdir, steps, seconds)
    return status


def official_curve(logdir: Path) -> list[dict]:
    """(step, seconds, return) of every episode of an official run."""
    path = logdir / "episodes.jsonl"
    rows = read_metrics(path) if path.exists() else []
    return [{"step": r["step"], "seconds": r["time"], "return": r["score"]} for r in rows]


def our_curve(logdir: Path) -> list[dict]:
    """(step, seconds, return) of every log row of ours with an episode return; the seconds add up the
    log intervals (steps in the interval over `fps/policy`)."""
    path = logdir / "metrics.jsonl"
    rows, out, seconds, last_step = (read_metrics(path) if path.exists() else []), [], 0.0, 0
    for row in rows:
        if row.get("fps/policy", 0) > 0:
            seconds += (row["step"] - last_step) / row["fps/policy"]
            last_step = row["step"]
        if math.isfinite(row.get("episode/return", math.nan)):
            out.append({"step": row["step"], "seconds": seconds, "return": row["episode/return"]})
    return out


def collect_curves(out: Path, tasks: list[str], seeds: list[int]) -> list[dict]:
    """The curve rows of every run folder under `out`, side-major."""
    read = {"ours": our_curve, "official": official_curve}
    return [
        {"side": side, "task": task, "seed": seed, **row}
        for side in SIDES
        for task in tasks
        for seed in seeds
        for row in read[side](run_dir(out, side, task, seed))
    ]


def plot_curves(curves: list[dict], tasks: list[str], path: Path) -> Path:
    """Return vs env steps (top) and vs wall-clock seconds (bottom), one column per task; each side
    one colour, seeds thin, their mean thick."""
    fig, axes = plt.subplots(2, len(tasks), figsize=(5 * len(tasks), 7), squeeze=False)
    for column, task in enumerate(tasks):
        for ax, x_key in zip(axes[:, column], ("step", "seconds"), strict=True):
            for side, color in zip(SIDES, ("tab:blue", "tab:orange"), strict=True):
                rows = [r for r in curves if r["task"] == task and r["side"] == side]
                plot_side(ax, rows, x_key, side, color)
            ax.set(xlabel="env steps" if x_key == "step" else "wall-clock seconds", ylabel="episode return")
            ax.set_title(task)
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_side(ax, rows: list[dict], x_key: str, side: str, color: str) -> None:
    """One side's curves of one task on `ax`: return vs `x_key`, each seed thin, their mean thick."""
    records = []
    for seed in dict.fromkeys(r["seed"] for r in rows):
        x, y = (np.array([r[k] for r in rows if r["seed"] == seed], float) for k in (x_key, "return"))
        ax.plot(x, y, lw=0.7, alpha=0.4, color=color)
        records.append(RunRecord(side, seed, side, x, y, "return", {}))
    grid, mean, _ = aggregate(records)
    if len(grid):
        ax.plot(grid, mean, lw=2.2, color=color, label=f"{side} (mean of {len(records)})")


def final_returns(out: Path, curves: list[dict], tasks: list[str], seeds: list[int]) -> list[dict]:
    """Per complete run: its mean return over the episodes logged in the last `FINAL_SHARE` of its
    budget (ours logs interval means, which are averaged as they are)."""
    finals = []
    for side, task, seed in itertools.product(SIDES, tasks, seeds):
        done = run_dir(out, side, task, seed) / DONE_FILE
        if not done.exists():
            continue
        budget = json.loads(done.read_text())["steps"]
        late = (r for r in curves if r["step"] > (1 - FINAL_SHARE) * budget)
        rets = [r["return"] for r in late if (r["side"], r["task"], r["seed"]) == (side, task, seed)]
        if rets:
            finals.append(dict(side=side, task=task, seed=seed, budget=budget, final=float(np.mean(rets))))
    return finals


def verdicts(finals: list[dict], tasks: list[str]) -> list[str]:
    """Per task: our mean over seeds of the final returns against the official's seed range."""
    lines = []
    for task in tasks:
        per_side = {side: [f for f in finals if f["task"] == task and f["side"] == side] for side in SIDES}
        if not all(per_side.values()):
            continue
        ours = float(np.mean([f["final"] for f in per_side["ours"]]))
        theirs = [f["final"] for f in per_side["official"]]
        lo, hi = min(theirs), max(theirs)
        verdict = "above the official's range" if ours > hi else "within it" if ours >= lo else "below it"
        seeds = {side: ", ".join(f"{f['final']:.1f}" for f in rows) for side, rows in per_side.items()}
        lines.append(
            f"{task}: last {FINAL_SHARE:.0%} of the budget, ours {ours:.1f} (seeds {seeds['ours']}), "
            f"official {lo:.1f} to {hi:.1f} (seeds {seeds['official']}): {verdict}"
        )
    return lines


def report(args: argparse.Namespace, out: Path, official: dict | None) -> None:
    """Write reference.csv, reference.png, final.json and settings.json; print the settings that differ
    and, per task, our final returns against the official's seed range."""
    ours = our_config(
        [args.tasks[0], *args.configs], ["--run.steps", str(args.steps), *set_overrides(args.set)]
    )
    diffs = differences(ours, official) if official is not None else []
    print(format_differences(diffs, structural_differences(ours)))
    settings = {
        "our_presets": args.configs,
        "official_flags": official_flags(ours, args.tasks[0], Path("<logdir>")),
        "differences": diffs if official is not None else "official config not read (no --official-python)",
        "structural_differences": list(structural_differences(ours)),
    }
    (out / "settings.json").write_text(json.dumps(settings, indent=2, default=str) + "\n")
    curves = collect_curves(out, args.tasks, args.seeds)
    write_csv(out / "reference.csv", CURVE_FIELDS, curves)
    plot_curves(curves, args.tasks, out / "reference.png")
    finals = final_returns(out, curves, args.tasks, args.seeds)
    (out / "final.json").write_text(json.dumps(finals, indent=2) + "\n")
    print("\n".join(verdicts(finals, args.tasks)))
    names = ("reference.csv", "reference.png", "final.json", "settings.json")
    print("written: " + ", ".join(str(out / name) for name in names))


def read_official_config(args: argparse.Namespace) -> dict | None:
    """The official config resolved from the flags of the first task's first run (None without
    `--official-python`)."""
    if not args.official_python:
        return None
    presets = [args.tasks[0], *args.configs]
    ours = our_config(presets, ["--seed", str(args.seeds[0]), "--run.steps", str(args.steps)])
    return json_line(launch(args, "config", [], official_flags(ours, args.tasks[0], Path("/tmp/unused"))))


TIME_ENV_IDS = {"vector": TASK_ENV_IDS["cartpole"], "image": "ImageShapes-v0"}  # bench/update.py's shapes
TIME_BATCH = ["--replay.batch_size", "16", "--replay.batch_length", "64"]
TIME_IGNORED = (*RUN_LOOP_KEYS, "run.precision")  # the timing table names each side's precision


def official_time_flags(size: str, obs: str, precision: str) -> list[str]:
    """The official flags of the timing at preset `size` on `obs` observations in `precision`: its preset
    of that name on our TIME_BATCH."""
    ours = our_config([size], TIME_BATCH)
    cpu = list(OFFICIAL_CPU)
    cpu[cpu.index("--jax.compute_dtype") + 1] = precision
    flags = ["--configs", size, *cpu, "--task", f"gymnasium_{TIME_ENV_IDS[obs]}"]
    B, T = ours["replay.batch_size"], ours["replay.batch_length"]
    return [*flags, "--batch_size", str(B), "--batch_length", str(T), "--logdir", "/tmp/reference_time"]


def launch(args: argparse.Namespace, mode: str, options: list[str], flags: list[str]) -> list[str]:
    """The command line of `official_launch.py <mode>` with the official `flags`."""
    script = str(ROOT / "bench" / "official_launch.py")
    return [args.official_python, script, mode, "--official-src", args.official_src, *options, "--", *flags]


def json_line(command: list[str]) -> dict:
    """The first JSON object a single-threaded subprocess prints."""
    env = {**os.environ, **SINGLE_THREAD_ENV}
    text = subprocess.run(command, capture_output=True, text=True, check=True, env=env).stdout
    return json.loads(next(line for line in text.splitlines() if line.startswith("{")))


def time_round(size: str, obs: str, args: argparse.Namespace) -> dict[str, float]:
    """Seconds per update of ours (`ours`) and of the official in each of its precisions (`official
    <precision>`) at preset `size` on `obs` observations, each in a fresh pinned process."""
    counts = ["--repeats", str(args.repeats), "--warmup", str(args.warmup)]
    ours = [sys.executable, str(ROOT / "bench" / "update.py"), "--presets", size, "--obs", obs]
    ours += ["--precision", args.precision, "--threads", "1", *counts, "--json", "--no-flops"]
    seconds = {"ours": json_line(pinned(args.core, ours))["total"] / 1000}
    for precision in args.official_precisions:
        theirs = launch(args, "time", counts, official_time_flags(size, obs, precision))
        seconds[f"official {precision}"] = json_line(pinned(args.core, theirs))["median_s"]
    return seconds


def machine_line(precision: str) -> str:
    """The CPU's bf16 facts, and what our `precision` computes in on it."""
    flags = " ".join(f for f in BF16_CPU_FLAGS if f in cpu_flags()) or "none"
    ours = auto_precision(torch.device("cpu")).line() if precision == "auto" else f"run.precision {precision}"
    capability = torch.backends.cpu.get_cpu_capability()
    return f"CPU capability {capability}, native bf16 flags: {flags}; ours: {ours}"


def time_main(args: argparse.Namespace) -> None:
    """Print the machine, the settings that differ per size, each round's seconds, then per (size,
    observation) each side's median over the rounds of its median seconds per update, and the official's
    fastest precision over ours."""
    print(machine_line(args.precision))
    for size in args.sizes:
        official = json_line(launch(args, "config", [], official_time_flags(size, "vector", "float32")))
        diffs = differences(our_config([size], TIME_BATCH), official, ignore=TIME_IGNORED)
        print(f"{size}: " + format_differences(diffs, UPDATE_DIFFERENCES))
    cases = [(size, obs) for size in args.sizes for obs in args.obs]
    results = {case: {} for case in cases}
    for round_ in range(args.rounds):
        for case in cases:
            for side, seconds in time_round(*case, args).items():
                results[case].setdefault(side, []).append(seconds)
            figures = ", ".join(f"{side} {r[-1]:.3f} s" for side, r in results[case].items())
            print(f"round {round_ + 1} {case[0]} {case[1]}: {figures}", flush=True)
    sides = ["ours", *(f"official {p}" for p in args.official_precisions)]
    print(f"seconds per update, B16 x T64, 1 thread, median of {args.rounds} rounds")
    print(f"{'size':9s} {'obs':7s}" + "".join(f"{side:>19s}" for side in sides) + "  fastest official/ours")
    for (size, obs), r in results.items():
        medians = {side: statistics.median(r[side]) for side in sides}
        best = min(medians[side] for side in sides[1:])
        row = "".join(f"{medians[side]:19.3f}" for side in sides)
        print(f"{size:9s} {obs:7s}{row}  {best / medians['ours']:21.2f}")


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command and its options; `learn` and `time` need the official Python."""
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("command", choices=["learn", "report", "time"])
    parser.add_argument("--official-src", default="/work/official", help="dreamerv3/ and embodied/ inside")
    parser.add_argument("--official-python", default=None, help="the official virtualenv's python")
    parser.add_argument("--core", type=int, default=1, help="CPU core every run is pinned to")
    parser.add_argument("--tasks", nargs="+", default=["cartpole"], choices=sorted(TASK_ENV_IDS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--steps", type=int, default=3000, help="env steps per run")
    parser.add_argument("--configs", nargs="*", default=["small"], help="our presets after the task's")
    parser.add_argument("--only", choices=SIDES, default=None, help="run one side only")
    parser.add_argument("--set", nargs="*", default=[], help="our overrides KEY=VALUE (run.prefill=0)")
    parser.add_argument("--out", default="bench/out/reference")
    parser.add_argument("--sizes", nargs="+", default=["size1m", "size12m"], help="presets to time")
    parser.add_argument("--obs", nargs="+", default=["vector"], choices=sorted(TIME_ENV_IDS), help="(time)")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS, help="our run.precision (time)")
    parser.add_argument(
        "--official-precisions",
        nargs="+",
        default=list(OFFICIAL_PRECISIONS),
        choices=OFFICIAL_PRECISIONS,
        help="the official's jax.compute_dtype values to time; the table compares its fastest (time)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="timing rounds, sides alternating")
    parser.add_argument("--repeats", type=int, default=5, help="timed updates per process")
    parser.add_argument("--warmup", type=int, default=2, help="untimed updates per process")
    args = parser.parse_args(argv)
    if args.command in ("learn", "time") and not args.official_python:
        parser.error(f"{args.command} needs --official-python")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the command; exit status 1 when a learning run failed (the report still covers the others)."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "time":
        time_main(args)
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failed = []
    if args.command == "learn":
        failed = [run for run in make_runs(args, out) if execute(run, args.steps) != 0]
    report(args, out, read_official_config(args))
    for run in failed:
        log = run.logdir.with_suffix(".log")
        print(f"failed: {run.side} {run.task} seed {run.seed}, see {log}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
