"""The chunk files of a Replay: writing, reloading, deleting what no checkpoint needs, the exact resume.

Every step of a stream has an index on disk, which names the chunk file holding it (see
`replay/chunks.py`). Reloading takes per stream the newest readable steps up to capacity, skipping
corrupt files with a warning naming them; a step that does not follow the one before it on disk (after
a skipped chunk or a dropped step, or the first after a resume that lost steps) is stored as
`is_first`, so that no sampled window splices unrelated steps as if contiguous. New chunks are named
after every existing file, so none is ever overwritten by other steps.

The latent stored with each step (`context/*` keys) changes after its chunk is written, each time an
update trains on the step: `flush()` also writes every held step's current latent, one file per stream
in `context/`, and `load_state_dict` puts them back, so a resumed run starts its windows from the
latents the interrupted run had (a checkpoint writes held steps x latent bytes for this).

Disk use is bounded by capacity: `state_dict()` (taken for a checkpoint, after `flush()`) records each
stream's next and oldest held index. The loop adds steps again only once that checkpoint is written, so
the first `add` after it deletes the chunks holding only older steps: a resume from the newest
checkpoint still finds every step it needs (older checkpoints may find fewer, and say so).
"""

from __future__ import annotations

import warnings
from collections import deque
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from replay import chunks
from replay.chunks import ChunkError, ChunkFile
from util.files import write_atomic

INT64_MAX = 2**63 - 1


class Persistence:
    """The disk side of `Replay`, mixed into it: it reads and writes the replay's ring-buffer state.

    Per stream S: `_count` (steps inserted, the index in memory of the next), `_stored` (steps held),
    `_saved` (steps below it are in chunk files), `_next` (the index on disk of the next step), `_disk`
    [S, capacity] (the index on disk of each held step), `_break` (the next step does not follow the
    newest held one), `_partial` (the flushed tail file); `_release`: per stream, the index on disk
    below which the last checkpoint needs no chunk, applied by the next `add`.
    """

    def _save_full_chunks(self) -> None:
        size = self.config.chunk_size
        for stream in np.flatnonzero(self._count - self._saved >= size).tolist():
            start = int(self._saved[stream])
            self._write(stream, start, start + size)
            self._saved[stream] += size
            self._drop_partial(stream, keep=None)

    def flush(self) -> None:
        """Write every stream's steps not yet in a full chunk as a partial chunk (call at checkpoints).

        The next flush, or the full chunk over the same steps, replaces it."""
        if self.directory is None:
            return
        for stream in range(self.num_streams):
            self._flush_stream(stream)
            if self._latent:
                self._save_latents(stream)

    def _flush_stream(self, stream: int) -> None:
        if self._count[stream] > self._saved[stream]:
            path = self._write(stream, int(self._saved[stream]), int(self._count[stream]))
            self._drop_partial(stream, keep=path)

    def _write(self, stream: int, start: int, stop: int) -> Path:
        """Write the steps `start .. stop - 1` (in memory; contiguous on disk) as one chunk."""
        data = self._extract(stream, start, stop)
        first = int(self._disk[stream, start % self.stream_capacity])
        path = chunks.write_chunk(self.directory, stream, first, data)
        self.counters["chunks_saved"] += 1
        return path

    def _write_runs(self, stream: int, start: int, stop: int) -> list[tuple[int, Path]]:
        """Write the steps `start .. stop - 1` (in memory) as one chunk per run of them contiguous on disk;
        returns each run's first step and file."""
        disk = self._disk[stream, np.arange(start, stop) % self.stream_capacity]
        cuts = [start, *(start + 1 + np.flatnonzero(np.diff(disk) != 1)).tolist(), stop]
        return [(a, self._write(stream, a, b)) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]

    def _save_latents(self, stream: int) -> None:
        """Write the current latent of every step the stream holds, with their indices on disk."""
        count, stored = int(self._count[stream]), int(self._stored[stream])
        slots = np.arange(count - stored, count) % self.stream_capacity
        data = {key: self._data[key][stream, slots] for key in self._latent}
        path = latents_path(self.directory, stream)
        path.parent.mkdir(exist_ok=True)
        write_atomic(path, lambda f: np.savez(f, disk=self._held_disk(stream), **data))

    def load_latents(self, stream: int, path: Path) -> None:
        """Put back the latents `flush` wrote to `path` (`latents_path`) for the held steps of `stream` it
        covers (the chunks' copies stay for the others); an unreadable file is skipped with a warning."""
        if not self._latent or not path.exists():
            return
        try:
            saved = chunks.read_arrays(path, ["disk", *self._latent])
        except ChunkError as e:
            warnings.warn(f"skipping the stored latents {path}: {e}", stacklevel=3)
            return
        if "disk" not in saved:
            warnings.warn(f"skipping the stored latents {path}: it lacks the 'disk' array", stacklevel=3)
            return
        slots, found = self._slots_of(stream, saved.pop("disk"))
        for key, value in saved.items():
            self._data[key][stream, slots] = value[found]

    def _drop_partial(self, stream: int, keep: Path | None) -> None:
        old = self._partial[stream]
        if old is not None and old != keep:
            old.unlink(missing_ok=True)
        self._partial[stream] = keep

    def _delete_released(self) -> None:
        """Delete the chunks holding only steps older than every step the last checkpoint holds.

        Called on the first step added after `state_dict()`: the loop adds steps again only once the
        checkpoint holding that state is written, so a resume from it still finds every step it needs.
        """
        if self._release is None:
            return
        release, self._release = self._release, None
        for stream, files in chunks.list_chunks(self.directory).items():
            for chunk in files if stream < self.num_streams else ():
                if chunk.end <= release[stream]:
                    chunk.path.unlink(missing_ok=True)
                    self.counters["chunks_deleted"] += 1

    def load(self) -> int:
        """Reload the chunks in the directory into this (empty) replay: per stream the newest files up to
        the stream's capacity. Returns the steps loaded. The constructor calls it when chunks exist."""
        if len(self) or self._count.any():
            raise RuntimeError("Replay.load() needs an empty replay; it already holds steps")
        for stream, files in chunks.list_chunks(self.directory).items():
            if stream >= self.num_streams:
                warnings.warn(
                    f"skipping replay chunks of stream {stream} in {self.directory}: this run has "
                    f"{self.num_streams} streams",
                    stacklevel=2,
                )
                continue
            self.load_files(stream, chunks.current(files))
            # New chunks are named after every existing file, readable or not, so none is overwritten.
            self._next[stream] = max(f.end for f in files)
            self._break[stream] = self._follows_a_gap(stream)
        self._saved[:] = self._count
        return len(self)

    def load_files(self, stream: int, files: list[ChunkFile], episodes: bool = False) -> None:
        """Insert the newest readable files of one (empty) stream (sorted by start) up to its capacity.

        Overlapping steps are taken from the newer file. Where steps are missing between two files (a
        skipped chunk) or with `episodes` (each file a whole episode) the later file's first step is
        marked `is_first`, so that no sequence runs on across the break as if it were contiguous.
        """
        pieces = chunks.read_newest(files, self.spec, self.stream_capacity, self.counters, episodes=episodes)
        for piece in chunks.mark_breaks(pieces, episodes):
            if episodes:  # episode files have no index on disk: each follows the one before
                start = int(self._next[stream])
                piece = piece._replace(start=start, stop=start + piece.stop - piece.start)
            self._insert(stream, piece)

    def _held_disk(self, stream: int) -> np.ndarray:
        """The index on disk of each step a stream holds, oldest first: [stored], increasing."""
        count, stored = int(self._count[stream]), int(self._stored[stream])
        return self._disk[stream, np.arange(count - stored, count) % self.stream_capacity]

    def _oldest_disk(self) -> np.ndarray:
        """[S] the index on disk of each stream's oldest held step (of its next step when it holds none)."""
        oldest = self._disk[self._rows, (self._count - self._stored) % self.stream_capacity]
        return np.where(self._stored > 0, oldest, self._next)

    def _follows_a_gap(self, stream: int) -> bool:
        """Whether the stream's next step does not follow its newest held step on disk."""
        if not self._stored[stream]:
            return False
        newest = self._disk[stream, (self._count[stream] - 1) % self.stream_capacity]
        return bool(newest + 1 != self._next[stream])

    # --- exact resume ---

    def state_dict(self) -> dict:
        """The sampler's random state, the online queue (stream and index on disk of each queued window's
        first step) and, per stream, the indices on disk of its next and oldest held step
        (checkpoint-safe plain types). Once the checkpoint is written, chunks of older steps are deleted.

        Call `flush()` first, so that the disk holds every step the state refers to."""
        starts = self._oldest_disk()
        if self.directory is not None:
            self._release = starts
        return {
            "rng": _encode_ints(self._rng.bit_generator.state),
            "ends": self._next.tolist(),
            "starts": starts.tolist(),
            "stored": self._stored.tolist(),
            "online": [[s, int(self._disk[s, first % self.stream_capacity])] for s, first in self._online],
        }

    def load_state_dict(self, state: Mapping) -> None:
        """Restore the sampler and the steps of the checkpoint: drop those added after it (in memory and on
        disk) and those older than its oldest, reload older ones that newer steps had displaced, so that a
        resumed run has the data, and draws the batches, of the run it continues."""
        ends = [int(end) for end in state["ends"]]
        if len(ends) != self.num_streams:
            raise ValueError(f"replay state has {len(ends)} streams, this replay has {self.num_streams}")
        starts = state.get("starts")  # absent from checkpoints written before chunks were deleted
        self._rng.bit_generator.state = _decode_ints(state["rng"])
        for stream, end in enumerate(ends):
            start = None if starts is None else int(starts[stream])
            if start is not None:
                self._stored[stream] -= int(np.searchsorted(self._held_disk(stream), start))
            if self._next[stream] > end:
                self._forget_from(stream, end)
                self._backfill(stream, end, start)
                self._cut_files(stream, end)
            self._next[stream] = end  # no file reaches past it any more
            self._break[stream] = self._follows_a_gap(stream)
            if self.directory is not None:
                self.load_latents(stream, latents_path(self.directory, stream))
        if self.directory is not None:
            self._release = self._oldest_disk()
        self._online = self._restore_online(state.get("online", []))  # absent before the online queue
        if self._stored.tolist() != list(state["stored"]):
            warnings.warn(
                f"replay holds {self._stored.tolist()} steps per stream, {list(state['stored'])} at the "
                "checkpoint (chunks missing or skipped): sampling differs from the original run",
                stacklevel=2,
            )

    def _restore_online(self, queued: list) -> deque[tuple[int, int]]:
        """The online queue from (stream, index on disk of the first step) pairs, in memory indices; windows
        whose first step is no longer held are left out."""
        held: dict[int, np.ndarray] = {}
        restored: deque[tuple[int, int]] = deque()
        for stream, disk in queued:
            if stream not in held:
                held[stream] = self._held_disk(stream)
            i = int(np.searchsorted(held[stream], disk))
            if i < len(held[stream]) and held[stream][i] == disk:
                restored.append((stream, int(self._count[stream] - self._stored[stream]) + i))
        return restored

    def _forget_from(self, stream: int, end: int) -> None:
        """Forget the held steps of `stream` from disk index `end` on (in memory)."""
        held = self._held_disk(stream)
        keep = int(np.searchsorted(held, end))
        self._count[stream] -= len(held) - keep
        self._stored[stream] = keep
        self._saved[stream] = min(self._saved[stream], self._count[stream])

    def _cut_files(self, stream: int, end: int) -> None:
        """Delete the files of `stream` reaching past disk index `end`, after writing again the held steps
        only they hold (and any not yet saved)."""
        if self.directory is None:
            return
        held, count = self._held_disk(stream), int(self._count[stream])
        oldest = count - len(held)
        stale = [f for f in chunks.list_chunks(self.directory).get(stream, []) if f.end > end]
        first_stale = oldest + int(np.searchsorted(held, min((f.start for f in stale), default=end)))
        rewrite_from = max(oldest, min(int(self._saved[stream]), first_stale))
        runs = self._write_runs(stream, rewrite_from, count) if rewrite_from < count else []
        self._saved[stream], self._partial[stream] = count, None
        if runs and held[-1] + 1 == end:
            # The last run goes on into the next steps: the next full chunk takes it over, as a flushed tail.
            self._saved[stream], self._partial[stream] = runs[-1]
        for f in stale:
            f.path.unlink(missing_ok=True)

    def _backfill(self, stream: int, end: int, floor: int | None) -> None:
        """Reload steps below those held (and below `end`; from disk index `floor` on) up to the stream's
        capacity: the steps after the checkpoint had displaced them."""
        budget = self.stream_capacity - int(self._stored[stream])
        if budget <= 0 or self.directory is None:
            return
        held = self._held_disk(stream)
        limit = int(held[0]) if len(held) else end
        files = [
            f for f in chunks.current(chunks.list_chunks(self.directory).get(stream, [])) if f.start < limit
        ]
        pieces = chunks.mark_breaks(chunks.read_newest(files, self.spec, budget, self.counters, limit, floor))
        if pieces and len(held) and pieces[-1].stop != limit:
            self._data["is_first"][stream, (self._count[stream] - len(held)) % self.stream_capacity] = True
        self._prepend(stream, pieces)


def latents_path(directory: Path, stream: int) -> Path:
    """Where `flush` writes the current latents of a stream's held steps."""
    return directory / "context" / f"{stream:04d}.npz"


def _encode_ints(obj):
    """Ints beyond int64 (the generator's 128-bit state) as decimal strings, for weights_only loading."""
    if isinstance(obj, dict):
        return {k: _encode_ints(v) for k, v in obj.items()}
    if isinstance(obj, int) and not isinstance(obj, bool) and abs(obj) > INT64_MAX:
        return str(obj)
    return obj


def _decode_ints(obj):
    if isinstance(obj, dict):
        return {k: _decode_ints(v) for k, v in obj.items()}
    if isinstance(obj, str) and obj.lstrip("-").isdigit():
        return int(obj)
    return obj
