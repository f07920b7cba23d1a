"""What each speed trick of nets/ is worth: ms per full update with it and with its plain version.

Variants, each the default update with one trick replaced by the plain computation it stands for:

- `dense-imagination`: imagination holds one-hot latents dense (`WorldModel.starts(grad=True)`), so
  every head's first layer multiplies by S*K mostly zero inputs and the prior is sampled dense, instead
  of gathering the weight columns of the hot classes and sampling them directly (`nets/onehot.py`).
- `embedding-bag-backward`: the gathers' backward is embedding_bag's own, not `_GatherSum`'s.
- `actor-again`: the policy loss runs the actor again on the imagined features instead of reading the
  outputs it acted with in the rollout (`agent.actor_critic.Acting`).

The variants run interleaved in one process, `--rounds` times over, `--repeats` timed updates each after
a warm-up update, on one agent per (preset, observation), so they see the same weights, batch and
background load. Prints each variant's median ms and its cost over the default, in %.

    python bench/tricks.py --presets v1,xs size12m --obs vector --threads 1

`run.keep_freed_memory` is process-wide; `bench/update.py --default-malloc` measures it in a fresh process.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import nets.onehot  # noqa: E402
from agent import make_agent  # noqa: E402
from bench.update import ACT_SPACE, OBS_SPACES, config_batch, timed_update  # noqa: E402
from configs.loader import load_config  # noqa: E402
from run.host import setup_cpu  # noqa: E402


@contextlib.contextmanager
def dense_imagination(agent):
    starts = agent.wm.starts
    agent.wm.starts = lambda states, grad: starts(states, grad=True)
    try:
        yield
    finally:
        del agent.wm.starts


@contextlib.contextmanager
def embedding_bag_backward(agent):
    gather_sum = nets.onehot.gather_sum
    nets.onehot.gather_sum = lambda table, rows: F.embedding_bag(rows, table, mode="sum")
    try:
        yield
    finally:
        nets.onehot.gather_sum = gather_sum


@contextlib.contextmanager
def actor_again(agent):
    imag_loss = agent.ac.imag_loss
    again = lambda traj: traj._replace(policy=agent.ac.actor.net(traj.feat.detach()))
    agent.ac.imag_loss = lambda traj, normalize: imag_loss(again(traj), normalize)
    try:
        yield
    finally:
        del agent.ac.imag_loss


VARIANTS = {
    "default": contextlib.nullcontext,
    "dense-imagination": dense_imagination,
    "embedding-bag-backward": embedding_bag_backward,
    "actor-again": actor_again,
}


def measure(preset: str, obs: str, args) -> dict[str, float]:
    config = load_config(preset.split(","), {"run": {"device": "cpu", "precision": "float32"}})
    torch.manual_seed(0)
    agent = make_agent(config, OBS_SPACES[obs], ACT_SPACE)
    data = agent.to_device(config_batch(config, OBS_SPACES[obs]))
    runs: dict[str, list[float]] = {name: [] for name in args.variants}
    carry = None
    for _ in range(args.rounds):
        for name in args.variants:
            variant = VARIANTS[name] if name == "default" else lambda v=VARIANTS[name]: v(agent)
            with variant():
                for i in range(1 + args.repeats):
                    times, carry = timed_update(agent, data, carry)
                    if i:
                        runs[name].append(1000 * times["total"])
    return {name: statistics.median(ms) for name, ms in runs.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["v1,xs", "size12m"])
    parser.add_argument("--obs", nargs="+", default=["vector"], choices=list(OBS_SPACES))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    if "default" not in args.variants:
        args.variants = ["default", *args.variants]
    setup_cpu(args.threads, keep_memory=True)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, cpu, float32")
    print(f"{'preset':<9} {'obs':<7} " + " ".join(f"{v:>24}" for v in args.variants))
    for preset in args.presets:
        for obs in args.obs:
            ms = measure(preset, obs, args)
            base = ms["default"]
            cells = [f"{ms[v]:>8.0f}ms ({100 * (ms[v] / base - 1):>+5.1f}%)" for v in args.variants]
            print(f"{preset:<9} {obs:<7} " + " ".join(f"{c:>24}" for c in cells), flush=True)
    print(f"median of {args.rounds} rounds x {args.repeats} updates per variant, interleaved")


if __name__ == "__main__":
    main()
