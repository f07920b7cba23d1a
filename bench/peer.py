"""Our full update against SheepRL's DreamerV3, interleaved on the same machine, like for like.

Each round runs, for every (size, observation), `bench/update.py` on our `v1,<size>` presets and then
`bench/peer_sheeprl.py` on SheepRL's `dreamer_v3_<SIZE>` in its own virtual environment, each in a fresh
process with the same thread count, B=16, T=64, H=15, 2 discrete actions. Interleaving the two sides
round by round exposes both to the same background load. The table gives each side's median over the
rounds of its per-run median ms per update, and the ratio peer / ours (above 1: we are faster). "best"
is the ratio ours would reach if only its matmuls and convolutions took time (SheepRL's ms over our
"kernels" of bench/update.py: those calls replayed alone, back to back).

Ours runs as train.py does, with `run.keep_freed_memory` (run/host.py). `--peer-keep-freed-memory`
gives SheepRL's processes the same glibc thresholds (through glibc's MALLOC_*_ environment variables),
to separate that setting from the rest of the difference.

    python3 -m venv /work/sheeprl-venv
    /work/sheeprl-venv/bin/pip install torch==2.13.0 sheeprl==0.8.4
    .venv/bin/python bench/peer.py --peer-python /work/sheeprl-venv/bin/python \
        --sizes xs s --obs vector image --threads 1 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from run.host import MMAP_THRESHOLD, TRIM_THRESHOLD  # noqa: E402

# What `run.host.keep_freed_memory` sets, as glibc reads it from the environment at process start.
KEEP_FREED_MEMORY_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD),
    "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD),
}
PEER_LINE = re.compile(
    r"^sheeprl (\w+) (\w+)\s+total_ms=([\d.]+)\s+world_model_ms=([\d.]+)\s+behavior_ms=([\d.]+)"
    r".*gflop=([\d.]+)"
)


def ours(size: str, obs: str, args: argparse.Namespace) -> dict[str, float]:
    command = [
        sys.executable, str(ROOT / "bench" / "update.py"), "--presets", f"v1,{size}", "--obs", obs,
        "--threads", str(args.threads), "--repeats", str(args.repeats), "--warmup", str(args.warmup),
        "--json",
    ]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT).stdout
    row = json.loads(next(line for line in out.splitlines() if line.startswith("{")))
    keep = ("total", "world_model", "gflop", "kernels")
    return {"behavior": row["total"] - row["world_model"], **{k: row[k] for k in keep}}


def peer(size: str, obs: str, args: argparse.Namespace) -> dict[str, float]:
    command = [
        args.peer_python, str(ROOT / "bench" / "peer_sheeprl.py"), "--presets", size, "--obs", obs,
        "--threads", str(args.threads), "--repeats", str(args.repeats), "--warmup", str(args.warmup),
        "--flops",
    ]  # fmt: skip
    env = {**os.environ, **(KEEP_FREED_MEMORY_ENV if args.peer_keep_freed_memory else {})}
    out = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT, env=env).stdout
    match = next(m for m in map(PEER_LINE.match, out.splitlines()) if m)
    total, world_model, behavior, gflop = (float(match.group(i)) for i in (3, 4, 5, 6))
    return {"total": total, "world_model": world_model, "behavior": behavior, "gflop": gflop}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer-python", default="/work/sheeprl-venv/bin/python")
    parser.add_argument("--sizes", nargs="+", default=["xs", "s"], choices=["xs", "s"])
    parser.add_argument("--obs", nargs="+", default=["vector", "image"], choices=["vector", "image"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument(
        "--peer-keep-freed-memory",
        action="store_true",
        help="SheepRL with the glibc thresholds of our run.keep_freed_memory",
    )
    args = parser.parse_args(argv)
    runs: dict[tuple[str, str, str], list[dict[str, float]]] = {}
    for round_ in range(args.rounds):
        for size in args.sizes:
            for obs in args.obs:
                for side, fn in (("ours", ours), ("sheeprl", peer)):
                    r = fn(size, obs, args)
                    runs.setdefault((size, obs, side), []).append(r)
                    print(
                        f"round {round_ + 1} {size:<2} {obs:<6} {side:<7} {r['total']:>8.0f} ms", flush=True
                    )
    peer_malloc = "ours" if args.peer_keep_freed_memory else "default"
    print(
        f"\nmedian ms per full update over {args.rounds} interleaved rounds, {args.threads} thread(s); "
        f"SheepRL's malloc thresholds: {peer_malloc}"
    )
    print("ours split: world-model forward / the rest (behaviour forward, one backward, optimizer step);")
    print("sheeprl split: world-model learning / behaviour learning (each forward, backward and step)")
    print("GFLOP per update (matmuls and convolutions, torch's FlopCounterMode) and GFLOP/s on each side")
    head = f"{'ms':>8} {'(split)':>13} {'GFLOP':>6} {'GF/s':>5}"
    print(f"{'size':<4} {'obs':<6} ours {head}  sheeprl {head}  {'ratio':>6} {'best':>6}")
    for size in args.sizes:
        for obs in args.obs:
            med = {
                side: {
                    k: statistics.median(r[k] for r in runs[(size, obs, side)])
                    for k in runs[(size, obs, side)][0]
                }
                for side in ("ours", "sheeprl")
            }
            o, p = med["ours"], med["sheeprl"]
            ratio = p["total"] / o["total"]
            side = lambda r: (
                f"{r['total']:>8.0f} {r['world_model']:>6.0f}/{r['behavior']:<6.0f} "
                f"{r['gflop']:>6.1f} {r['gflop'] / r['total'] * 1000:>5.1f}"
            )
            best = p["total"] / o["kernels"]
            print(f"{size:<4} {obs:<6}      {side(o)}          {side(p)}  {ratio:>5.2f}x {best:>5.2f}x")


if __name__ == "__main__":
    main()
