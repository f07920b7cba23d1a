"""World-model evaluation on real sequences: the ELBO and its parts, a tighter K-sample bound, reward and
continuation errors, and open-loop prediction error per horizon step.

All bound terms are per step in nats (bits per dimension for images), averaged over every step of the
data. The K-sample importance-weighted bound (`WorldModel.log_likelihood_bound`) is computed per whole
sequence and divided by its length; `elbo_kl` is the ELBO with the closed-form KL (averaged over the K
posterior samples), `elbo` the training pass's single-sample estimate of the same bound, and
`iwae_gap` = iwae - elbo_kl >= 0 in expectation.

Bounds per K (`bound_sweep`): the ELBO (`elbo`, closed-form KL, averaged over K posterior paths), the
importance-weighted bound of K whole trajectories (`iw`) and the particle (filtering) bound with K
particles (`smc`, `WorldModel.particle_bound`), each in nats per step, with their gaps above the ELBO and
the seconds each took. All three start each sequence from the initial state, as the ELBO above.

Open loop: the posterior on `context` real steps, then the prior on the real actions for the rest; the
error at horizon h is the decoded mean's squared error on step `context + h - 1`, averaged over the
dimensions of a key ([0, 1] pixel units for images, raw units for vectors) and over the sequences.
A sequence whose episode restarts (`is_first`) after the context stops counting there. Images also get
the PSNR (dB, peak 1). SSIM is not reported: it would need scikit-image, which is not a dependency.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from typing import Any, NamedTuple

import numpy as np
import torch

from evaluation.policy import Episode

# Floor of a frame's MSE in the PSNR: a perfect prediction reads 100 dB instead of infinity.
MIN_MSE = 1e-10


class OpenLoop(NamedTuple):
    """mse, psnr: key -> [H] per horizon step (psnr for images only); count: [H] sequences counted per
    step; truth, pred: key -> [T, ...] of the first sequence (float, images in [0, 1]), for plots."""

    mse: dict[str, np.ndarray]
    psnr: dict[str, np.ndarray]
    count: np.ndarray
    truth: dict[str, np.ndarray]
    pred: dict[str, np.ndarray]


def to_tensors(data: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in data.items():
        t = torch.as_tensor(np.asarray(v))
        out[k] = (t.float() if t.dtype == torch.float64 else t).to(device)
    return out


@torch.no_grad()
def sequence_sums(world_model: Any, data: dict[str, torch.Tensor], k: int) -> dict[str, float]:
    """Sums over all B x T steps of a batch [B, T, ...] of every per-step metric, plus `steps`.

    Keys: elbo, rate, distortion, distortion/<key>, bits_per_dim/<key>, iwae, iwae_elbo (the bound's
    own K-sample ELBO estimate), elbo_kl, reward_mse, reward_abs, cont_mse, cont_accuracy.
    """
    B, T = data["is_first"].shape
    steps = B * T
    out = world_model.loss(data)
    sums = {
        k_: float(v) * steps
        for k_, v in out.metrics.items()
        if k_ in ("elbo", "rate", "distortion") or k_.startswith(("distortion/", "bits_per_dim/"))
    }
    bound = world_model.log_likelihood_bound(data, k)
    sums["iwae"] = float(bound.iwae.sum())
    sums["iwae_elbo"] = float(bound.elbo.sum())
    sums["elbo_kl"] = float(bound.elbo_kl.sum())
    feat = world_model.feat(out.states)
    reward_err = world_model.reward(feat).mean().float() - data["reward"].float()
    sums["reward_mse"] = float(reward_err.square().sum())
    sums["reward_abs"] = float(reward_err.abs().sum())
    cont = world_model.cont(feat).mean().float()
    target = 1.0 - data["is_terminal"].float()
    sums["cont_mse"] = float((cont - target).square().sum())
    sums["cont_accuracy"] = float(((cont > 0.5).float() == target).float().sum())
    sums["steps"] = float(steps)
    return sums


def bound_metrics(world_model: Any, batches: list[dict[str, np.ndarray]], k: int) -> dict[str, float]:
    """Per-step averages over all steps of `batches` (each [B, T, ...]); see `sequence_sums`.

    Adds `iwae_gap` = iwae - elbo_kl (nats per step), `steps` and `k`.
    """
    if not batches:
        raise ValueError("world-model evaluation needs at least one sequence")
    device = next(world_model.parameters()).device
    total: dict[str, float] = defaultdict(float)
    for batch in batches:
        for key, value in sequence_sums(world_model, to_tensors(batch, device), k).items():
            total[key] += value
    steps = total.pop("steps")
    metrics = {key: value / steps for key, value in total.items()}
    metrics["iwae_gap"] = metrics["iwae"] - metrics["elbo_kl"]
    metrics["steps"], metrics["k"] = steps, float(k)
    return metrics


# The bounds `bound_sweep` can compute.
BOUNDS = ("elbo", "iw", "smc")


def bound_sweep(
    world_model: Any,
    batches: list[dict[str, np.ndarray]],
    ks: list[int],
    bounds: list[str],
    resampler: str = "systematic",
    ess_threshold: float = 0.5,
) -> dict[str, Any]:
    """The requested `bounds` (of BOUNDS) for each K in `ks`, in nats per step over all steps of
    `batches` (each [B, T, ...]).

    Returns {"k": ks, "steps", "resampler", "ess_threshold"} and, per requested bound, a list over K:
    `elbo`, `iw`, `smc`; `iw_gap`, `smc_gap` (the bound minus the ELBO, with `elbo`); `resample_rate`
    (the fraction of steps at which the particles were resampled, with `smc`); `seconds/iw` (one pass
    gives the ELBO and the iw bound), `seconds/smc`.
    """
    if not bounds or not set(bounds) <= set(BOUNDS):
        raise ValueError(f"bounds must be among {BOUNDS}; got {bounds}")
    device = next(world_model.parameters()).device
    sums: dict[str, list[float]] = defaultdict(lambda: [0.0] * len(ks))
    steps = 0
    for batch in batches:
        data = to_tensors(batch, device)
        steps += data["is_first"].numel()
        for i, k in enumerate(ks):
            if {"elbo", "iw"} & set(bounds):
                out, seconds = _timed(world_model.log_likelihood_bound, data, k)
                sums["elbo"][i] += float(out.elbo_kl.sum())
                sums["iw"][i] += float(out.iwae.sum())
                sums["seconds/iw"][i] += seconds
            if "smc" in bounds:
                out, seconds = _timed(world_model.particle_bound, data, k, resampler, ess_threshold)
                sums["smc"][i] += float(out.smc.sum())
                sums["resample_rate"][i] += float(out.resamples.sum())
                sums["seconds/smc"][i] += seconds
    result = {"k": list(ks), "steps": steps, "resampler": resampler, "ess_threshold": ess_threshold}
    names = [b for b in BOUNDS if b in bounds] + (["resample_rate"] if "smc" in bounds else [])
    result.update({name: [v / steps for v in sums[name]] for name in names})
    for name in ("iw", "smc"):
        if name in result and "elbo" in result:
            result[f"{name}_gap"] = [b - e for b, e in zip(result[name], result["elbo"], strict=True)]
    result.update({name: v for name, v in sums.items() if name.startswith("seconds/")})
    return result


def _timed(fn, *args) -> tuple[Any, float]:
    """fn(*args) and the seconds it took (after the device finished its work)."""
    start = time.perf_counter()
    out = fn(*args)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def episode_batches(episodes: list[Episode]) -> list[dict[str, np.ndarray]]:
    """Each episode as a batch of one sequence [1, T, ...] (its first step included)."""
    return [{k: v[None] for k, v in e.steps.items()} for e in episodes]


def episode_windows(episodes: list[Episode], length: int, limit: int) -> dict[str, np.ndarray] | None:
    """Up to `limit` non-overlapping windows [W, length, ...] cut from the episodes, in order; None when
    no episode has `length` steps."""
    windows = []
    for e in episodes:
        T = len(e.steps["is_first"])
        for start in range(0, T - length + 1, length):
            if len(windows) < limit:
                windows.append({k: v[start : start + length] for k, v in e.steps.items()})
    if not windows:
        return None
    return {k: np.stack([w[k] for w in windows]) for k in windows[0]}


def valid_after_context(is_first: torch.Tensor, context: int) -> torch.Tensor:
    """[B, T - context] bool: imagined step t counts while no `is_first` occurs in steps context..t."""
    return is_first[:, context:].long().cumsum(1) == 0


@torch.no_grad()
def open_loop_errors(world_model: Any, batch: dict[str, np.ndarray], context: int) -> OpenLoop:
    """Open-loop prediction error per horizon step on a batch [B, context + H, ...] of real sequences."""
    B, T = batch["is_first"].shape
    if not 1 <= context < T:
        raise ValueError(f"open-loop context must be in [1, {T - 1}] ({T} steps), got {context}")
    device = next(world_model.parameters()).device
    data = to_tensors(batch, device)
    pred = world_model.open_loop(data, context)
    valid = valid_after_context(data["is_first"].bool(), context).float()
    count = valid.sum(0)
    mse, psnr, truths, preds = {}, {}, {}, {}
    for key, value in pred.items():
        truth = data[key].float() / 255.0 if key in world_model.image_keys else data[key].float()
        err = (value.float() - truth).square().flatten(2).mean(2)[:, context:]  # [B, H]
        mse[key] = masked_mean(err, valid, count)
        if key in world_model.image_keys:
            frame_psnr = 10.0 * torch.log10(1.0 / err.clamp(min=MIN_MSE))
            psnr[key] = masked_mean(frame_psnr, valid, count)
        truths[key], preds[key] = truth[0].cpu().numpy(), value[0].float().cpu().numpy()
    return OpenLoop(mse, psnr, count.cpu().numpy(), truths, preds)


def masked_mean(values: torch.Tensor, valid: torch.Tensor, count: torch.Tensor) -> np.ndarray:
    """Mean over the batch of values [B, H] where valid [B, H]; NaN where no sequence counts."""
    mean = (values * valid).sum(0) / count.clamp(min=1)
    return torch.where(count > 0, mean, torch.full_like(mean, math.nan)).cpu().numpy()


def open_loop_json(result: OpenLoop, context: int) -> dict[str, Any]:
    """The numbers of an OpenLoop as JSON-ready lists."""
    return {
        "context": context,
        "horizon": len(result.count),
        "sequences": result.count.astype(int).tolist(),
        "mse": {k: v.tolist() for k, v in result.mse.items()},
        "psnr": {k: v.tolist() for k, v in result.psnr.items()},
    }
