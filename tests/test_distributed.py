"""Data-parallel training: the collectives on 2 gloo processes, and 2-rank runs launched by torchrun."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import train
from agent.returns import RetNorm
from replay.chunks import current, list_chunks
from run.checkpoint import Checkpointer, load
from run.distributed import DistributedError, World, fingerprint, init_world

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
RUN = ["--configs", "debug", "--run.train_ratio", "16", "--logger.wandb.mode", "disabled"]


# --- the collectives, on two gloo processes -----------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _collectives(rank: int, port: int, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    world = init_world("auto", "cpu")
    results = {"backend": world.backend}
    try:
        # Gradients and loss averaged; a parameter without a gradient stays without one. Buckets of one
        # parameter each, [b], [a], [unused] (reverse order): those of b and a start during backward.
        unused, a, b = (torch.nn.Parameter(torch.zeros(3)) for _ in range(3))
        torch.optim.Adam([a, b])  # as in training: imports torch's lazily imported modules after init
        grads = world.grad_averager([unused, a, b], bucket_mb=1e-6)
        ((rank + 1) * (a.sum() + (torch.arange(3.0) * b).sum())).backward()
        results["started_in_backward"] = len(grads.started)
        loss = grads.finish(torch.tensor(10.0 * (rank + 1)))
        results.update(a=a.grad.tolist(), b=b.grad.tolist(), unused=unused.grad, loss=float(loss))
        # A non-finite gradient on one rank reaches every rank.
        a.grad = b.grad = None
        (a.sum() * (float("nan") if rank == 1 else 1.0)).backward()
        grads.finish(torch.tensor(0.0))
        results["nan"] = bool(torch.isnan(a.grad).all())
        # The return normalizer's percentiles over both ranks' returns.
        torch.manual_seed(rank)
        ret = torch.randn(64, 16) * (rank + 1)
        stats = RetNorm(decay=0.0).update(world.all_gather(ret))
        results.update(ret=ret.tolist(), lo=float(stats.lo), hi=float(stats.hi))
        # Rank 0's weights everywhere; flags OR-ed; sums; objects gathered on rank 0.
        torch.manual_seed(100 + rank)
        net = torch.nn.Linear(4, 3)
        world.broadcast_modules(net)
        results["weights"] = fingerprint(net.state_dict())
        results["any"] = world.any([rank == 1, False])
        results["sum"] = world.sum(rank + 2.5)
        results["gathered"] = world.gather_object({"rank": rank})
        world.barrier()
    finally:
        world.close()
    tasks = Path("/proc/self/task")
    if tasks.is_dir():
        results["threads"] = sorted((t / "comm").read_text().strip() for t in tasks.iterdir())
    torch.save(results, Path(out) / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def collectives(tmp_path_factory):
    out = tmp_path_factory.mktemp("collectives")
    mp.spawn(_collectives, args=(free_port(), str(out)), nprocs=2, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


def test_gloo_is_chosen_on_the_cpu(collectives):
    assert [r["backend"] for r in collectives] == ["gloo", "gloo"]


def test_closing_the_world_joins_the_process_groups_threads(collectives):
    # Left alive, the group would be torn down during interpreter shutdown, which aborts a rank at random.
    if "threads" not in collectives[0]:
        pytest.skip("needs /proc to list threads")
    for r in collectives:
        assert not [name for name in r["threads"] if "gloo" in name], r["threads"]


def test_gradients_and_loss_are_averaged_over_ranks_starting_during_backward(collectives):
    for r in collectives:
        assert r["started_in_backward"] == 2
        assert r["a"] == [1.5, 1.5, 1.5]
        assert r["b"] == [0.0, 1.5, 3.0]
        assert r["unused"] is None
        assert r["loss"] == 15.0


def test_a_nonfinite_gradient_on_one_rank_is_nonfinite_on_all(collectives):
    assert [r["nan"] for r in collectives] == [True, True]


def test_return_percentiles_pool_both_ranks(collectives):
    pooled = np.concatenate([np.asarray(r["ret"], np.float32).reshape(-1) for r in collectives])
    lo, hi = np.percentile(pooled, [5, 95])
    for r in collectives:
        assert r["lo"] == pytest.approx(lo, rel=1e-5)
        assert r["hi"] == pytest.approx(hi, rel=1e-5)
    # ...which differ from either rank's own percentiles.
    own = np.percentile(np.asarray(collectives[0]["ret"]), 95)
    assert abs(own - hi) > 0.1


def test_broadcast_flags_sums_and_gathers(collectives):
    assert collectives[0]["weights"] == collectives[1]["weights"]
    assert [r["any"] for r in collectives] == [[True, False], [True, False]]
    assert [r["sum"] for r in collectives] == [6.0, 6.0]
    assert collectives[0]["gathered"] == [{"rank": 0}, {"rank": 1}]
    assert collectives[1]["gathered"] is None


def test_bad_backends_are_clear_errors(monkeypatch):
    with pytest.raises(DistributedError, match="run.dist_backend must be one of auto, nccl, gloo; got 'mpi'"):
        init_world("mpi", "cpu")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(DistributedError, match="'nccl' needs CUDA"):
        init_world("nccl", "cpu")


def captured_init(monkeypatch) -> dict:
    """Join a 2-rank world as rank 0 with `init_process_group` replaced by a recorder of its arguments."""
    seen: dict = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kw: seen.update(backend=backend, **kw))
    monkeypatch.setattr(dist, "new_group", lambda **kw: seen.setdefault("host_group", kw) and "host group")
    return seen


def test_the_group_gets_the_configured_timeout_and_on_cuda_the_ranks_device(monkeypatch):
    from datetime import timedelta

    seen = captured_init(monkeypatch)
    assert init_world("auto", "cpu", timeout_s=5400).host_group is None  # gloo: host values use the group
    assert seen == {"backend": "gloo", "timeout": timedelta(seconds=5400), "device_id": None}
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: seen.update(set_device=device))
    world = init_world("nccl", "cuda", timeout_s=7200)
    expected = {"backend": "nccl", "timeout": timedelta(seconds=7200), "device_id": torch.device("cuda", 1)}
    # Beside nccl, flags and counts are agreed over a gloo group: never behind the GPU's queue.
    host = {"backend": "gloo", "timeout": timedelta(seconds=7200)}
    assert seen == {**expected, "set_device": 1, "host_group": host} and world.host_group == "host group"


def test_train_passes_run_dist_timeout_s_to_the_group(monkeypatch, tmp_path):
    from configs.loader import load_config

    class Joined(Exception):
        pass

    def joined(backend, device, timeout_s):
        raise Joined(timeout_s)

    monkeypatch.setattr("run.distributed.init_world", joined)
    config = load_config(["debug"], {"logdir": str(tmp_path), "run": {"dist_timeout_s": 900}})
    with pytest.raises(Joined, match="900"):
        train.train(config)
    assert load_config(["debug"]).run.dist_timeout_s == 3600  # long enough for a rank-0 evaluation


def test_a_single_process_never_touches_torch_distributed(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert init_world("auto", "cpu") == World()
    assert not dist.is_initialized()


# --- two ranks launched by torchrun on the debug preset ----------------------------------------------


def torchrun(logdir: Path, steps: int) -> subprocess.CompletedProcess:
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(ROOT / "train.py"), *RUN, "--logdir", str(logdir), "--run.steps", str(steps),
        "--env.num_envs", "2", "--run.save_every_steps", "100",
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT, env=ENV)


def shard_steps(logdir: Path) -> list[int]:
    """Steps each rank's replay shard holds on disk."""
    shards = sorted((logdir / "replay").glob("rank*"))
    return [
        sum(c.length for files in list_chunks(shard).values() for c in current(files)) for shard in shards
    ]


def logged(logdir: Path) -> list[dict]:
    return [json.loads(line) for line in (logdir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("ddp") / "run"
    first = torchrun(logdir, 200)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    state = load(logdir)
    return logdir, first, state


def test_ranks_hold_identical_weights_after_their_updates(two_ranks):
    _, _, state = two_ranks
    assert state["world_size"] == 2
    counters = [r["loop"]["counters"] for r in state["ranks"]]
    # A rank trains once its shard holds B x T = 32 windows of 1 + 8 steps (a context step first): 2
    # streams x (24 - 8) after 24 vector steps, global step 96 (4 per vector step). From there one update
    # at once, then 16 / (8 x 8) = 0.25 per global step: 1 + floor((108 - 1) / 4) over the 108 steps from
    # 92 to 200.
    assert counters[0]["updates"] == counters[1]["updates"] == 1 + (200 - 92 - 1) // 4
    saved = fingerprint(state["agent"]["world_model"], state["agent"]["actor_critic"])
    assert [r["weights_sha256"] for r in state["ranks"]] == [saved, saved]


def test_ranks_collect_different_data_and_the_step_counts_add_up(two_ranks):
    logdir, first, state = two_ranks
    assert shard_steps(logdir) == [100, 100]  # 200 policy steps in all, half on each rank
    rows = logged(logdir)
    assert rows[-1]["step"] == 200 and state["step"] == 200
    episodes = [r["loop"]["counters"]["episodes"] for r in state["ranks"]]
    assert rows[-1]["episodes"] == sum(episodes) and min(episodes) > 0
    # Each rank stores the latents of its own steps, refreshed by training on its own batches.
    latents = [
        np.load(logdir / "replay" / f"rank{r}" / "context" / "0000.npz")["context/deter"] for r in (0, 1)
    ]
    assert latents[0].shape == latents[1].shape and not np.array_equal(*latents)
    assert "finished after 200 steps" in first.stdout and first.stdout.count("finished after") == 1


def test_a_two_rank_run_resumes_from_its_checkpoint(two_ranks):
    logdir, _, before = two_ranks
    second = torchrun(logdir, 300)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "at step 200 (replay holds 100 steps)" in second.stdout  # rank 0's shard came back
    after = load(logdir)
    assert after["step"] == 300
    updates = [r["loop"]["counters"]["updates"] for r in after["ranks"]]
    assert updates[0] == updates[1] > before["ranks"][0]["loop"]["counters"]["updates"]
    saved = fingerprint(after["agent"]["world_model"], after["agent"]["actor_critic"])
    assert [r["weights_sha256"] for r in after["ranks"]] == [saved, saved]
    assert shard_steps(logdir) == [150, 150]
    assert [row["step"] for row in logged(logdir)][-1] == 300
    assert Checkpointer(logdir / "checkpoints").latest().name == "ckpt-000000300.pt"


def test_a_two_rank_checkpoint_is_refused_by_a_single_process(two_ranks, capsys):
    logdir, _, _ = two_ranks
    status = train.main([*RUN, "--logdir", str(logdir), "--run.steps", "400", "--env.num_envs", "2"])
    assert status == 1
    err = capsys.readouterr().err
    assert "was written by a run on 2 rank(s); resume it on 2 (torchrun --nproc_per_node 2" in err
