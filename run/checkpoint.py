"""Checkpoints: atomic writes, the last N kept, safe loading, and a config compatibility check.

A checkpoint is one `torch.save` file of a dict (agent weights and optimizer states, loop counters and
schedules, replay sampler state, random states, the resolved config as YAML). It is written to a
temporary file, fsynced, and renamed over its final name, so a crash or a full disk never leaves a
half-written checkpoint under a real name. Its `.sha256` digest is written before that rename, so every
checkpoint under a real name has one, and a file changed later (a flipped byte, a truncation) is
refused. Loading uses `torch.load(weights_only=True)`: a checkpoint file can never run code. Numpy
arrays, which that loader refuses, are stored as tagged tensors and come back as arrays.

When the newest checkpoint is unreadable, the previous one is used (`load_newest`); the run that owns
the folder moves a corrupt file aside to `<name>.corrupt`, where it no longer counts among the kept
checkpoints and is not tried again.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import sys
from pathlib import Path
from typing import Any, BinaryIO, Callable, NamedTuple

import numpy as np
import torch
import yaml

from util.files import TMP_SUFFIX, write_atomic

FORMAT = 1
NAME = re.compile(r"^ckpt-(\d{9})\.pt$")
NDARRAY_TAG = "__ndarray__"
DIGEST_SUFFIX = ".sha256"
# An unusable checkpoint and its digest are renamed with this suffix: kept for a look, never loaded.
CORRUPT_SUFFIX = ".corrupt"
# Lines of torch's load errors that are advice about unsafe loading or links, not the cause.
UNSAFE_ADVICE = re.compile(r"weights_only|weights only|check the documentation|file an issue", re.IGNORECASE)

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


class CorruptCheckpoint(CheckpointError):
    """A checkpoint whose bytes are unusable: its digest does not match, the safe loader refuses it, or
    it is not a checkpoint of this project. (A file that cannot be read at all is a CheckpointError.)"""


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
        for stale in self.directory.glob("*" + TMP_SUFFIX):  # left by a run killed while saving
            stale.unlink()
        for digest in self.directory.glob("ckpt-*.pt" + DIGEST_SUFFIX):
            if not digest.with_suffix("").exists():  # killed after the digest, before the rename
                digest.unlink()

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
            _write_with_digest(path, lambda f: torch.save(payload, f))
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
        """The newest readable checkpoint; corrupt newer ones are moved aside (see `load_newest`)."""
        return load_newest(self.directory, move_aside=True)


def _write_with_digest(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write `path` through `<path>.tmp`, with its digest in place before the file gets its name: a
    kill at any moment leaves either no checkpoint of that name or one that can be verified."""

    def write_digest(tmp: Path) -> None:
        digest = _sha256(tmp)
        path.unlink(missing_ok=True)  # a checkpoint of the same step never sits beside another's digest
        write_atomic(_digest_path(path), lambda f: f.write(digest.encode()))

    write_atomic(path, write, before_rename=write_digest)
    _fsync_dir(path.parent)


def load_newest(directory: Path, move_aside: bool = False) -> Loaded | None:
    """The newest readable checkpoint in `directory`; each unreadable newer one is reported on stderr and
    skipped. With `move_aside` (the run that owns the folder), a corrupt one that a readable older one
    replaces is renamed to `<name>.corrupt`: no longer counted by `keep`, nor tried again.

    Returns None when there is none; raises CheckpointError when every one is unreadable (then nothing is
    moved: the run cannot go on from this folder as it is, and a person decides).
    """
    corrupt, errors = [], []
    for path in reversed(checkpoint_paths(directory)):
        try:
            loaded = Loaded(path, _load_file(path))
        except CheckpointError as e:
            errors.append(str(e))
            corrupt += [path] if isinstance(e, CorruptCheckpoint) else []
            print(f"warning: {e}; trying the previous checkpoint", file=sys.stderr)
            continue
        for bad in corrupt if move_aside else []:
            set_aside(bad)
        return loaded
    if errors:
        raise CheckpointError(f"no readable checkpoint in {directory}: " + "; ".join(errors))
    return None


def set_aside(path: Path) -> Path | None:
    """Rename a corrupt checkpoint and its digest to `*.corrupt`; its new path, or None when the folder
    cannot be written (it is then skipped again next time)."""
    target = path.with_name(path.name + CORRUPT_SUFFIX)
    try:
        os.replace(path, target)
        digest = _digest_path(path)
        if digest.exists():
            os.replace(digest, digest.with_name(digest.name + CORRUPT_SUFFIX))
    except OSError as e:
        print(f"warning: cannot move {path} aside: {e.strerror or e}", file=sys.stderr)
        return None
    print(f"warning: moved the corrupt checkpoint {path.name} aside to {target}", file=sys.stderr)
    return target


def checkpoint_paths(directory: Path) -> list[Path]:
    """The checkpoint files in `directory`, oldest (lowest step) first."""
    found = [p for p in directory.iterdir() if NAME.match(p.name)]
    return sorted(found, key=lambda p: int(NAME.match(p.name).group(1)))


def _digest_path(path: Path) -> Path:
    return path.with_name(path.name + DIGEST_SUFFIX)


def load(path: str | os.PathLike) -> dict:
    """Read a checkpoint file safely; a run folder or checkpoint folder gives its newest readable one."""
    return open_checkpoint(path).state


def open_checkpoint(path: str | os.PathLike) -> Loaded:
    """A checkpoint file, or the newest readable one in a run folder (`<run>/checkpoints`) or checkpoint
    folder (older ones when newer are unreadable, each reported; nothing in the folder is changed)."""
    path = Path(path)
    if path.is_dir():
        folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
        loaded = load_newest(folder)
        if loaded is None:
            raise CheckpointError(f"no checkpoint (ckpt-*.pt) in {folder}")
        return loaded
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    return Loaded(path, _load_file(path))


def _load_file(path: Path) -> dict:
    """The state of one checkpoint file, checked against its digest and loaded with weights_only."""
    try:
        data = path.read_bytes()
        digest_file = _digest_path(path)
        expected = digest_file.read_text().strip() if digest_file.exists() else None
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror or e}") from e
    if expected is not None and hashlib.sha256(data).hexdigest() != expected:
        raise CorruptCheckpoint(
            f"checkpoint {path} is corrupt (its sha256 does not match {digest_file.name})"
        )
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError, EOFError, UnpicklingError ... for bad files
        raise CorruptCheckpoint(f"checkpoint {path} is corrupt or truncated ({_load_failure(e)})") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CorruptCheckpoint(f"{path} is not a checkpoint of this project (format {FORMAT})")
    if expected is None:  # copied without it, or written by a version that could lose it in a kill
        print(
            f"warning: checkpoint {path} has no {digest_file.name}: a change to its bytes would go unseen",
            file=sys.stderr,
        )
    return unpack(state)


def _load_failure(error: Exception) -> str:
    """The cause of a failed safe load in a few words. torch's own message for a refused object advises
    loading with `weights_only=False`, which would run the file's code: that advice is never relayed."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    causes = [line for line in lines if not UNSAFE_ADVICE.search(line)]
    if not causes:
        return type(error).__name__
    first = causes[0].split(". ")[0].rstrip(".")
    return f"the safe loader refuses it: {first}" if len(causes) < len(lines) else first


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
