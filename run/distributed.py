"""Data-parallel training across processes with torch.distributed, launched by `torchrun`.

    torchrun --standalone --nproc_per_node 2 train.py --configs cartpole small --logdir runs/x

Every rank runs the whole loop on its own envs (distinct seeds) and its own replay shard
(`<logdir>/replay/rank<r>`). The gradients are averaged across ranks in buckets that start during each
backward pass (`GradAverager`), and the loss after it, so every rank applies the same optimizer step and
all ranks hold identical weights. The return normalizer computes its percentiles over the returns of all
ranks, logged scalars are averaged over all ranks (episode statistics pool every rank's episodes), and
only rank 0 evaluates, renders videos, writes logs and writes checkpoints; a checkpoint holds every
rank's own state (replay sampler, training carry, counters, random states) beside the shared weights, so
a resume on the same number of ranks continues each rank where it was.

Counters are global: `run.steps` is the total over all ranks and envs, and each loop iteration adds
`num_envs x world_size` policy steps on every rank. The effective batch of an update is
`world_size x replay.batch_size` sequences; updates per policy step are
`train_ratio / (world_size x B x T)`, so every collected step is still replayed `train_ratio` times on
average, as in a single process (see the README for the trade-offs).

Without torchrun (no WORLD_SIZE in the environment, or WORLD_SIZE=1) nothing here touches
torch.distributed: the world is one process, whose collective operations are no-ops (`any` returns its
flags, `sum` its value, `all_gather` its input, `grad_averager` None, ...). So the loop and the
agent take the same calls in one process as across ranks.
"""

from __future__ import annotations

import hashlib
import importlib
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import Tensor, nn

from configs.schema import DIST_BACKENDS


class DistributedError(RuntimeError):
    """A process group that cannot be set up as configured, or ranks that disagree."""


@dataclass(frozen=True)
class World:
    """This process's place among the training processes; a single process is `World()`, whose
    collective operations leave their inputs as they are."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str = ""
    # The group the host's own values (flags, counts) are agreed over: a gloo group beside nccl, so that
    # agreeing on them never waits for a GPU's queue; None is the default group.
    host_group: Any = None

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # --- what the agent needs ---------------------------------------------------------------------

    def grad_averager(self, params: list[Tensor], bucket_mb: float = 25.0) -> GradAverager | None:
        """What averages the gradients of `params` over all ranks during each backward pass (see
        `GradAverager`); None in one process."""
        return GradAverager(params, self.size, bucket_mb) if self.distributed else None

    def all_gather(self, x: Tensor) -> Tensor:
        """Concatenate `x` (the same shape on every rank) from all ranks along dim 0, in rank order."""
        if not self.distributed:
            return x
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(self.size)]
        dist.all_gather(parts, x)
        return torch.cat(parts)

    # --- what the loop needs ----------------------------------------------------------------------

    def broadcast_modules(self, *modules: nn.Module) -> None:
        """Give every rank rank 0's parameters and buffers (fresh weights differ by seed)."""
        if not self.distributed:
            return
        for module in modules:
            for tensor in module.state_dict().values():
                dist.broadcast(tensor, src=0)

    def any(self, flags: list[bool]) -> list[bool]:
        """Element-wise OR of boolean flags over all ranks (decisions every rank must take together),
        agreed on the host (`host_group`)."""
        if not self.distributed:
            return list(flags)
        t = torch.tensor(flags, dtype=torch.int32)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.host_group)
        return [bool(v) for v in t.tolist()]

    def sum(self, value: float) -> float:
        """`value` summed over all ranks, on the host (`host_group`)."""
        if not self.distributed:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t, group=self.host_group)
        return float(t.item())

    def gather_object(self, obj: Any) -> list[Any] | None:
        """Every rank's `obj` (picklable, tensors on the CPU) on rank 0 in rank order; None elsewhere."""
        if not self.distributed:
            return [obj]
        out = [None] * self.size if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out

    # --- what the checkpoint needs ----------------------------------------------------------------

    def gather_ranks(self, state: dict, own: Callable[[dict], dict]) -> dict | None:
        """The group's checkpoint on rank 0 (None on the other ranks): `state`, whose entries are the same
        on every rank except those in `own(state)`, plus every rank's `own(state)` (its own part, with the
        sha256 of its weights under `weights_sha256`) under "ranks", after checking that all ranks hold
        the same weights. One process: `state` as it is."""
        if not self.distributed:
            return state
        ranks = self.gather_object(own(state))
        if ranks is None:
            return None
        check_replicas(ranks)
        return {**state, "world_size": self.size, "ranks": ranks}

    def own_state(self, state: dict) -> dict:
        """This rank's view of a checkpoint written by `gather_ranks`: its own part over the shared state.
        One process: `state` as it is."""
        if not self.distributed:
            return state
        return {**state, **state["ranks"][self.rank]}

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def close(self) -> None:
        """Leave the process group. After a clean end call `barrier` first: a rank that tears its
        connections down while a peer still uses them makes that peer abort."""
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


class GradAverager:
    """Averages `.grad` over all ranks while the backward pass still runs, as DDP does, without its
    module wrapper (an update calls the world model's modules many times per backward pass).

    The parameters are split in reverse order (about the order in which backward completes their
    gradients) into buckets of about `bucket_mb`. A hook counts each parameter whose gradient is fully
    accumulated; once every parameter of the next bucket has its gradient, that bucket's all-reduce
    starts without blocking, so buckets start in the same order on every rank and overlap the rest of
    the backward pass. `finish(loss)` starts the buckets left (those holding a parameter without a
    gradient), waits for all, writes the averages into `.grad` and returns the averaged loss.

    Parameters without a gradient (the same ones on every rank: the graph is the same) stay without one.
    A non-finite gradient on any rank makes the average non-finite on every rank, so all ranks skip that
    update together.
    """

    def __init__(self, params: list[Tensor], size: int, bucket_mb: float = 25.0):
        self.size = size
        self.buckets: list[list[Tensor]] = [[]]
        limit, used = bucket_mb * 2**20, 0.0
        for p in reversed([p for p in params if p.requires_grad]):
            if used >= limit:
                self.buckets.append([])
                used = 0.0
            self.buckets[-1].append(p)
            used += p.numel() * p.element_size()
        self.bucket_of = {id(p): i for i, bucket in enumerate(self.buckets) for p in bucket}
        for bucket in self.buckets:
            for p in bucket:
                p.register_post_accumulate_grad_hook(self._on_grad)
        self._reset()

    def _reset(self) -> None:
        self.ready = [0] * len(self.buckets)
        self.started: list[tuple[list[Tensor], Tensor, Any]] = []

    def _on_grad(self, p: Tensor) -> None:
        self.ready[self.bucket_of[id(p)]] += 1
        while len(self.started) < len(self.buckets):
            i = len(self.started)
            if self.ready[i] < len(self.buckets[i]):
                break
            self._start(i)

    def _start(self, i: int) -> None:
        params = [p for p in self.buckets[i] if p.grad is not None]
        if not params:  # the same on every rank: nothing to exchange
            self.started.append(([], None, None))
            return
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        self.started.append((params, flat, dist.all_reduce(flat, async_op=True)))

    def finish(self, loss: Tensor) -> Tensor:
        """Complete this backward pass's averages (see the class); returns the averaged loss, detached."""
        while len(self.started) < len(self.buckets):
            self._start(len(self.started))
        loss = loss.detach().float().reshape(1).clone()
        dist.all_reduce(loss)
        for params, flat, work in self.started:
            if work is None:
                continue
            work.wait()
            flat /= self.size
            for p, average in zip(params, flat.split([p.numel() for p in params]), strict=True):
                p.grad.copy_(average.view_as(p.grad))
        self._reset()
        return loss[0] / self.size


def check_replicas(ranks: list[dict]) -> None:
    """All ranks must hold the same weights; a difference means the replicas diverged."""
    prints = [r["weights_sha256"] for r in ranks]
    if len(set(prints)) > 1:
        raise RuntimeError(f"data-parallel ranks hold different weights (sha256 per rank: {prints})")


def init_world(backend: str = "auto", device: str = "auto", timeout_s: float = 3600.0) -> World:
    """Join the process group torchrun describes (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR/PORT).

    `backend` "auto" takes nccl when the ranks train on CUDA and gloo on the CPU. On CUDA each rank uses
    the GPU of its local rank, bound to the group as its `device_id`. `timeout_s` (`run.dist_timeout_s`)
    is how long a collective may wait for the other ranks. Without WORLD_SIZE (or with 1) this is a
    single process and returns `World()` without touching torch.distributed.
    """
    if backend not in DIST_BACKENDS:
        raise DistributedError(f"run.dist_backend must be one of {', '.join(DIST_BACKENDS)}; got '{backend}'")
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = uses_cuda(device)
    if backend == "auto":
        backend = "nccl" if cuda else "gloo"
    if backend == "nccl" and not cuda:
        raise DistributedError("run.dist_backend 'nccl' needs CUDA; set run.device to cuda or use 'gloo'")
    if cuda:
        torch.cuda.set_device(local_rank)
    # torch.distributed.nn binds the default group as a default argument when it is first imported, and
    # torch imports it lazily (building an optimizer imports torch._dynamo, which imports it). Imported
    # after the group exists, it would keep the group alive past `close`, to be torn down during
    # interpreter shutdown, where gloo's threads abort the process at random. Import it first.
    importlib.import_module("torch.distributed.nn")
    if not dist.is_initialized():
        device_id = torch.device("cuda", local_rank) if cuda else None
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s), device_id=device_id)
    host_group = dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout_s)) if cuda else None
    return World(rank, size, local_rank, backend, host_group)


def uses_cuda(device: str) -> bool:
    return device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())


def rank_device(device: str, world: World) -> str:
    """`run.device` for this rank: CUDA ranks use the GPU of their local rank."""
    if world.distributed and uses_cuda(device):
        return f"cuda:{world.local_rank}"
    return device


def fingerprint(*states: dict[str, Tensor]) -> str:
    """sha256 of the names and bytes of the tensors of state dicts: equal exactly when they are equal."""
    digest = hashlib.sha256()
    for state in states:
        for name, tensor in state.items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def to_cpu(obj: Any) -> Any:
    """The same nested dicts, lists and tuples with every tensor moved to the CPU."""
    if isinstance(obj, Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj
