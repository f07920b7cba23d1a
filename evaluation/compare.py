"""Compare run folders: a table side by side and return curves with seeds aggregated.

A run's curve is `eval/return` against env frames from its `metrics.jsonl` (the training episodes'
`episode/return` when it has no evaluation). Runs whose configs differ only in `seed` and `logdir`
(and the logger settings) form one group; a group's curve is the mean over its seeds, with the
standard deviation, on the frames that every one of its runs reached. The final return of a run is its
`eval/summary.json` mean when `evaluate.py` was run on it, else the last logged return.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import yaml

from run.plots import read_metrics, series

CURVE_KEYS = ("eval/return", "episode/return")
# Config keys that do not make two runs different experiments.
IGNORED_KEYS = ("seed", "logdir", "logger")
# Points of a group's curve: the frames grid the seeds are interpolated onto.
GRID_POINTS = 100


class RunRecord(NamedTuple):
    """What one run folder tells: curve (frames, returns) of `curve_key`, the final return and its source."""

    name: str
    seed: int
    group: str
    frames: np.ndarray
    returns: np.ndarray
    curve_key: str
    final: dict[str, Any]


def experiment_key(config: dict) -> str:
    """The config without seed, logdir and logger, as canonical text: equal for seeds of one experiment."""
    rest = {k: v for k, v in config.items() if k not in IGNORED_KEYS}
    return yaml.safe_dump(rest, sort_keys=True)


def read_run(logdir: str | Path) -> tuple[dict, RunRecord]:
    """The config (as a dict) and the record of a run folder; FileNotFoundError names what is missing."""
    logdir = Path(logdir)
    for needed in ("config.yaml", "metrics.jsonl"):
        if not (logdir / needed).exists():
            raise FileNotFoundError(f"{logdir} is not a run folder: it has no {needed}")
    config = yaml.safe_load((logdir / "config.yaml").read_text())
    rows = read_metrics(logdir / "metrics.jsonl")
    key = next((k for k in CURVE_KEYS if series(rows, "frames", k)[0]), CURVE_KEYS[0])
    frames, returns = (np.asarray(a, np.float64) for a in series(rows, "frames", key))
    final = final_return(logdir, returns)
    record = RunRecord(str(logdir), int(config.get("seed", 0)), "", frames, returns, key, final)
    return config, record


def final_return(logdir: Path, returns: np.ndarray) -> dict[str, Any]:
    summary = logdir / "eval" / "summary.json"
    if summary.exists():
        data = json.loads(summary.read_text())
        # The first policy evaluated (`--modes`; sampled actions by default, as the reference).
        stats = next(iter(data["policy"].values()))["return"]
        ci95 = [stats["ci95_low"], stats["ci95_high"]]
        return {"mean": stats["mean"], "ci95": ci95, "source": "summary.json"}
    last = float(returns[-1]) if len(returns) else float("nan")
    return {"mean": last, "ci95": [None, None], "source": "metrics.jsonl"}


def read_runs(logdirs: list[str | Path]) -> list[RunRecord]:
    """Records of the run folders with their group names (the first run's folder name of each group)."""
    configs, records = zip(*(read_run(d) for d in logdirs), strict=True)
    names: dict[str, str] = {}
    out = []
    for config, record in zip(configs, records, strict=True):
        group = names.setdefault(experiment_key(config), record.name)
        out.append(record._replace(group=group))
    return out


def aggregate(records: list[RunRecord]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(frames [X], mean [X], std [X]) of the runs' curves on a grid up to the frames all of them reached."""
    curves = [r for r in records if len(r.frames)]
    if not curves:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    start = max(r.frames[0] for r in curves)
    end = min(r.frames[-1] for r in curves)
    grid = np.linspace(start, end, GRID_POINTS) if end > start else np.array([end])
    values = np.stack([np.interp(grid, r.frames, r.returns) for r in curves])
    return grid, values.mean(0), values.std(0)


def groups(records: list[RunRecord]) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, int]]:
    """group name -> (frames, mean, std, number of seeds) for `plot_compare`."""
    out = {}
    for name in dict.fromkeys(r.group for r in records):
        members = [r for r in records if r.group == name]
        out[name] = (*aggregate(members), len(members))
    return out


def table(records: list[RunRecord]) -> str:
    """A text table: one row per run (group, seed, frames reached, final return with its 95% CI)."""
    header = ("run", "group", "seed", "frames", "final return", "95% CI", "from")
    rows = [header]
    for r in records:
        low, high = r.final["ci95"]
        ci = f"[{low:.2f}, {high:.2f}]" if low is not None else "-"
        frames = f"{int(r.frames[-1])}" if len(r.frames) else "-"
        rows.append((r.name, r.group, str(r.seed), frames, f"{r.final['mean']:.2f}", ci, r.final["source"]))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows)
