"""Replay chunks on disk: one compressed npz per stream and run of steps, written atomically.

A chunk file is named `<stream>-<start>-<length>.npz`: steps `start .. start + length - 1` of one env
stream, each step key an array [length, ...] at its stored dtype. A file is written under a temporary
name, fsynced and renamed, so a crash never leaves a half-written chunk under a real name. A flushed
partial chunk and the full chunk written later over the same steps share `start`; of files sharing a
start the longest is the one that counts, so data is never read twice.
"""

from __future__ import annotations

import re
import warnings
import zipfile
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import NamedTuple

import numpy as np

from envs.spaces import ArraySpec
from replay.spec import check_array, float_keys, nonfinite_rows
from util.files import TMP_SUFFIX, write_atomic

NAME = re.compile(r"^(\d+)-(\d+)-(\d+)\.npz$")
# What reading a truncated or corrupt npz can raise.
READ_ERRORS = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error)


class ChunkError(ValueError):
    """A chunk file that cannot be read or does not match the replay's step spec."""


class Piece(NamedTuple):
    """Steps read from a chunk, contiguous on disk: indices `start .. stop - 1`, key -> [stop - start, ..]."""

    start: int
    stop: int
    data: dict[str, np.ndarray]


class ChunkFile(NamedTuple):
    """A chunk file and what its name says it holds."""

    path: Path
    stream: int
    start: int
    length: int

    @property
    def end(self) -> int:
        return self.start + self.length


def chunk_name(stream: int, start: int, length: int) -> str:
    return f"{stream:04d}-{start:012d}-{length:07d}.npz"


def parse(path: Path) -> ChunkFile | None:
    """The chunk a file name describes, or None for any other file."""
    match = NAME.match(path.name)
    if match is None:
        return None
    stream, start, length = (int(g) for g in match.groups())
    return ChunkFile(path, stream, start, length)


def list_chunks(directory: Path) -> dict[int, list[ChunkFile]]:
    """Every chunk file in `directory` by stream, sorted by start (then length)."""
    found: dict[int, list[ChunkFile]] = {}
    for path in directory.iterdir() if directory.is_dir() else ():
        chunk = parse(path)
        if chunk is not None and chunk.length > 0:
            found.setdefault(chunk.stream, []).append(chunk)
    return {s: sorted(files, key=lambda c: (c.start, c.length)) for s, files in sorted(found.items())}


def current(files: Iterable[ChunkFile]) -> list[ChunkFile]:
    """The files that count, sorted by start: of files sharing a start the longest (the others are
    partial flushes it supersedes)."""
    longest: dict[int, ChunkFile] = {}
    for chunk in files:
        if chunk.start not in longest or chunk.length > longest[chunk.start].length:
            longest[chunk.start] = chunk
    return [longest[start] for start in sorted(longest)]


def write_chunk(directory: Path, stream: int, start: int, data: Mapping[str, np.ndarray]) -> Path:
    """Write `data` (key -> [L, ...]) as the chunk of steps `start .. start + L - 1` of `stream`."""
    length = len(next(iter(data.values())))
    path = directory / chunk_name(stream, start, length)
    write_atomic(path, lambda f: np.savez_compressed(f, **data))
    return path


def read_arrays(path: Path, keys: Iterable[str]) -> dict[str, np.ndarray]:
    """The arrays of `keys` present in the npz at `path` (others ignored); ChunkError if unreadable."""
    try:
        with np.load(path, allow_pickle=False) as f:
            return {key: f[key] for key in keys if key in f.files}
    except READ_ERRORS as e:
        raise ChunkError(f"cannot read {path}: {type(e).__name__}: {e}") from e


def validate(
    path: Path, data: Mapping[str, np.ndarray], spec: Mapping[str, ArraySpec], length: int | None = None
) -> dict[str, np.ndarray]:
    """`data` cast to the spec's dtypes after checking every key is there with shape [L, ...], one L
    for all keys (and equal to `length` when given), all floats finite; ChunkError naming `path`
    otherwise."""
    missing = sorted(set(spec) - set(data))
    if missing:
        raise ChunkError(f"{path} lacks the step keys {missing}")
    found = {np.shape(data[key])[0] if np.ndim(data[key]) else -1 for key in spec}
    if len(found) != 1 or (length is not None and found != {length}):
        expected = f" (name says {length})" if length is not None else ""
        raise ChunkError(f"{path} has arrays of different lengths {sorted(found)}{expected}")
    steps = found.pop()
    try:
        checked = {key: check_array(key, data[key], s, (steps,)) for key, s in spec.items()}
    except ValueError as e:
        raise ChunkError(f"{path}: {e}") from e
    cast = {key: value.astype(spec[key].dtype, copy=False) for key, value in checked.items()}
    # Written before non-finite steps were refused: loading it would bring the NaN back on every resume.
    bad = sorted(nonfinite_rows(cast, float_keys(spec)))
    if bad:
        raise ChunkError(f"{path} holds non-finite values (NaN or inf) in {bad}")
    return cast


def read_newest(
    files: list[ChunkFile],
    spec: Mapping[str, ArraySpec],
    budget: int,
    counters: dict[str, int],
    limit: int | None = None,
    floor: int | None = None,
    episodes: bool = False,
) -> list[Piece]:
    """The newest readable steps of `files` (sorted by start), oldest first: at most `budget` steps, below
    the index `limit` and from `floor` on (where given). Overlapping steps come from the later file.
    Unreadable files are skipped with a warning; `counters` counts `chunks_loaded` and `chunks_skipped`.
    With `episodes` each file is a whole episode (its missing flags filled) and `limit` does not apply.
    """
    pieces = []
    for chunk in reversed(files):
        if budget <= 0:
            break
        data = _read(chunk, spec, episodes, counters)
        if data is None:
            continue
        start, stop = chunk.start, chunk.start + len(data["is_first"])
        if not episodes and limit is not None:
            stop = min(stop, limit)
        start = max(start, stop - budget, start if floor is None else floor)
        if stop <= start:
            continue
        skip = start - chunk.start
        pieces.append(Piece(start, stop, {k: v[skip : skip + stop - start] for k, v in data.items()}))
        budget -= stop - start
        limit = start
    return pieces[::-1]


def _read(
    chunk: ChunkFile, spec: Mapping[str, ArraySpec], episodes: bool, counters: dict[str, int]
) -> dict[str, np.ndarray] | None:
    try:
        data = read_arrays(chunk.path, spec)
        if episodes:
            data = complete_flags(data)
        data = validate(chunk.path, data, spec, None if episodes else chunk.length)
    except ChunkError as e:
        warnings.warn(f"skipping replay chunk {chunk.path}: {e}", stacklevel=5)
        counters["chunks_skipped"] += 1
        return None
    counters["chunks_loaded"] += 1
    return data


def mark_breaks(pieces: list[Piece], episodes: bool = False) -> list[Piece]:
    """`pieces` (oldest first) with `is_first` set on the first step of each that does not follow the one
    before on disk (of each with `episodes`): no sampled window runs on across a gap as if contiguous."""
    marked, previous = [], None
    for piece in pieces:
        if episodes or (previous is not None and piece.start != previous):
            is_first = piece.data["is_first"].copy()
            is_first[0] = True
            piece = piece._replace(data={**piece.data, "is_first": is_first})
        marked.append(piece)
        previous = piece.stop
    return marked


def complete_flags(data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Fill the flags an episode file may omit: it starts at its first step and ends (not terminally)
    at its last."""
    lengths = {len(v) for v in data.values() if np.ndim(v)}
    if len(lengths) != 1:
        return data
    (length,) = lengths
    data = dict(data)
    if "is_first" not in data:
        data["is_first"] = np.arange(length) == 0
    if "is_last" not in data:
        data["is_last"] = np.arange(length) == length - 1
    if "is_terminal" not in data:
        data["is_terminal"] = np.zeros(length, bool)
    return data


def remove_stale(directory: Path) -> None:
    """Remove temporary files left by a run killed while writing a chunk."""
    for stale in directory.glob("*" + TMP_SUFFIX):
        stale.unlink(missing_ok=True)
