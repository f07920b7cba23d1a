"""Milliseconds per full update of SheepRL's DreamerV3 (presets `dreamer_v3_XS`, `dreamer_v3_S`) on CPU.

The peer's counterpart of `bench/update.py`, for interleaved comparisons on the same machine: synthetic
CartPole-like batches (a 4-dim vector observation `state` or a 64x64x3 image `rgb`, 2 discrete actions) of
B=16 sequences of T=64 steps, imagination horizon 15. It runs in its own virtual environment and imports
nothing from this project:

    python3 -m venv /work/sheeprl-venv
    /work/sheeprl-venv/bin/pip install torch==2.13.0 sheeprl==0.8.4
    /work/sheeprl-venv/bin/python bench/peer_sheeprl.py --presets xs s --obs vector image \
        --threads 1 --repeats 3

The agent is built the way SheepRL's `dreamer_v3.main` builds it: the configuration composed by Hydra from
SheepRL's own config directory with the overrides of its command line

    exp=dreamer_v3 env=gym env.id=CartPole-v1 algo=dreamer_v3_XS fabric.accelerator=cpu env.num_envs=1
    algo.cnn_keys.encoder=[] algo.cnn_keys.decoder=[]
    algo.mlp_keys.encoder=[state] algo.mlp_keys.decoder=[state]

(`[rgb]` and `[]` for images), the settings of `sheeprl.cli.run_algorithm` (matmul precision, distribution
argument checks, metric aggregator), a CPU Lightning Fabric, `build_agent`, the three optimizers set up by
Fabric and the return normalizer. One update is what the training loop of `main` runs per gradient step:
the soft update of the target critic, then SheepRL's own `train(...)` (world-model learning, imagination,
actor and critic learning, their optimizer steps and the metric updates). The world-model and behaviour
parts are timed by wrapping `world_model_learning` and `behaviour_learning`, which `train` calls; `other` is
the rest (target critic, metrics, zeroing of the gradients).

Prints one line per (preset, observation), the median over `--repeats` timed updates after `--warmup` untimed
ones, e.g.

    sheeprl xs vector  total_ms=2940.0  world_model_ms=420.0  behavior_ms=2510.0  other_ms=10.0  ...

Every configuration runs in a fresh process (unless `--in-process`), so that its peak resident memory
(`peak_rss_mib`, the high-water mark of the process) is its own.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager, nullcontext
from importlib.metadata import version

import gymnasium as gym
import hydra
import numpy as np
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from sheeprl.algos.dreamer_v3 import dreamer_v3
from sheeprl.algos.dreamer_v3.agent import build_agent
from sheeprl.algos.dreamer_v3.utils import AGGREGATOR_KEYS, Moments
from sheeprl.cli import check_configs
from sheeprl.utils.metric import MetricAggregator
from sheeprl.utils.timer import timer
from sheeprl.utils.utils import dotdict
from torch.distributions import Distribution
from torch.utils.flop_counter import FlopCounterMode

PRESETS = {"xs": "dreamer_v3_XS", "s": "dreamer_v3_S"}
# The observation spaces of SheepRL's CartPole-v1 (`sheeprl.utils.env.make_env`): images are channels-first
OBS_SPACES = {
    "vector": gym.spaces.Dict({"state": gym.spaces.Box(-np.inf, np.inf, (4,), np.float32)}),
    "image": gym.spaces.Dict({"rgb": gym.spaces.Box(0, 255, (3, 64, 64), np.uint8)}),
}
ACTIONS_DIM = (2,)
PARTS = ("world_model", "behavior", "other")


def load_config(preset: str, obs: str, args: argparse.Namespace) -> dotdict:
    """SheepRL's configuration, composed and checked as its command line `sheeprl ...` does."""
    cnn, mlp = ("[rgb]", "[]") if obs == "image" else ("[]", "[state]")
    overrides = [
        "exp=dreamer_v3",
        "env=gym",
        "env.id=CartPole-v1",
        f"algo={PRESETS[preset]}",
        "fabric.accelerator=cpu",
        "env.num_envs=1",
        f"algo.cnn_keys.encoder={cnn}",
        f"algo.cnn_keys.decoder={cnn}",
        f"algo.mlp_keys.encoder={mlp}",
        f"algo.mlp_keys.decoder={mlp}",
        f"algo.per_rank_batch_size={args.batch_size}",
        f"algo.per_rank_sequence_length={args.seq_len}",
        f"algo.horizon={args.horizon}",
        "env.capture_video=False",
    ]
    if args.threads:
        overrides.append(f"num_threads={args.threads}")
    with initialize_config_module(config_module="sheeprl.configs", version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    cfg = dotdict(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True))
    check_configs(cfg)
    return cfg


def apply_run_settings(cfg: dotdict) -> None:
    """The global settings of `sheeprl.cli.run_algorithm`, which `main` runs under."""
    torch.set_float32_matmul_precision(cfg.float32_matmul_precision)
    Distribution.set_default_validate_args(cfg.distribution.validate_args)
    timer.disabled = cfg.metric.log_level == 0 or cfg.metric.disable_timer
    for key in set(cfg.metric.aggregator.metrics.keys()) - AGGREGATOR_KEYS:
        cfg.metric.aggregator.metrics.pop(key, None)
    MetricAggregator.disabled = cfg.metric.log_level == 0 or len(cfg.metric.aggregator.metrics) == 0


def synthetic_batch(cfg: dotdict, obs_space: gym.spaces.Dict, device: torch.device, seed: int = 0):
    """A batch as `sample_batches` gives it: float tensors of shape [T, B, ...]."""
    rng = np.random.default_rng(seed)
    T, B = cfg.algo.per_rank_sequence_length, cfg.algo.per_rank_batch_size
    data = {
        "actions": np.eye(sum(ACTIONS_DIM))[rng.integers(0, sum(ACTIONS_DIM), (T, B))],
        "rewards": rng.normal(size=(T, B, 1)),
        "terminated": np.zeros((T, B, 1)),
        "truncated": np.zeros((T, B, 1)),
        "is_first": np.zeros((T, B, 1)),
    }
    data["is_first"][0] = 1
    for key, space in obs_space.items():
        if space.dtype == np.uint8:
            data[key] = rng.integers(0, 256, (T, B, *space.shape), dtype=np.uint8)
        else:
            data[key] = rng.normal(size=(T, B, *space.shape))
    return {k: torch.as_tensor(v, device=device).float() for k, v in data.items()}


@contextmanager
def timed_parts(times: dict[str, float]):
    """Time the world-model and behaviour learning that `dreamer_v3.train` calls (module-level functions)."""
    originals = {
        "world_model": dreamer_v3.world_model_learning,
        "behavior": dreamer_v3.behaviour_learning,
    }

    def timed(part, fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            times[part] = time.perf_counter() - t0
            return out

        return wrapper

    dreamer_v3.world_model_learning = timed("world_model", originals["world_model"])
    dreamer_v3.behaviour_learning = timed("behavior", originals["behavior"])
    try:
        yield
    finally:
        dreamer_v3.world_model_learning = originals["world_model"]
        dreamer_v3.behaviour_learning = originals["behavior"]


def peak_rss_mib() -> float:
    """The high-water mark of the resident memory of this process (VmHWM; ru_maxrss where unavailable)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench(preset: str, obs: str, args: argparse.Namespace) -> dict[str, float]:
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(preset, obs, args)
    apply_run_settings(cfg)
    fabric = hydra.utils.instantiate(cfg.fabric, strategy=cfg.fabric.get("strategy", "auto"), _convert_="all")
    fabric.launch()
    fabric.seed_everything(cfg.seed, verbose=False)

    obs_space = OBS_SPACES[obs]
    world_model, actor, critic, target_critic, _ = build_agent(fabric, ACTIONS_DIM, False, cfg, obs_space)
    world_optimizer = hydra.utils.instantiate(
        cfg.algo.world_model.optimizer, params=world_model.parameters(), _convert_="all"
    )
    actor_optimizer = hydra.utils.instantiate(
        cfg.algo.actor.optimizer, params=actor.parameters(), _convert_="all"
    )
    critic_optimizer = hydra.utils.instantiate(
        cfg.algo.critic.optimizer, params=critic.parameters(), _convert_="all"
    )
    world_optimizer, actor_optimizer, critic_optimizer = fabric.setup_optimizers(
        world_optimizer, actor_optimizer, critic_optimizer
    )
    moments = Moments(
        cfg.algo.actor.moments.decay,
        cfg.algo.actor.moments.max,
        cfg.algo.actor.moments.percentile.low,
        cfg.algo.actor.moments.percentile.high,
    )
    aggregator = None
    if not MetricAggregator.disabled:
        aggregator = hydra.utils.instantiate(cfg.metric.aggregator, _convert_="all").to(fabric.device)

    batch = synthetic_batch(cfg, obs_space, fabric.device)
    runs = []
    steps = args.warmup + args.repeats + (1 if args.flops else 0)
    counter = FlopCounterMode(display=False)
    for step in range(steps):
        times: dict[str, float] = {}
        counting = args.flops and step == steps - 1  # one extra, untimed update under the FLOP counter
        with timed_parts(times), counter if counting else nullcontext():
            t0 = time.perf_counter()
            # The gradient step of `main`: the target critic, then `train`
            if step % cfg.algo.critic.per_rank_target_network_update_freq == 0:
                tau = 1 if step == 0 else cfg.algo.critic.tau
                for cp, tcp in zip(critic.module.parameters(), target_critic.parameters(), strict=True):
                    tcp.data.copy_(tau * cp.data + (1 - tau) * tcp.data)
            dreamer_v3.train(
                fabric,
                world_model,
                actor,
                critic,
                target_critic,
                world_optimizer,
                actor_optimizer,
                critic_optimizer,
                batch,
                aggregator,
                cfg,
                False,
                ACTIONS_DIM,
                moments,
            )
            times["total"] = time.perf_counter() - t0
        times["other"] = times["total"] - times["world_model"] - times["behavior"]
        if args.warmup <= step < args.warmup + args.repeats:
            runs.append(times)

    result = {f"{k}_ms": 1000 * statistics.median(r[k] for r in runs) for k in ("total", *PARTS)}
    result["gflop"] = counter.get_total_flops() / 1e9 if args.flops else float("nan")
    result["peak_rss_mib"] = peak_rss_mib()
    modules = (world_model, actor, critic)
    result["params_m"] = sum(p.numel() for m in modules for p in m.parameters()) / 1e6
    result.update(B=cfg.algo.per_rank_batch_size, T=cfg.algo.per_rank_sequence_length, H=cfg.algo.horizon)
    result["threads"] = torch.get_num_threads()
    return result


def run_isolated(preset: str, obs: str, args: argparse.Namespace) -> dict[str, float]:
    """`bench` in a fresh process: its own peak memory, no state left by the previous configurations."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(bench, preset, obs, args).result()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    parser.add_argument("--obs", nargs="+", default=list(OBS_SPACES), choices=list(OBS_SPACES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--horizon", type=int, default=15)
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="run every configuration in this process (then the peak memory only grows)",
    )
    parser.add_argument(
        "--flops", action="store_true", help="count the FLOPs of one more update (torch's FlopCounterMode)"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"# sheeprl {version('sheeprl')}, torch {torch.__version__}, threads {torch.get_num_threads()}, cpu; "
        f"median of {args.repeats} updates after {args.warmup} warm-up",
        flush=True,
    )
    for preset in args.presets:
        for obs in args.obs:
            r = bench(preset, obs, args) if args.in_process else run_isolated(preset, obs, args)
            fields = "  ".join(f"{k}={r[k]:.1f}" for k in ("total_ms", *(f"{p}_ms" for p in PARTS)))
            print(
                f"sheeprl {preset} {obs}  {fields}  gflop={r['gflop']:.1f}  "
                f"peak_rss_mib={r['peak_rss_mib']:.0f}  params_m={r['params_m']:.2f}  "
                f"threads={r['threads']}  B={r['B']} T={r['T']} H={r['H']}",
                flush=True,
            )


if __name__ == "__main__":
    main()
