"""Learning curves from `metrics.jsonl` as PNG files in `<logdir>/plots`.

- `returns.png`: episode return (training and evaluation) against env frames.
- `elbo.png`: ELBO, rate and distortion (nats per step) against updates.

Usage: `python -m run.plots <logdir>`.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RETURN_KEYS = ("episode/return", "eval/return")
BOUND_NAMES = ("elbo", "rate", "distortion")


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The rows of a metrics.jsonl file, oldest first.

    A line cut short by a crash is skipped. A run resumed from a checkpoint logs again from the
    checkpoint's step; the rows it supersedes (logged after that checkpoint by the crashed run) are
    dropped, so every curve runs forward.
    """
    rows: list[dict] = []
    for line in Path(path).read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        while rows and rows[-1].get("step", 0) > row.get("step", 0):
            rows.pop()
        rows.append(row)
    return rows


def series(rows: list[dict], x_key: str, y_key: str) -> tuple[list[float], list[float]]:
    """(x, y) of the rows holding both keys with finite values."""
    pairs = [(r[x_key], r[y_key]) for r in rows if x_key in r and y_key in r]
    pairs = [(x, y) for x, y in pairs if math.isfinite(x) and math.isfinite(y)]
    return [x for x, _ in pairs], [y for _, y in pairs]


def bound_keys(rows: list[dict]) -> dict[str, str]:
    """Map 'elbo', 'rate', 'distortion' to the logged key whose last part is that name."""
    found: dict[str, str] = {}
    for row in rows:
        for key in row:
            name = key.split("/")[-1]
            if name in BOUND_NAMES and name not in found:
                found[name] = key
    return found


def plot_returns(rows: list[dict], path: Path) -> Path | None:
    curves = {key: series(rows, "frames", key) for key in RETURN_KEYS}
    curves = {key: xy for key, xy in curves.items() if xy[0]}
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, (x, y) in curves.items():
        ax.plot(x, y, marker="." if len(x) < 50 else None, label=key)
    ax.set(xlabel="env frames", ylabel="return", title="Episode return")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


def plot_bound(rows: list[dict], path: Path) -> Path | None:
    keys = bound_keys(rows)
    if not keys:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.5), squeeze=False)
    for ax, name in zip(axes[0], [n for n in BOUND_NAMES if n in keys], strict=True):
        x, y = series(rows, "updates", keys[name])
        ax.plot(x, y)
        ax.set(xlabel="updates", ylabel="nats per step", title=keys[name])
        ax.grid(alpha=0.3)
    return save_figure(fig, path)


def save_figure(fig, path: Path) -> Path:
    """Write `fig` as a PNG at `path` (folders created) and close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def make_plots(logdir: str | os.PathLike) -> list[Path]:
    """Write the PNGs for a run folder; returns the files written (none when nothing was logged)."""
    logdir = Path(logdir)
    metrics = logdir / "metrics.jsonl"
    if not metrics.exists():
        raise FileNotFoundError(f"no metrics.jsonl in {logdir}")
    rows = read_metrics(metrics)
    written = [
        plot_returns(rows, logdir / "plots" / "returns.png"),
        plot_bound(rows, logdir / "plots" / "elbo.png"),
    ]
    return [p for p in written if p is not None]


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m run.plots <logdir>", file=sys.stderr)
        raise SystemExit(2)
    try:
        paths = make_plots(argv[0])
    except FileNotFoundError as e:
        print(f"run.plots: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    for path in paths:
        print(path)


if __name__ == "__main__":
    main()
