"""Seeding and the global random states of python, numpy and torch, in a checkpointable form.

The states are plain ints, lists and tensors so a checkpoint loads with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed python's `random`, numpy's legacy global generator and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """The global random states: python, numpy (legacy global), torch CPU and every CUDA device."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` returned."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        set_cuda_rng_states(state["cuda"])


def set_cuda_rng_states(states: list[torch.Tensor]) -> None:
    """One saved state per CUDA device, restored on the devices that exist now: a resume may see fewer
    GPUs than the run that saved (the others' states are dropped, with one line) or more (those keep
    their fresh seeds)."""
    count = torch.cuda.device_count()
    if len(states) > count:
        print(
            f"random states of {len(states)} CUDA devices saved, {count} visible: restoring the first {count}"
        )
    for device, cuda_state in enumerate(states[:count]):
        torch.cuda.set_rng_state(cuda_state, device)


def generator_state(rng: np.random.Generator) -> dict:
    """A numpy Generator's bit-generator state (nested dicts of ints and strings)."""
    return rng.bit_generator.state


def set_generator_state(rng: np.random.Generator, state: dict) -> None:
    rng.bit_generator.state = state
