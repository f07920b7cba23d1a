"""Record, or compare against a recording, every loss value and every gradient of full agent updates.

A refactoring that claims to change no behaviour runs this before and after:

    python bench/update_golden.py --save before.pt          # on the earlier commit
    python bench/update_golden.py --compare before.pt       # on the later one

Each case builds an agent from presets (seeded), runs `--updates` updates through `Agent.train` on a fixed
synthetic batch, and records, per update, the gradient of every parameter (as the optimizer receives it)
and every reported metric. `--compare` prints, per case, how many tensors are bit-identical and the
largest relative difference of the others. One thread, CPU, float32.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent import make_agent  # noqa: E402
from configs.loader import load_config  # noqa: E402
from configs.schema import ReplayConfig  # noqa: E402
from envs.spaces import ActionSpace, ArraySpec  # noqa: E402
from util.transfers import to_floats  # noqa: E402

VECTOR = {"vector": ArraySpec((4,), np.float32)}
IMAGE = {"image": ArraySpec((64, 64, 3), np.uint8)}
DISCRETE = ActionSpace("discrete", 2, (2,))
CONTINUOUS = ActionSpace("continuous", 2)
# name: (presets, observation space, action space, overrides)
CASES = {
    "v2 size1m vector": (["size1m"], VECTOR, DISCRETE, {}),
    "v2 size1m image": (["size1m"], IMAGE, DISCRETE, {}),
    "v1 xs vector": (["v1", "xs"], VECTOR, DISCRETE, {}),
    "v1 xs image": (["v1", "xs"], IMAGE, DISCRETE, {}),
    "v2 size1m vector continuous": (["size1m"], VECTOR, CONTINUOUS, {}),
    "v1 xs vector continuous dynamics": (["v1", "xs"], VECTOR, CONTINUOUS, {}),
    "v2 size1m vector gaussian": (["size1m"], VECTOR, DISCRETE, {"world_model": {"latent": "gaussian"}}),
}


def synthetic_batch(obs_space, act_space, B: int, T: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A fixed batch with episode boundaries and any action space. Written out here rather than taken
    from bench/update.py, so that this file alone, copied into an earlier checkout, records there."""
    rng = np.random.default_rng(seed)
    if act_space.discrete:
        action = np.eye(act_space.dim, dtype=np.float32)[rng.integers(0, act_space.dim, (B, T))]
    else:
        action = rng.uniform(-1, 1, (B, T, act_space.dim)).astype(np.float32)
    data = {
        "reward": rng.normal(size=(B, T)).astype(np.float32),
        "is_first": rng.random((B, T)) < 0.05,
        "is_last": rng.random((B, T)) < 0.05,
        "is_terminal": rng.random((B, T)) < 0.02,
        "action": action,
    }
    data["is_first"][:, 0] = True
    for key, spec in obs_space.items():
        if spec.is_image:
            data[key] = rng.integers(0, 256, (B, T, *spec.shape), dtype=np.uint8)
        else:
            data[key] = rng.normal(size=(B, T, *spec.shape)).astype(np.float32)
    return data


def record(name: str, updates: int) -> list[dict[str, torch.Tensor]]:
    presets, obs_space, act_space, overrides = CASES[name]
    overrides = {**overrides, "run": {"device": "cpu", "precision": "float32"}}
    if "context" in {f.name for f in dataclasses.fields(ReplayConfig)}:
        overrides["replay"] = {"context": 0}  # the windows of commits before the stored latents
    if "dynamics" in name:
        overrides["actor_critic"] = {"grad": "dynamics"}
    config = load_config(presets, overrides)
    torch.manual_seed(0)
    agent = make_agent(config, obs_space, act_space)
    batch = synthetic_batch(obs_space, act_space, config.replay.batch_size, config.replay.batch_length)
    params = {
        f"{module}.{k}": p
        for module, m in (("wm", agent.wm), ("ac", agent.ac))
        for k, p in m.named_parameters()
    }
    grads: dict[str, torch.Tensor] = {}
    optimizer_step = agent.optim.step

    def step(loss):
        grads.update({f"grad/{k}": p.grad.clone() for k, p in params.items() if p.grad is not None})
        return optimizer_step(loss)

    agent.optim.step = step
    torch.manual_seed(1)
    out, state = [], None
    for _ in range(updates):
        grads.clear()
        state, _, metrics = agent.train(batch, state)
        values = {f"metric/{k}": torch.tensor(v) for k, v in to_floats(metrics).items()}
        out.append({**values, **grads})
    return out


def compare(name: str, before: list[dict], after: list[dict], verbose: bool = False) -> bool:
    ok = True
    for i, (b, a) in enumerate(zip(before, after)):  # noqa: B905 (--updates may be fewer)
        missing, extra = sorted(set(b) - set(a)), sorted(set(a) - set(b))
        same, worst, worst_key, differ = 0, 0.0, "", []
        for key in sorted(set(b) & set(a)):
            x, y = b[key].double(), a[key].double()
            if x.shape == y.shape and torch.equal(x, y):
                same += 1
                continue
            if x.shape != y.shape:
                rel = float("inf")
            else:
                rel = float((x - y).abs().max() / x.abs().max().clamp(min=1e-12))
            differ.append(key)
            if rel > worst:
                worst, worst_key = rel, key
        total = len(set(b) & set(a))
        line = f"{name:<34} update {i}: {same}/{total} bit-identical"
        if worst_key:
            line += f", largest relative difference {worst:.2e} ({worst_key})"
        if verbose and differ:
            line += "\n    differ: " + ", ".join(differ)
        if missing or extra:
            line += f"; only before: {missing}; only after: {extra}"
            ok = False
        print(line)
        ok = ok and same == total
    return ok


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--save", type=Path, help="write the recording here")
    mode.add_argument("--compare", type=Path, help="compare with this recording")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--updates", type=int, default=2)
    parser.add_argument("--verbose", action="store_true", help="name every tensor that differs")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    runs = {name: record(name, args.updates) for name in args.cases}
    if args.save:
        torch.save(runs, args.save)
        print(f"recorded {len(runs)} cases x {args.updates} updates to {args.save}")
        return
    before = torch.load(args.compare)
    results = [compare(name, before[name], runs[name], args.verbose) for name in args.cases]
    print("all bit-identical" if all(results) else "differences found (see above)")


if __name__ == "__main__":
    main()
