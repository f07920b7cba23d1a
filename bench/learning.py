"""Learning benchmark: train a task list x seeds for a step budget, then write the learning curves
(`curves.csv`, `curves.png`) and a table of final returns beside reference numbers (`summary.md`,
`summary.csv`).

    python bench/learning.py --tasks cartpole pendulum --seeds 0 1 2 --steps 3000 --configs small \\
        --out bench/out/learning --reference bench/reference_returns.yaml
    python bench/learning.py --tasks dmc_proprio:dmc_walker_walk --seeds 0 1 --steps 250000 \\
        --configs size12m --out bench/out/dmc --parallel 2 -- --run.train_ratio 256
    python bench/learning.py --tasks cartpole --seeds 0 --steps 150 --configs debug --out /tmp/lb \\
        -- --run.train_ratio 16

A task is a preset name (`cartpole`) or `PRESET:ENV_ID` (`dmc_proprio:dmc_walker_walk`: the preset with
`--env.id dmc_walker_walk`), named by the env id in the outputs. Each (task, seed) is one `train.py`
run in a subprocess with logdir `OUT/<task>/seed<S>` and its output in `OUT/<task>/seed<S>.log`;
the presets are `--configs` followed by the task's preset; arguments after `--` are passed on to
every run (they come last, so `-- --run.threads 4` overrides the default of one thread per run).
A run whose metrics.jsonl reached the step budget is not run again; an unfinished one is resumed
(the same command on the same logdir), so an interrupted benchmark continues where it stopped.

The final return of a run is the mean of its last 5 logged `episode/return` values (each the mean
of the episodes that ended in one log interval); a task's is the mean and sample standard deviation
of that over its seeds, and its ratio is the mean over the reference return.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from evaluation.compare import RunRecord, aggregate  # noqa: E402
from run.plots import plt, read_metrics, save_figure  # noqa: E402

RETURN_KEY = "episode/return"
FINAL_WINDOW = 5  # logged returns averaged into a run's final return
CURVE_FIELDS = ("task", "seed", "step", "frames", "return")
OUTPUTS = ("curves.csv", "curves.png", "summary.csv", "summary.md")
SUMMARY_FIELDS = ("task", "seeds", "steps", "final_mean", "final_std", "ref_return", "ref_steps", "ratio")


class Task(NamedTuple):
    """A task of the benchmark: its name in the outputs, its preset and the env id it sets (or None)."""

    name: str
    preset: str
    env_id: str | None


class Job(NamedTuple):
    """One training run: its task, seed, logdir and `train.py` command line."""

    task: Task
    seed: int
    logdir: Path
    command: list[str]


def parse_task(spec: str) -> Task:
    """`cartpole` -> preset cartpole; `dmc_proprio:dmc_walker_walk` -> preset dmc_proprio, that env id."""
    preset, _, env_id = spec.partition(":")
    if not preset or (spec.endswith(":") and not env_id):
        raise ValueError(f"bad task '{spec}': expected PRESET or PRESET:ENV_ID")
    return Task(env_id or preset, preset, env_id or None)


def train_command(task: Task, seed: int, logdir: Path, args: argparse.Namespace) -> list[str]:
    """The `train.py` command line of one run; the extra overrides come last so they win."""
    command = [sys.executable, str(ROOT / "train.py"), "--configs", *args.configs, task.preset]
    command += ["--seed", str(seed), "--run.steps", str(args.steps), "--logdir", str(logdir)]
    command += ["--logger.wandb.mode", "disabled", "--run.threads", "1"]
    if task.env_id:
        command += ["--env.id", task.env_id]
    return command + list(args.overrides)


def make_jobs(tasks: list[Task], seeds: list[int], args: argparse.Namespace) -> list[Job]:
    """The runs of the benchmark, task-major."""
    jobs = []
    for task in tasks:
        for seed in seeds:
            logdir = Path(args.out) / task.name / f"seed{seed}"
            jobs.append(Job(task, seed, logdir, train_command(task, seed, logdir, args)))
    return jobs


def last_step(logdir: Path) -> int:
    """The largest step logged in the run's metrics.jsonl (0 when there is none)."""
    path = logdir / "metrics.jsonl"
    rows = read_metrics(path) if path.exists() else []
    return max((int(r.get("step", 0)) for r in rows), default=0)


def child_env() -> dict[str, str]:
    """The environment of a training subprocess: idle OpenMP threads sleep instead of spinning."""
    return {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}


def run_job(job: Job, steps: int) -> int:
    """Run one job unless it already reached `steps`; its output goes to `<logdir>.log`. Returns its
    exit status (0 when skipped)."""
    label = f"{job.task.name} seed {job.seed}"
    if last_step(job.logdir) >= steps:
        print(f"{label}: done already ({job.logdir})", flush=True)
        return 0
    status, _ = run_logged(label, job.command, job.logdir.with_suffix(".log"), child_env())
    return status


def run_logged(label: str, command: list[str], log: Path, env: dict[str, str]) -> tuple[int, float]:
    """Run `command` from the repository root with its output appended to `log`, saying so; returns its
    exit status and seconds."""
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"{label}: running, output in {log}", flush=True)
    start = time.monotonic()
    with log.open("a") as out:
        status = subprocess.call(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    seconds = time.monotonic() - start
    print(f"{label}: exit status {status} after {seconds:.0f} s", flush=True)
    return status, seconds


def run_jobs(jobs: list[Job], steps: int, parallel: int) -> list[Job]:
    """Run the jobs, `parallel` at a time; returns the jobs that failed."""
    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        statuses = list(pool.map(lambda job: run_job(job, steps), jobs))
    return [job for job, status in zip(jobs, statuses, strict=True) if status != 0]


def episode_rows(metrics: Path) -> list[dict]:
    """The (step, frames, return) rows of a metrics.jsonl that logged an episode return; unparsable
    lines are skipped, as are rows superseded by a resumed run (see `run.plots.read_metrics`)."""
    if not metrics.exists():
        return []
    rows = [r for r in read_metrics(metrics) if RETURN_KEY in r and math.isfinite(r[RETURN_KEY])]
    return [
        {"step": int(r["step"]), "frames": int(r.get("frames", r["step"])), "return": r[RETURN_KEY]}
        for r in rows
    ]


def collect_curves(jobs: list[Job]) -> list[dict]:
    """The curve rows (task, seed, step, frames, return) of every job, in job order."""
    return [
        {"task": job.task.name, "seed": job.seed, **row}
        for job in jobs
        for row in episode_rows(job.logdir / "metrics.jsonl")
    ]


def write_csv(path: Path, fields: tuple[str, ...], rows: list[dict]) -> Path:
    """Write `rows` (dicts with `fields`) as a CSV file with a header."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def by_seed(curves: list[dict], task: str) -> dict[int, list[dict]]:
    """The task's curve rows grouped by seed, in order of appearance."""
    out: dict[int, list[dict]] = {}
    for row in curves:
        if row["task"] == task:
            out.setdefault(row["seed"], []).append(row)
    return out


def final_return(rows: list[dict], window: int = FINAL_WINDOW) -> float:
    """The mean of the last `window` logged returns of a run (nan without any)."""
    returns = [r["return"] for r in rows[-window:]]
    return float(np.mean(returns)) if returns else math.nan


def summarize(curves: list[dict], reached: dict[str, int], reference: dict) -> list[dict]:
    """One summary row per task of `reached` (task -> the fewest steps any of its runs reached): seeds
    with returns, final return mean and sample std over seeds (nan with one seed), the reference and
    the ratio to it."""
    table = []
    for task, steps in reached.items():
        seeds = by_seed(curves, task)
        finals = np.array([final_return(rows) for rows in seeds.values()])
        ref = reference.get(task) or {}
        mean = float(finals.mean()) if len(finals) else math.nan
        std = float(finals.std(ddof=1)) if len(finals) > 1 else math.nan
        ref_return = float(ref["return"]) if ref.get("return") is not None else math.nan
        ratio = mean / ref_return if ref_return else math.nan
        row = dict(task=task, seeds=len(finals), steps=steps, final_mean=mean, final_std=std)
        table.append(row | dict(ref_return=ref_return, ref_steps=ref.get("steps"), ratio=ratio))
    return table


def fmt(value: float | None, digits: int = 1) -> str:
    """A number for the table; '-' for a missing or nan value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def format_table(summary: list[dict]) -> str:
    """The summary as a Markdown table."""
    header = ["task", "seeds", "steps", "final return", "reference", "ref steps", "ratio"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in summary:
        final = fmt(r["final_mean"]) + (f" ± {fmt(r['final_std'])}" if not math.isnan(r["final_std"]) else "")
        ref_steps = "-" if r["ref_steps"] is None else str(r["ref_steps"])
        cells = [r["task"], str(r["seeds"]), str(r["steps"]), final, fmt(r["ref_return"]), ref_steps]
        lines.append("| " + " | ".join([*cells, fmt(r["ratio"], 2)]) + " |")
    return "\n".join(lines)


def plot_curves(curves: list[dict], tasks: list[str], path: Path) -> Path:
    """One subplot per task: return vs env frames, each seed thin, the mean over seeds thick."""
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.8), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        records = []
        for seed, rows in by_seed(curves, task).items():
            frames, returns = (np.array([r[k] for r in rows], np.float64) for k in ("frames", "return"))
            ax.plot(frames, returns, lw=0.8, alpha=0.5, label=f"seed {seed}")
            records.append(RunRecord(task, seed, task, frames, returns, RETURN_KEY, {}))
        grid, mean, _ = aggregate(records)
        if len(grid) > 1:
            ax.plot(grid, mean, lw=2.5, color="black", label=f"mean of {len(records)}")
        ax.set(xlabel="env frames", ylabel="episode return", title=task)
        ax.grid(alpha=0.3)
        if records:
            ax.legend(fontsize=8)
    return save_figure(fig, path)


def load_reference(path: str | None) -> dict:
    """task -> {return, steps, source} from a YAML file ({} without one)."""
    if not path:
        return {}
    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of task -> {{return, steps, source}}")
    return data


def report(jobs: list[Job], tasks: list[str], reference: dict, out: Path) -> str:
    """Write curves.csv, curves.png, summary.csv and summary.md; returns the table."""
    curves = collect_curves(jobs)
    write_csv(out / "curves.csv", CURVE_FIELDS, curves)
    plot_curves(curves, tasks, out / "curves.png")
    reached = {task: min(last_step(j.logdir) for j in jobs if j.task.name == task) for task in tasks}
    summary = summarize(curves, reached, reference)
    write_csv(out / "summary.csv", SUMMARY_FIELDS, summary)
    table = format_table(summary)
    sources = [f"- {t}: {reference[t].get('source', '?')}" for t in tasks if reference.get(t)]
    (out / "summary.md").write_text(
        table + ("\n\nReferences:\n" + "\n".join(sources) if sources else "") + "\n"
    )
    return table


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The bench options; everything after `--` is kept as `overrides` for train.py."""
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", nargs="+", required=True, help="presets or PRESET:ENV_ID")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--steps", type=int, required=True, help="policy steps per run")
    parser.add_argument("--configs", nargs="*", default=[], help="presets before the task's preset")
    parser.add_argument("--out", default="bench/out/learning")
    parser.add_argument("--reference", default=None, help="YAML: task -> {return, steps, source}")
    parser.add_argument("--parallel", type=int, default=1, help="runs at once")
    args = parser.parse_args(argv[:split])
    args.overrides = argv[split + 1 :]
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; exit status 1 when a run failed (the table still covers the others)."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        tasks = [parse_task(spec) for spec in args.tasks]
        reference = load_reference(args.reference)
    except (ValueError, OSError) as e:
        print(f"learning.py: error: {e}", file=sys.stderr)
        return 2
    jobs = make_jobs(tasks, args.seeds, args)
    failed = run_jobs(jobs, args.steps, args.parallel)
    out = Path(args.out)
    print(report(jobs, [t.name for t in tasks], reference, out))
    print(f"\nwritten: {', '.join(str(out / name) for name in OUTPUTS)}")
    for job in failed:
        print(
            f"failed: {job.task.name} seed {job.seed}, see {job.logdir.with_suffix('.log')}", file=sys.stderr
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
