"""Milliseconds per full agent update and its parts, and peak memory.

Also the FLOPs of one update (matmuls and convolutions, forward and backward, counted by torch's
FlopCounterMode), the achieved GFLOP/s and its share of a measured matmul peak on the same device and
precision, the way nanoGPT reports model-FLOP utilization. "floor" is the time those FLOPs take at that
peak: about the least any implementation of the same matmuls and convolutions at that precision can
spend. "kernels" is the time the update's own matmul and convolution calls take replayed alone, back to
back on fresh operands (`kernel_ms`): the update less everything between those calls. Presets may be
combined with commas (`--presets v1,xs`) for like-for-like comparisons with v1 ports.

One update = `Agent.loss` (world-model terms, imagination, actor-critic terms), one backward pass, the
optimizer step (with the return normalizer and the slow-critic EMA), exactly as `Agent.train` runs them.
Synthetic batches of B x T steps with either a 4-dim vector observation or a 64x64x3 image, 2 discrete
actions.

    python bench/update.py --presets size1m size12m --repeats 5 --threads 2

Prints one line per (preset, observation) with the median over `--repeats` timed updates after
`--warmup` untimed ones. Peak memory is the process's peak resident set on CPU (it only grows over the
run, so later lines include earlier ones) or the peak CUDA allocation per configuration on GPU.
"""

from __future__ import annotations

import argparse
import collections
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map
from torch.utils.flop_counter import FlopCounterMode, flop_registry

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent import make_agent, resolve_device  # noqa: E402
from agent.precision import auto_precision  # noqa: E402
from configs.loader import load_config  # noqa: E402
from envs.spaces import ActionSpace, ArraySpec  # noqa: E402
from replay.spec import CONTEXT  # noqa: E402
from run.host import setup_cpu  # noqa: E402
from world_model.rssm import latent_spec  # noqa: E402

PARTS = ("world_model", "behavior", "backward", "optimizer")
OBS_SPACES = {
    "vector": {"vector": ArraySpec((4,), np.float32)},
    "image": {"image": ArraySpec((64, 64, 3), np.uint8)},
}
ACT_SPACE = ActionSpace("discrete", 2, (2,))


def synthetic_batch(obs_space, B: int, T: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    data = {
        "reward": rng.normal(size=(B, T)).astype(np.float32),
        "is_first": np.zeros((B, T), bool),
        "is_last": np.zeros((B, T), bool),
        "is_terminal": np.zeros((B, T), bool),
        "action": np.eye(2, dtype=np.float32)[rng.integers(0, 2, (B, T))],
    }
    data["is_first"][:, 0] = True
    for key, spec in obs_space.items():
        if spec.is_image:
            data[key] = rng.integers(0, 256, (B, T, *spec.shape), dtype=np.uint8)
        else:
            data[key] = rng.normal(size=(B, T, *spec.shape)).astype(np.float32)
    return data


def config_batch(config, obs_space, seed: int = 0) -> dict[str, np.ndarray]:
    """A synthetic batch as the config's replay samples it: `replay.context` steps before the
    `batch_length` trained ones, each with a stored latent (deter uniform in [-1, 1], one-hot or normal
    stoch) and a stepid."""
    B, K = config.replay.batch_size, config.replay.context
    L = K + config.replay.batch_length
    data = synthetic_batch(obs_space, B, L, seed)
    if not K:
        return data
    rng = np.random.default_rng(seed + 1)
    data["stepid"] = np.arange(B * L).reshape(B, L)
    for key, spec in latent_spec(config.world_model).items():
        if key == "stoch" and len(spec.shape) == 2:
            value = np.eye(spec.shape[1], dtype=np.float32)[
                rng.integers(0, spec.shape[1], (B, L, spec.shape[0]))
            ]
        elif key == "stoch":
            value = rng.normal(size=(B, L, *spec.shape)).astype(np.float32)
        else:
            value = rng.uniform(-1, 1, (B, L, *spec.shape)).astype(np.float32)
        data[CONTEXT + key] = value
    return data


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Stopwatch:
    """Marks the seams of an update. On CUDA each mark records an event on the stream, so the kernels
    queue as in a real update and their GPU time is what is measured (one synchronization at the end);
    elsewhere a mark is the wall clock."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: dict[str, object] = {}

    def mark(self, name: str) -> None:
        if self.cuda:
            self.marks[name] = torch.cuda.Event(enable_timing=True)
            self.marks[name].record()
        else:
            self.marks[name] = time.perf_counter()

    def seconds(self, start: str, end: str) -> float:
        if self.cuda:
            self.marks[end].synchronize()
            return self.marks[start].elapsed_time(self.marks[end]) / 1000
        return self.marks[end] - self.marks[start]


def timed_update(agent, data, carry) -> tuple[dict[str, float], object]:
    """One update as `Agent.train` runs it, split at its seams: the world-model terms (timed where
    `Agent.loss` gets them back), the behaviour terms (the rest of `Agent.loss`), the backward pass, the
    optimizer step; seconds per part."""
    watch = Stopwatch(agent.device)
    world_model_loss = agent.wm.loss

    def timed_world_model_loss(*args):
        out = world_model_loss(*args)
        watch.mark("world_model")
        return out

    agent.wm.loss = timed_world_model_loss
    sync(agent.device)
    watch.mark("start")
    with agent._autocast():
        total, out = agent.loss(data, carry)
    watch.mark("behavior")
    total = agent.backward(total)
    watch.mark("backward")
    agent.step(total, out.retstats)
    watch.mark("optimizer")
    del agent.wm.loss  # the instance attribute goes; the method is back
    seams = ("start", *PARTS)
    times = {part: watch.seconds(a, part) for a, part in zip(seams[:-1], seams[1:], strict=True)}
    times["total"] = watch.seconds("start", "optimizer")
    return times, out.carry


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class KernelRecorder(TorchDispatchMode):
    """Records the matmul and convolution calls (the ops torch's FLOP counter counts) that run inside it,
    forward and backward, as (op, arguments with each tensor replaced by its shape, strides and dtype)."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.overloadpacket in flop_registry:
            spec = lambda x: TensorSpec(x.shape, x.stride(), x.dtype, x.device) if torch.is_tensor(x) else x
            self.calls.append((func, tree_map(spec, args), tree_map(spec, kwargs)))
        return func(*args, **kwargs)


class TensorSpec(tuple):
    """(shape, strides, dtype, device) of a recorded operand."""

    def __new__(cls, shape, stride, dtype, device):
        return super().__new__(cls, (tuple(shape), tuple(stride), dtype, device))

    def make(self) -> torch.Tensor:
        """A random tensor of this shape, strides (expanded or transposed views too) and dtype."""
        shape, stride, dtype, device = self
        storage = 1 + sum((n - 1) * s for n, s in zip(shape, stride, strict=True) if n > 0)
        base = torch.randn(storage, device=device).to(dtype)
        return base.as_strided(shape, stride)


def kernel_ms(calls: list[tuple], device: torch.device, repeats: int = 3) -> float:
    """Milliseconds the recorded calls take replayed on their own, back to back, on fresh random
    operands: the update's matmuls and convolutions without anything between them. Each distinct call
    is timed (best of `repeats`) and counted as often as it ran."""
    counts = collections.Counter(map(repr, calls))
    distinct = {repr(call): call for call in calls}  # equal reprs: the same call
    make = lambda x: x.make() if isinstance(x, TensorSpec) else x
    total = 0.0
    for key, (func, args, kwargs) in distinct.items():
        args, kwargs = tree_map(make, args), tree_map(make, kwargs)
        best = float("inf")
        for _ in range(repeats + 1):
            sync(device)
            t0 = time.perf_counter()
            func(*args, **kwargs)
            sync(device)
            best = min(best, time.perf_counter() - t0)
        total += counts[key] * best
    return 1000 * total


def update_flops(agent, data, state) -> tuple[float, float]:
    """FLOPs of one update's matmuls and convolutions, forward and backward (torch's FLOP counter, the
    convention of model-FLOP utilization: elementwise work is not counted, nor the gathers that replace
    matmuls over one-hot inputs, so imagination counts only its dense part), and the ms those calls take
    replayed on their own (`kernel_ms`). Runs one extra update."""
    recorder = KernelRecorder()
    with FlopCounterMode(display=False) as counter, recorder:
        timed_update(agent, data, state)
    return float(counter.get_total_flops()), kernel_ms(recorder.calls, agent.device)


def matmul_peak(device: torch.device, precision: str, n: int = 1024, repeats: int = 10) -> float:
    """Measured FLOP/s of an n x n x n matmul at the given precision: the ceiling we compare against."""
    dtype = torch.bfloat16 if precision == "bfloat16" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - t0)


def bench(preset: str, obs: str, args) -> dict[str, float]:
    overrides = {"run": {"device": args.device, "precision": args.precision, "compile": args.compile}}
    # "v1,xs" applies several presets in order, for like-for-like comparisons with v1 ports.
    config = load_config(preset.split(","), overrides)
    B, T = config.replay.batch_size, config.replay.batch_length
    torch.manual_seed(0)
    agent = make_agent(config, OBS_SPACES[obs], ACT_SPACE)
    if agent.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(agent.device)
    data = agent.to_device(config_batch(config, OBS_SPACES[obs]))
    state, runs = None, []
    for i in range(args.warmup + args.repeats):
        times, state = timed_update(agent, data, state)
        if i >= args.warmup:
            runs.append(times)
    result = {k: 1000 * statistics.median(r[k] for r in runs) for k in (*PARTS, "total")}
    flops, kernels = update_flops(agent, data, state) if args.flops else (float("nan"), float("nan"))
    result["gflop"], result["kernels"] = flops / 1e9, kernels
    result["gflops"] = result["gflop"] / (result["total"] / 1000)
    result["params_m"] = sum(p.numel() for m in (agent.wm, agent.ac) for p in m.parameters()) / 1e6
    result["peak_mb"] = peak_memory_mb(agent.device)
    result.update(B=B, T=T, H=config.actor_critic.imag_horizon)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["size1m", "size12m"])
    parser.add_argument("--obs", nargs="+", default=list(OBS_SPACES), choices=list(OBS_SPACES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads on CPU (0: torch's default)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "float32", "bfloat16"],
        help="run.precision (auto: bfloat16 where the device computes it natively, else float32)",
    )
    parser.add_argument("--compile", action="store_true", help="run.compile (use --warmup 2 or more)")
    parser.add_argument("--no-flops", dest="flops", action="store_false", help="skip the FLOP count")
    parser.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")
    parser.add_argument(
        "--default-malloc",
        dest="keep_memory",
        action="store_false",
        help="leave glibc's mmap/trim thresholds as they are (run.keep_freed_memory false)",
    )
    args = parser.parse_args(argv)
    setup_cpu(args.threads, args.keep_memory)
    device = resolve_device(args.device)
    if args.precision == "auto":
        choice = auto_precision(device)
        print(choice.line())
        args.precision = choice.precision
    peak = matmul_peak(device, args.precision) / 1e9
    mode = f"{args.precision}, run.compile" if args.compile else args.precision
    mode += "" if args.keep_memory else ", default malloc"
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {device}, {mode}")
    print(f"measured matmul peak: {peak:.0f} GFLOP/s (1024^3, {args.precision})")
    print(
        f"{'preset':<9} {'obs':<7} {'params':>7} "
        + " ".join(f"{k:>11}" for k in (*PARTS, "total"))
        + f"  {'GFLOP':>7} {'GFLOP/s':>8} {'of peak':>7} {'floor':>8} {'kernels':>8}  peak MB"
    )
    for preset in args.presets:
        for obs in args.obs:
            r = bench(preset, obs, args)
            r["peak_gflops"], r["floor"] = peak, r["gflop"] / peak * 1000
            if args.json:
                print(
                    json.dumps({"preset": preset, "obs": obs, "precision": args.precision, **r}), flush=True
                )
                continue
            parts = " ".join(f"{r[k]:>9.0f}ms" for k in (*PARTS, "total"))
            util = f"{r['gflop']:>7.1f} {r['gflops']:>8.1f} {100 * r['gflops'] / peak:>6.1f}%"
            util += f" {r['floor']:>6.0f}ms {r['kernels']:>6.0f}ms"
            print(
                f"{preset:<9} {obs:<7} {r['params_m']:>6.2f}M {parts}  {util}  {r['peak_mb']:>7.0f}",
                flush=True,
            )
    print(f"B={r['B']} T={r['T']} H={r['H']}; median of {args.repeats} updates after {args.warmup} warm-up")


if __name__ == "__main__":
    main()
