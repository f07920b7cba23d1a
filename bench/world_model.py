"""Milliseconds per world-model update (forward + backward + Adam step) at B x T on this machine.

    python bench/world_model.py                       # size1m and size12m, vector and 64x64 images
    python bench/world_model.py --presets size1m --obs vector --repeats 5 --batch 16 --length 64

Prints the median of `repeats` timed updates after `warmup` untimed ones, with torch's default threads
unless --threads is given.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from configs.loader import load_config  # noqa: E402
from envs.spaces import ActionSpace, ArraySpec  # noqa: E402
from run.host import setup_cpu  # noqa: E402
from world_model.world_model import WorldModel  # noqa: E402

OBS = {
    "vector": {"vector": ArraySpec((4,), np.float32)},
    "image": {"image": ArraySpec((64, 64, 3), np.uint8)},
}
ACTIONS = 2


def make_batch(obs_space: dict[str, ArraySpec], B: int, T: int) -> dict[str, torch.Tensor]:
    data = {
        "action": F.one_hot(torch.randint(0, ACTIONS, (B, T)), ACTIONS).float(),
        "reward": torch.randn(B, T),
        "is_first": torch.zeros(B, T, dtype=torch.bool),
        "is_last": torch.zeros(B, T, dtype=torch.bool),
        "is_terminal": torch.zeros(B, T, dtype=torch.bool),
    }
    data["is_first"][:, 0] = True
    for key, spec in obs_space.items():
        if spec.is_image:
            data[key] = torch.randint(0, 256, (B, T, *spec.shape), dtype=torch.uint8)
        else:
            data[key] = torch.randn(B, T, *spec.shape)
    return data


def time_updates(preset: str, obs: str, B: int, T: int, warmup: int, repeats: int) -> tuple[float, int]:
    """(median ms per update, parameter count)."""
    cfg = load_config([preset])
    wm = WorldModel(cfg.world_model, OBS[obs], ActionSpace("discrete", ACTIONS, (ACTIONS,)), 0.997)
    opt = torch.optim.Adam(wm.parameters(), lr=1e-4)
    data = make_batch(OBS[obs], B, T)
    times = []
    for i in range(warmup + repeats):
        start = time.perf_counter()
        loss = wm.loss(data).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times), sum(p.numel() for p in wm.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--presets", nargs="+", default=["size1m", "size12m"])
    parser.add_argument("--obs", nargs="+", default=["vector", "image"], choices=sorted(OBS))
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    setup_cpu(args.threads, keep_memory=True)  # as train.py with run.keep_freed_memory
    torch.manual_seed(0)
    print(
        f"world-model update, B={args.batch} T={args.length}, threads={torch.get_num_threads()}, "
        f"median of {args.repeats} after {args.warmup} warm-up"
    )
    for preset in args.presets:
        for obs in args.obs:
            ms, params = time_updates(preset, obs, args.batch, args.length, args.warmup, args.repeats)
            print(f"{preset:10s} {obs:7s} params {params / 1e6:6.2f}M   {ms:9.1f} ms/update", flush=True)


if __name__ == "__main__":
    main()
