"""An offline dataset: a folder of replay chunks and/or episode files loaded as a sampling-only replay.

Chunk files (`<stream>-<start>-<length>.npz`, as a run writes them) keep their streams. Any other
`*.npz` is an episode: each step key an array [T, ...]; missing flags are filled (first step
`is_first`, last step `is_last`, no `is_terminal`). All episode files, in name order, form one more
stream, each starting with `is_first`, so no sampled sequence runs on from one episode into the next
without the model resetting.
"""

from __future__ import annotations

import dataclasses
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from numpy.lib import format as fmt

from configs.schema import ReplayConfig
from envs.spaces import ArraySpec
from replay import chunks
from replay.chunks import ChunkError, ChunkFile
from replay.persistence import latents_path
from replay.replay import Replay


def load_dataset(
    directory: str | Path, spec: Mapping[str, ArraySpec] | None, config: ReplayConfig, seed: int = 0
) -> Replay:
    """A replay holding the data of `directory` (the newest `config.capacity` steps), never writing there.

    `directory` holds replay chunks (also in its subfolders, e.g. the per-rank shards of a data-parallel
    run) and/or episode .npz files.

    Args:
        spec: the step keys to load; None takes every key of the first readable file.
        config: the replay config; `batch_size`, `batch_length` and `recency` shape the samples.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"offline dataset folder {directory} does not exist")
    # Chunk folders one level down count too: a data-parallel run keeps one shard per rank (`rank<r>/`).
    folders = [directory, *sorted(p for p in directory.iterdir() if p.is_dir())]
    # (folder, stream there, its files); the latents a run refreshed after writing its chunks are beside them.
    sources = [
        (folder, s, chunks.current(files))
        for folder in folders
        for s, files in chunks.list_chunks(folder).items()
    ]
    streams = [files for _, _, files in sources]
    episodes = sorted(p for p in directory.glob("*.npz") if chunks.parse(p) is None)
    if not streams and not episodes:
        raise FileNotFoundError(f"no chunk or episode .npz files in {directory}")
    if spec is None:
        spec = infer_spec([f.path for files in streams for f in files] + episodes)
    lengths = [sum(f.length for f in files) for files in streams]
    if episodes:
        lengths.append(sum(_npz_length(p) for p in episodes))
    replay = Replay(spec, _sized(config, lengths, directory), len(lengths), None, seed)
    for stream, (folder, original, files) in enumerate(sources):
        replay.load_files(stream, files)
        replay.load_latents(stream, latents_path(folder, original))
    if episodes:
        files = [ChunkFile(path, len(streams), index, 0) for index, path in enumerate(episodes)]
        replay.load_files(len(streams), files, episodes=True)
    return replay


def infer_spec(paths: list[Path]) -> dict[str, ArraySpec]:
    """The step spec of the first readable npz in `paths`: every array [T, ...] becomes a key."""
    for path in paths:
        try:
            with np.load(path, allow_pickle=False) as f:
                data = chunks.complete_flags({key: f[key] for key in f.files})
        except chunks.READ_ERRORS as e:
            warnings.warn(f"skipping unreadable dataset file {path}: {type(e).__name__}: {e}", stacklevel=2)
            continue
        return {key: ArraySpec(value.shape[1:], value.dtype) for key, value in data.items() if value.ndim}
    raise ChunkError(f"no readable npz file to infer the step spec from among {len(paths)} files")


def _sized(config: ReplayConfig, lengths: list[int], directory: Path) -> ReplayConfig:
    """`config` with a capacity that fits the longest stream (capped by `config.capacity`), never saving."""
    per_stream = min(config.capacity // len(lengths), max(lengths))
    if per_stream < config.batch_length:
        raise ValueError(
            f"offline dataset {directory} holds at most {per_stream} steps per stream (streams of "
            f"{lengths} steps), fewer than replay.batch_length={config.batch_length}"
        )
    return dataclasses.replace(config, capacity=per_stream * len(lengths), save=False)


def _npz_length(path: Path) -> int:
    """Steps in an episode file, read from an array header without decompressing; 0 if unreadable."""
    try:
        with zipfile.ZipFile(path) as archive:
            name = next(n for n in archive.namelist() if n.endswith(".npy"))
            with archive.open(name) as f:
                version = fmt.read_magic(f)
                read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
                shape, _, _ = read(f)
        return int(shape[0]) if shape else 0
    except (*chunks.READ_ERRORS, StopIteration):
        return 0
