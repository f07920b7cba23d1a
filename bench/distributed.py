"""Updates per second with 1, 2, ... data-parallel processes on one machine (gloo on CPU, nccl on GPUs).

Each process builds the agent of `--preset`, joins the process group the same way `train.py` does
under torchrun (`run.distributed.init_world`), gets rank 0's weights, and runs full updates
(`Agent.train`, gradients all-reduced) on its own synthetic batch of B x T steps. The table gives the
median ms per update over the ranks' timed updates, updates/s of the group, and replayed samples/s
(world size x B x T per update): the throughput that data parallelism is meant to scale.

    python bench/distributed.py --preset small --procs 1 2 --threads 1 --repeats 10

On a 2-core CPU, 2 processes share the cores the single process had to itself, so expect no speed-up
there; the all-reduce's own share shows in the `allreduce` column (one update's gradient sync).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent import make_agent  # noqa: E402
from bench.update import ACT_SPACE, OBS_SPACES, config_batch, sync  # noqa: E402
from configs.loader import load_config  # noqa: E402
from run.distributed import init_world, rank_device  # noqa: E402
from run.host import setup_cpu  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(rank: int, size: int, port: int, args: argparse.Namespace, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(size),
        LOCAL_RANK=str(rank),
    )  # fmt: skip
    setup_cpu(args.threads, keep_memory=True)  # as train.py with run.keep_freed_memory
    world = init_world("auto", args.device)
    torch.manual_seed(rank)
    config = load_config(args.preset.split(","), {"run": {"device": rank_device(args.device, world)}})
    agent = make_agent(config, OBS_SPACES[args.obs], ACT_SPACE)
    if world.distributed:
        world.broadcast_modules(agent.wm, agent.ac)
        agent.data_parallel(world)
    batch = config_batch(config, OBS_SPACES[args.obs], seed=rank)
    state, times, reduce_times = None, [], []
    for i in range(args.warmup + args.repeats):
        sync(agent.device)
        t0 = time.perf_counter()
        state, _, _ = agent.train(batch, state)
        sync(agent.device)
        t1 = time.perf_counter()
        if world.distributed:  # one extra gradient all-reduce of every bucket, timed alone
            agent.grads.finish(torch.zeros((), device=agent.device))
        sync(agent.device)
        t2 = time.perf_counter()
        if i >= args.warmup:
            times.append(t1 - t0)
            reduce_times.append(t2 - t1)
    B, T = config.replay.batch_size, config.replay.batch_length
    torch.save({"times": times, "reduce": reduce_times, "B": B, "T": T}, Path(out) / f"rank{rank}.pt")
    world.barrier()
    world.close()


def run(size: int, args: argparse.Namespace) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as out:
        if size == 1:
            worker(0, 1, 0, args, out)
        else:
            mp.spawn(worker, args=(size, free_port(), args, out), nprocs=size, join=True)
        results = [torch.load(Path(out) / f"rank{r}.pt") for r in range(size)]
    ms = 1000 * statistics.median(t for r in results for t in r["times"])
    reduce_ms = 1000 * statistics.median(t for r in results for t in r["reduce"])
    samples = size * results[0]["B"] * results[0]["T"]
    return {"ms": ms, "allreduce_ms": reduce_ms, "updates_s": 1000 / ms, "samples_s": samples * 1000 / ms}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small", help="presets joined by commas, e.g. v1,xs")
    parser.add_argument("--obs", default="vector", choices=list(OBS_SPACES))
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process on CPU")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (one GPU per process)")
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {args.preset}, {args.obs}, {args.device}, {args.threads} thread(s)")
    print(f"{'procs':>5} {'ms/update':>10} {'allreduce':>10} {'updates/s':>10} {'samples/s':>10}")
    for size in args.procs:
        r = run(size, args)
        print(
            f"{size:>5} {r['ms']:>8.0f}ms {r['allreduce_ms']:>8.1f}ms {r['updates_s']:>10.2f} "
            f"{r['samples_s']:>10.0f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
