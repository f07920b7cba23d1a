"""Replay speed and memory: add throughput, B x T sample time (numpy and torch), the write-back of the
trained steps' latents (`replay.context`), bytes per stored step, chunk saving cost and peak resident
memory. Cases with a latent store the model's state with each step at a size preset's dims.

    python bench/replay.py [--steps 50000] [--streams 4] [--repeats 50]
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from configs.loader import load_config  # noqa: E402
from envs.spaces import ArraySpec  # noqa: E402
from replay import Replay, step_spec  # noqa: E402
from world_model.rssm import latent_spec  # noqa: E402

VECTOR = {"vector": ArraySpec((4,), np.float32)}
IMAGE = {"image": ArraySpec((64, 64, 3), np.uint8)}
# name -> (observations, the size preset whose latent is stored with each step, or None)
CASES = {
    "vector 4": (VECTOR, None),
    "vector 4 + latent small": (VECTOR, "small"),
    "vector 4 + latent size12m": (VECTOR, "size12m"),
    "image 64x64x3": (IMAGE, None),
    "image 64x64x3 + latent size12m": (IMAGE, "size12m"),
}
ACT_DIM = 6


def random_step(spec: dict[str, ArraySpec], streams: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One step of every stream with random contents at the spec's dtypes."""
    step = {}
    for key, s in spec.items():
        shape = (streams, *s.shape)
        if s.dtype == np.uint8:
            step[key] = rng.integers(0, 256, shape, dtype=np.uint8)
        elif s.dtype == bool:
            step[key] = rng.random(shape) < 0.01
        else:
            step[key] = rng.standard_normal(shape).astype(s.dtype)
    return step


def timed(fn, repeats: int) -> float:
    """Median milliseconds of `fn()` over `repeats` calls after two warm-up calls."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def fill(replay: Replay, spec: dict, steps: int, streams: int) -> float:
    """Add `steps` steps (spread over the streams) from a small pool of random steps; returns steps/s."""
    rng = np.random.default_rng(0)
    pool = [random_step(spec, streams, rng) for _ in range(16)]
    start = time.perf_counter()
    for i in range(steps // streams):
        replay.add(pool[i % len(pool)])
    return (steps // streams) * streams / (time.perf_counter() - start)


def write_back(replay: Replay) -> callable:
    """A call writing latents over the trained steps of one sampled batch, as the loop does."""
    batch = replay.sample()
    trained = {
        k: v[:, replay.context :] for k, v in batch.items() if k == "stepid" or k.startswith("context/")
    }
    return lambda: replay.update(trained)


def bench_case(name: str, obs: dict, preset: str | None, args) -> dict:
    latent = latent_spec(load_config([preset]).world_model) if preset else None
    spec = step_spec(obs, ACT_DIM, latent)
    config = dataclasses.replace(
        load_config([]).replay, capacity=args.steps, batch_size=16, batch_length=64, save=False
    )
    replay = Replay(spec, config, args.streams, seed=0)
    add_rate = fill(replay, spec, args.steps, args.streams)
    sample_ms = timed(replay.sample, args.repeats)
    torch_ms = timed(lambda: replay.sample_torch("cpu"), args.repeats)
    update_ms = timed(write_back(replay), args.repeats) if latent else float("nan")
    stats = replay.stats()
    with tempfile.TemporaryDirectory() as directory:
        saving = Replay(spec, dataclasses.replace(config, capacity=8192, save=True), 1, directory)
        save_rate = fill(saving, spec, 4 * config.chunk_size, 1)
        chunk_bytes = sum(p.stat().st_size for p in Path(directory).glob("*.npz")) / 4
    return {
        "case": name,
        "add steps/s": f"{add_rate:,.0f}",
        "add+save steps/s": f"{save_rate:,.0f}",
        "sample ms": f"{sample_ms:.2f}",
        "sample_torch ms": f"{torch_ms:.2f}",
        "update ms": f"{update_ms:.2f}",
        "bytes/step": f"{stats['bytes_per_step']:.0f}",
        "raw bytes/step": f"{stats['raw_bytes_per_step']}",
        "chunk MB": f"{chunk_bytes / 2**20:.2f}",
    }


def print_table(rows: list[dict]) -> None:
    columns = list(rows[0])
    widths = [max(len(c), *(len(r[c]) for r in rows)) for c in columns]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True)))
    for row in rows:
        print("  ".join(row[c].rjust(w) for c, w in zip(columns, widths, strict=True)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50000, help="steps stored (the replay capacity)")
    parser.add_argument("--streams", type=int, default=4, help="env streams adding in parallel")
    parser.add_argument("--repeats", type=int, default=50, help="timed sample calls per case")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [bench_case(name, obs, preset, args) for name, (obs, preset) in CASES.items()]
    print(f"replay: {args.steps} steps over {args.streams} streams, batches 16 x 64, chunks of 1024 steps")
    print_table(rows)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    print(f"peak resident memory: {peak:.0f} MiB")


if __name__ == "__main__":
    main()
