"""Checkpoints: atomic writes, the last N kept, safe loading, and a config compatibility check.

A checkpoint is one `torch.save` file of a dict (agent weights and optimizer states, loop counters and
schedules, replay sampler state, random states, the resolved config as YAML). It is written to a
temporary file, fsynced, and renamed over its final name, so a crash or a full disk never leaves a
half-written checkpoint under a real name; a `.sha256` file beside it detects later corruption.
Loading uses `torch.load(weights_only=True)`: a checkpoint file can never run code. Numpy arrays, which
that loader refuses, are stored as tagged tensors and come back as arrays.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import sys
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import yaml

from util.files import write_atomic

FORMAT = 1
NAME = re.compile(r"^ckpt-(\d{9})\.pt$")
NDARRAY_TAG = "__ndarray__"

# Config keys that change the shapes or the structure of what a checkpoint holds; a key ending in a
# group ("world_model.encoder") covers all its fields. Other keys (loss scales, learning rate, the
# schedule) may change between a run and its resume.
SHAPE_KEYS = (
    "env.id",
    "env.obs",
    "env.size",
    "env.grayscale",
    "world_model.deter",
    "world_model.hidden",
    "world_model.stoch",
    "world_model.classes",
    "world_model.latent",
    "world_model.gru",
    "world_model.blocks",
    "world_model.dyn_inputs",
    "world_model.initial",
    "world_model.prior_layers",
    "world_model.post_layers",
    "world_model.norm",
    "world_model.bins",
    "world_model.encoder",
    "world_model.decoder",
    "world_model.reward_head.layers",
    "world_model.reward_head.units",
    "world_model.cont_head.layers",
    "world_model.cont_head.units",
    "actor_critic.actor.layers",
    "actor_critic.actor.units",
    "actor_critic.critic.layers",
    "actor_critic.critic.units",
    "optim.kind",
)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written, read or used; the message names the file and the cause."""


def check_world_size(state: dict, world_size: int, path: str | os.PathLike) -> None:
    """A data-parallel checkpoint holds one part per rank: it resumes only on as many ranks."""
    ranks = int(state.get("world_size", 1))
    if ranks != world_size:
        raise CheckpointError(
            f"checkpoint {path} was written by a run on {ranks} rank(s); resume it on {ranks} "
            f"(torchrun --nproc_per_node {ranks} train.py ...), not on {world_size}: replay shards and "
            "random states are per rank"
        )


class Loaded(NamedTuple):
    path: Path
    state: dict


def pack(obj: Any) -> Any:
    """Make `obj` loadable with weights_only: numpy arrays become tagged tensors, numpy scalars python."""
    if isinstance(obj, np.ndarray):
        return {NDARRAY_TAG: torch.from_numpy(np.ascontiguousarray(obj)).clone()}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: pack(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
        return type(obj)(pack(v) for v in obj)
    return obj


def unpack(obj: Any) -> Any:
    """Invert `pack`."""
    if isinstance(obj, dict):
        if set(obj) == {NDARRAY_TAG}:
            return obj[NDARRAY_TAG].numpy()
        return {k: unpack(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(unpack(v) for v in obj)
    return obj


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Checkpointer:
    """Saves numbered checkpoints `ckpt-<step>.pt` into `directory`, keeping the newest `keep`."""

    def __init__(self, directory: str | os.PathLike, keep: int = 3):
        if keep < 1:
            raise ValueError(f"run.keep_checkpoints must be >= 1, got {keep}")
        self.directory = Path(directory)
        self.keep = keep
        self.directory.mkdir(parents=True, exist_ok=True)
        for stale in self.directory.glob("*.tmp"):  # left by a run killed while saving
            stale.unlink()

    def paths(self) -> list[Path]:
        """Checkpoint files, oldest first."""
        return checkpoint_paths(self.directory)

    def latest(self) -> Path | None:
        paths = self.paths()
        return paths[-1] if paths else None

    def save(self, state: dict, step: int) -> Path:
        """Write `state` as the checkpoint of `step` atomically; then drop the oldest beyond `keep`."""
        path = self.directory / f"ckpt-{step:09d}.pt"
        payload = {"format": FORMAT, "step": int(step), **pack(state)}
        try:
            write_atomic(path, lambda f: torch.save(payload, f))
            digest = _sha256(path)
            write_atomic(_digest_path(path), lambda f: f.write(digest.encode()))
            _fsync_dir(self.directory)
        except OSError as e:
            previous = self.latest() if self.directory.is_dir() else None
            kept = f"; the previous checkpoint {previous} is intact" if previous else ""
            raise CheckpointError(f"cannot write checkpoint {path}: {e.strerror or e}{kept}") from e
        self._prune()
        return path

    def _prune(self) -> None:
        for old in self.paths()[: -self.keep]:
            old.unlink()
            _digest_path(old).unlink(missing_ok=True)

    def load_latest(self) -> Loaded | None:
        """The newest readable checkpoint; unreadable newer ones are reported and skipped.

        Returns None when there is none; raises CheckpointError when every one is unreadable.
        """
        paths = self.paths()
        errors = []
        for path in reversed(paths):
            try:
                return Loaded(path, load(path))
            except CheckpointError as e:
                errors.append(str(e))
                print(f"warning: {e}; trying the previous checkpoint", file=sys.stderr)
        if errors:
            raise CheckpointError("no readable checkpoint in " + f"{self.directory}: " + "; ".join(errors))
        return None


def checkpoint_paths(directory: Path) -> list[Path]:
    """The checkpoint files in `directory`, oldest (lowest step) first."""
    found = [p for p in directory.iterdir() if NAME.match(p.name)]
    return sorted(found, key=lambda p: int(NAME.match(p.name).group(1)))


def _digest_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def load(path: str | os.PathLike) -> dict:
    """Read a checkpoint file (or the newest in a run folder or checkpoint folder) safely."""
    path = resolve(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror or e}") from e
    digest_file = _digest_path(path)
    if digest_file.exists() and hashlib.sha256(data).hexdigest() != digest_file.read_text().strip():
        raise CheckpointError(f"checkpoint {path} is corrupt (its sha256 does not match {digest_file.name})")
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError, EOFError, UnpicklingError ... for bad files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({first})") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a checkpoint of this project (format {FORMAT})")
    return unpack(state)


def resolve(path: str | os.PathLike) -> Path:
    """A checkpoint file, or the newest one in a run folder (`<run>/checkpoints`) or a checkpoint folder."""
    path = Path(path)
    if path.is_dir():
        folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
        found = checkpoint_paths(folder)
        if not found:
            raise CheckpointError(f"no checkpoint (ckpt-*.pt) in {folder}")
        return found[-1]
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    return path


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {dotted key: leaf value}."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _is_shape_key(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in SHAPE_KEYS)


def check_compatible(saved_yaml: str, current_yaml: str, path: str | os.PathLike) -> None:
    """Raise CheckpointError naming every shape-changing key whose value differs between the configs."""
    saved = flatten(yaml.safe_load(saved_yaml))
    current = flatten(yaml.safe_load(current_yaml))
    keys = sorted(k for k in set(saved) | set(current) if _is_shape_key(k))
    diffs = [
        f"{k} (checkpoint {saved.get(k)!r}, config {current.get(k)!r})"
        for k in keys
        if saved.get(k) != current.get(k)
    ]
    if diffs:
        raise CheckpointError(
            f"checkpoint {path} was written with an incompatible config: {', '.join(diffs)}; "
            "use the same values or a new logdir"
        )
