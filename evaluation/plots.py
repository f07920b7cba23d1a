"""Evaluation plots as PNG files (matplotlib Agg, like the training plots of run/plots.py).

- `open_loop.png`: open-loop MSE per horizon step per decoded key (PSNR beside it for images).
- `rate_distortion.png`: rate vs distortion (nats per step) of several checkpoints, labelled by step.
- `open_loop_strip.png`: true vs imagined frames (images) or components (vectors) of one sequence.
- `bounds.png`: the ELBO, importance-weighted and particle bounds (nats per step) vs K, their gaps above
  the ELBO, and the seconds each took.
- `compare_returns.png`: return vs env frames per group of runs, mean over seeds with a +-1 std band.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np

from evaluation.world_model import OpenLoop
from run.plots import save_figure

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# Frames shown in a strip of true vs imagined images, and vector components in a strip of curves.
STRIP_FRAMES = 10
STRIP_COMPONENTS = 4


def plot_open_loop(result: OpenLoop, path: Path) -> Path:
    keys = list(result.mse)
    cols = len(keys) + len(result.psnr)
    fig, axes = plt.subplots(1, cols, figsize=(4 * cols, 3.5), squeeze=False)
    horizon = np.arange(1, len(result.count) + 1)
    panels = [(k, result.mse[k], "MSE") for k in keys] + [(k, v, "PSNR (dB)") for k, v in result.psnr.items()]
    for ax, (key, values, label) in zip(axes[0], panels, strict=True):
        ax.plot(horizon, values, marker=".")
        ax.set(xlabel="open-loop horizon step", ylabel=label, title=f"{key}: {label} vs horizon")
        ax.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_rate_distortion(points: list[dict], path: Path) -> Path:
    """points: dicts with `step`, `rate`, `distortion` (one per checkpoint, oldest first)."""
    fig, ax = plt.subplots(figsize=(5, 4))
    rate = [p["rate"] for p in points]
    distortion = [p["distortion"] for p in points]
    ax.plot(rate, distortion, marker="o")
    for p in points:
        ax.annotate(str(p["step"]), (p["rate"], p["distortion"]), textcoords="offset points", xytext=(4, 4))
    ax.set(xlabel="rate (nats per step)", ylabel="distortion (nats per step)", title="Rate vs distortion")
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


# Line style of each bound in `bounds.png`.
BOUND_STYLE = {"elbo": ("ELBO", "k--"), "iw": ("importance-weighted", "o-"), "smc": ("particle (SMC)", "s-")}


def plot_bounds(sweep: dict, path: Path) -> Path:
    """sweep: `evaluation.world_model.bound_sweep`'s result (lists over `k`)."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    k = sweep["k"]
    panels = (
        (axes[0], "", "nats per step", "Bounds on log p(x) per step"),
        (axes[1], "_gap", "nats per step above the ELBO", "Gap above the ELBO"),
    )
    for ax, suffix, ylabel, title in panels:
        for name, (label, style) in BOUND_STYLE.items():
            if name + suffix in sweep:
                ax.plot(k, sweep[name + suffix], style, label=label)
        ax.set(xlabel="K (samples / particles)", ylabel=ylabel, title=title)
    for name in ("iw", "smc"):
        if f"seconds/{name}" in sweep:
            label = "ELBO + importance-weighted" if name == "iw" else BOUND_STYLE[name][0]
            axes[2].plot(k, sweep[f"seconds/{name}"], BOUND_STYLE[name][1], label=label)
    axes[2].set(xlabel="K (samples / particles)", ylabel="seconds", title="Time over all sequences")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xticks(k, [str(v) for v in k])
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    return save_figure(fig, path)


def plot_strip(result: OpenLoop, context: int, image_keys: list[str], path: Path) -> Path:
    """True vs imagined frames of the first image key, or curves of the first vector key."""
    image = next((k for k in result.truth if k in image_keys), None)
    if image is not None:
        return _image_strip(result.truth[image], result.pred[image], context, path)
    key = next(iter(result.truth))
    return _vector_strip(result.truth[key], result.pred[key], context, key, path)


def _image_strip(truth: np.ndarray, pred: np.ndarray, context: int, path: Path) -> Path:
    """truth, pred: [T, H, W, C] in [0, 1]; the frames from `context - 1` on, true above imagined."""
    start = max(context - 1, 0)
    frames = list(range(start, min(start + STRIP_FRAMES, len(truth))))
    fig, axes = plt.subplots(2, len(frames), figsize=(1.2 * len(frames), 2.8), squeeze=False)
    for col, t in enumerate(frames):
        for row, (video, name) in enumerate(((truth, "true"), (pred, "imagined"))):
            ax = axes[row, col]
            ax.imshow(np.clip(video[t].squeeze(), 0, 1), cmap="gray" if video.shape[-1] == 1 else None)
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(name)
        axes[0, col].set_title(f"h={t - context + 1}" if t >= context else "ctx", fontsize=8)
    return save_figure(fig, path)


def _vector_strip(truth: np.ndarray, pred: np.ndarray, context: int, key: str, path: Path) -> Path:
    """truth, pred: [T, D]; the first components over time, imagination after the dashed line."""
    dims = min(truth.shape[-1], STRIP_COMPONENTS)
    fig, axes = plt.subplots(1, dims, figsize=(3.5 * dims, 3), squeeze=False)
    t = np.arange(len(truth))
    for d, ax in enumerate(axes[0]):
        ax.plot(t, truth[:, d], label="true")
        ax.plot(t, pred[:, d], "--", label="model")
        ax.axvline(context - 0.5, color="gray", linestyle=":")
        ax.set(xlabel="step", title=f"{key}[{d}]")
        ax.grid(alpha=0.3)
    axes[0, 0].legend()
    return save_figure(fig, path)


def plot_compare(groups: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, int]], path: Path) -> Path:
    """groups: name -> (frames [X], mean return [X], std [X], number of seeds)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, (x, mean, std, seeds) in groups.items():
        ax.plot(x, mean, label=f"{name} ({seeds} seed{'s' if seeds > 1 else ''})")
        ax.fill_between(x, mean - std, mean + std, alpha=0.2)
    ax.set(xlabel="env frames", ylabel="return", title="Return (mean +- std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)
