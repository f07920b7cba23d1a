"""bench/learning.py: metrics parsing, final returns, the summary table, skipping finished runs, and
one tiny end-to-end benchmark."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_learning", ROOT / "bench" / "learning.py")
learning = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(learning)

REFERENCE = {"cartpole": {"return": 500, "steps": None, "source": "CartPole-v1 maximum (solved)"}}


def write_metrics(path: Path, returns: list[float | None], truncated: bool = True) -> Path:
    """A metrics.jsonl with one row per 10 steps; None rows have no episode return; a cut last line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, ret in enumerate(returns, start=1):
        row = {"step": 10 * i, "frames": 20 * i, "train/loss": 1.0}
        if ret is not None:
            row["episode/return"] = ret
        lines.append(json.dumps(row))
    if truncated:
        lines.append('{"step": 999, "frames": 1998, "episode/ret')
    path.write_text("\n".join(lines))
    return path


def test_episode_rows_skip_rows_without_returns_and_a_truncated_line(tmp_path):
    path = write_metrics(tmp_path / "metrics.jsonl", [5.0, None, 7.5])
    assert learning.episode_rows(path) == [
        {"step": 10, "frames": 20, "return": 5.0},
        {"step": 30, "frames": 60, "return": 7.5},
    ]
    assert learning.last_step(tmp_path) == 30
    assert learning.episode_rows(tmp_path / "missing.jsonl") == []


def test_final_return_is_the_mean_of_the_last_five():
    rows = [{"return": r} for r in [1000.0, 1000.0, 1.0, 2.0, 3.0, 4.0, 5.0]]
    assert learning.final_return(rows) == 3.0
    assert math.isnan(learning.final_return([]))


def test_summary_and_table_against_exact_numbers():
    curves = [{"task": "cartpole", "seed": 0, "return": r} for r in [0.0, 100.0, 100.0, 100.0, 100.0, 100.0]]
    curves += [{"task": "cartpole", "seed": 1, "return": 200.0}]
    curves += [{"task": "pendulum", "seed": 0, "return": -300.0}]
    summary = learning.summarize(curves, {"cartpole": 3000, "pendulum": 2500}, REFERENCE)
    cart, pend = summary
    assert (cart["seeds"], cart["steps"], cart["final_mean"]) == (2, 3000, 150.0)
    assert cart["final_std"] == pytest.approx(math.sqrt(5000.0))  # sample std of 100 and 200
    assert cart["ratio"] == pytest.approx(0.3)
    assert math.isnan(pend["final_std"]) and math.isnan(pend["ratio"]) and pend["ref_steps"] is None
    assert learning.format_table(summary).splitlines() == [
        "| task | seeds | steps | final return | reference | ref steps | ratio |",
        "|---|---|---|---|---|---|---|",
        "| cartpole | 2 | 3000 | 150.0 ± 70.7 | 500.0 | - | 0.30 |",
        "| pendulum | 1 | 2500 | -300.0 | - | - | - |",
    ]


def test_task_specs_and_commands(tmp_path):
    assert learning.parse_task("cartpole") == learning.Task("cartpole", "cartpole", None)
    assert learning.parse_task("dmc_proprio:dmc_walker_walk") == learning.Task(
        "dmc_walker_walk", "dmc_proprio", "dmc_walker_walk"
    )
    for bad in ("dmc_proprio:", ":dmc_walker_walk"):
        with pytest.raises(ValueError):
            learning.parse_task(bad)
    argv = ["--tasks", "x", "--steps", "50", "--configs", "small", "--", "--run.threads", "2"]
    args = learning.parse_args(argv)
    assert args.overrides == ["--run.threads", "2"]
    task = learning.parse_task("dmc_proprio:dmc_cheetah_run")
    command = learning.train_command(task, 3, tmp_path / "run", args)
    assert command[2:5] == ["--configs", "small", "dmc_proprio"]
    assert command[-4:] == ["--env.id", "dmc_cheetah_run", "--run.threads", "2"]
    assert "--seed" in command and command[command.index("--seed") + 1] == "3"


def test_finished_runs_are_skipped_and_unfinished_ones_run(tmp_path):
    failing = [sys.executable, "-c", "raise SystemExit(3)"]
    task = learning.Task("t", "t", None)
    done = learning.Job(task, 0, tmp_path / "t" / "seed0", failing)
    write_metrics(done.logdir / "metrics.jsonl", [1.0, 2.0])
    unfinished = learning.Job(task, 1, tmp_path / "t" / "seed1", failing)
    write_metrics(unfinished.logdir / "metrics.jsonl", [1.0])
    assert learning.run_jobs([done, unfinished], steps=20, parallel=2) == [unfinished]
    assert (tmp_path / "t" / "seed1.log").exists() and not (tmp_path / "t" / "seed0.log").exists()


def test_tiny_benchmark_end_to_end(tmp_path, capsys):
    out = tmp_path / "bench"
    argv = ["--tasks", "cartpole", "--seeds", "0", "--steps", "100", "--configs", "debug", "--out", str(out)]
    argv += ["--reference", str(ROOT / "bench" / "reference_returns.yaml"), "--", "--run.train_ratio", "8"]
    assert learning.main(argv) == 0
    for name in learning.OUTPUTS:
        assert (out / name).stat().st_size > 0
    assert learning.last_step(out / "cartpole" / "seed0") == 100
    assert "| cartpole | 1 | 100 |" in capsys.readouterr().out
    assert "CartPole-v1 maximum" in (out / "summary.md").read_text()
