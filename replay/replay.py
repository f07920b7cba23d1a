"""Sequence replay: per-stream ring buffers, contiguous B x T samples, chunked to disk for resume.

Each env stream owns a ring buffer of `capacity // num_streams` steps, preallocated per key at the
key's own dtype (uint8 images stay one byte per value). The oldest steps of a stream are overwritten
first (FIFO). A sample is `batch_size` windows of `batch_length` contiguous steps, each inside one
stream and inside the steps it still holds; windows may cross episode boundaries (the model resets
where `is_first` is set).

With a directory and `save`, steps are written per stream in chunks of `chunk_size` (see
`replay/chunks.py`); `flush()` also writes the unsaved tail. The constructor reloads the chunks it finds
there (the newest up to capacity); corrupt files are skipped with a warning naming them.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from configs.schema import ReplayConfig
from envs.spaces import ArraySpec
from replay import chunks
from replay.chunks import ChunkError, ChunkFile
from replay.sampling import Windows, sample_windows
from replay.spec import check_array, raw_bytes_per_step

INT64_MAX = 2**63 - 1


class Replay:
    """FIFO sequence replay over `num_streams` env streams.

    Args:
        spec: every key of a step (see `replay.step_spec`).
        config: the `replay` config subtree.
        num_streams: env streams; `add` takes one step of each.
        directory: the run's replay folder; chunks are written there and reloaded from it when
            `config.save` is set (otherwise it is ignored).
        seed: seed of the sampler.
    """

    def __init__(
        self,
        spec: Mapping[str, ArraySpec],
        config: ReplayConfig,
        num_streams: int,
        directory: str | Path | None = None,
        seed: int = 0,
    ):
        self.directory = Path(directory) if directory is not None and config.save else None
        _check_config(config, num_streams, self.directory is not None)
        self.spec = {key: ArraySpec(tuple(s.shape), np.dtype(s.dtype)) for key, s in spec.items()}
        if "is_first" not in self.spec:
            raise ValueError(f"replay spec needs an 'is_first' key; it has {sorted(self.spec)}")
        self.config = config
        self.num_streams = num_streams
        self.stream_capacity = config.capacity // num_streams
        self._data = _allocate(self.spec, num_streams, self.stream_capacity)
        S = num_streams
        self._count = np.zeros(S, np.int64)  # steps inserted per stream: index of its next step
        self._stored = np.zeros(S, np.int64)  # steps held: the newest `stored` indices below `count`
        self._saved = np.zeros(S, np.int64)  # steps below this index are in full chunk files
        self._offset = np.zeros(S, np.int64)  # index on disk minus index in memory
        self._partial: list[Path | None] = [None] * S  # the last flushed tail file per stream
        self._rng = np.random.default_rng(seed)
        self.counters = {"chunks_saved": 0, "chunks_loaded": 0, "chunks_skipped": 0}
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            chunks.remove_stale(self.directory)
            if chunks.list_chunks(self.directory):
                self.load()

    # --- size ---

    def __len__(self) -> int:
        """Steps stored, all streams."""
        return int(self._stored.sum())

    @property
    def ready(self) -> bool:
        """Whether a batch can be drawn: some stream holds at least `batch_length` steps."""
        return bool((self._stored >= self.config.batch_length).any())

    def stats(self) -> dict:
        """Steps, memory (preallocated bytes, per step slot and the raw size of a step) and chunk counts."""
        allocated = sum(a.nbytes for a in self._data.values())
        return {
            "steps": len(self),
            "capacity": self.num_streams * self.stream_capacity,
            "streams": self.num_streams,
            "bytes": allocated,
            "bytes_per_step": allocated / (self.num_streams * self.stream_capacity),
            "raw_bytes_per_step": raw_bytes_per_step(self.spec),
            **self.counters,
        }

    # --- adding ---

    def add(self, step: Mapping[str, np.ndarray]) -> None:
        """Store one step of every stream: each spec key an array [num_streams, ...]; other keys ignored."""
        missing = sorted(set(self.spec) - set(step))
        if missing:
            raise KeyError(f"replay step lacks keys {missing} (it has {sorted(step)})")
        values = {k: check_array(k, step[k], s, (self.num_streams,)) for k, s in self.spec.items()}
        rows = np.arange(self.num_streams)
        slots = self._count % self.stream_capacity
        for key, value in values.items():
            self._data[key][rows, slots] = value
        self._count += 1
        self._stored = np.minimum(self._stored + 1, self.stream_capacity)
        if self.directory is not None:
            self._save_full_chunks()

    def _insert(self, stream: int, data: Mapping[str, np.ndarray]) -> None:
        """Append contiguous steps (key -> [L, ...]) to one stream; only the newest capacity are kept."""
        length = len(data["is_first"])
        keep = min(length, self.stream_capacity)
        slots = (self._count[stream] + length - keep + np.arange(keep)) % self.stream_capacity
        for key in self.spec:
            self._data[key][stream, slots] = data[key][length - keep :]
        self._count[stream] += length
        self._stored[stream] = min(self._stored[stream] + length, self.stream_capacity)

    def stream_data(self, stream: int) -> dict[str, np.ndarray]:
        """A copy of the steps one stream holds, oldest first: key -> [stored, ...]."""
        return self._extract(stream, self._count[stream] - self._stored[stream], self._count[stream])

    def _extract(self, stream: int, start: int, stop: int) -> dict[str, np.ndarray]:
        slots = np.arange(start, stop) % self.stream_capacity
        return {key: array[stream, slots] for key, array in self._data.items()}

    # --- sampling ---

    def sample(self) -> dict[str, np.ndarray]:
        """A batch: key -> [B, T, ...] at the stored dtypes (images uint8)."""
        B, T = self.config.batch_size, self.config.batch_length
        out = {key: np.empty((B, T, *s.shape), s.dtype) for key, s in self.spec.items()}
        self._gather(self._windows(), out)
        return out

    def sample_torch(self, device: str | torch.device) -> dict[str, torch.Tensor]:
        """A batch as tensors on `device`: gathered into pinned memory and copied without blocking on CUDA,
        plain tensors sharing the sampled arrays on CPU."""
        device = torch.device(device)
        if device.type != "cuda":
            return {key: torch.from_numpy(value) for key, value in self.sample().items()}
        B, T = self.config.batch_size, self.config.batch_length
        # Fresh pinned buffers: torch's host allocator reuses one only once its copy has finished.
        pinned = {
            key: torch.empty((B, T, *s.shape), dtype=_torch_dtype(s.dtype), pin_memory=True)
            for key, s in self.spec.items()
        }
        self._gather(self._windows(), {key: tensor.numpy() for key, tensor in pinned.items()})
        return {key: tensor.to(device, non_blocking=True) for key, tensor in pinned.items()}

    def _windows(self) -> Windows:
        if not self.ready:
            raise RuntimeError(
                f"replay cannot sample yet: streams hold {self._stored.tolist()} steps, a sequence needs "
                f"replay.batch_length={self.config.batch_length}"
            )
        c = self.config
        recent = c.recent_window // self.num_streams
        return sample_windows(self._rng, self._stored, c.batch_length, c.batch_size, c.recency, recent)

    def _gather(self, windows: Windows, out: dict[str, np.ndarray]) -> None:
        """Copy each window into `out` [B, T, ...] as one or two slices (two where the ring wraps)."""
        T, C = self.config.batch_length, self.stream_capacity
        first = self._count[windows.stream] - self._stored[windows.stream] + windows.offset
        streams, slots = windows.stream.tolist(), (first % C).tolist()
        for b, (stream, slot) in enumerate(zip(streams, slots, strict=True)):
            head = min(T, C - slot)
            for key, array in self._data.items():
                out[key][b, :head] = array[stream, slot : slot + head]
                if head < T:
                    out[key][b, head:] = array[stream, : T - head]

    # --- persistence ---

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

    def _flush_stream(self, stream: int) -> None:
        if self._count[stream] > self._saved[stream]:
            path = self._write(stream, int(self._saved[stream]), int(self._count[stream]))
            self._drop_partial(stream, keep=path)

    def _write(self, stream: int, start: int, stop: int) -> Path:
        data = self._extract(stream, start, stop)
        path = chunks.write_chunk(self.directory, stream, start + int(self._offset[stream]), data)
        self.counters["chunks_saved"] += 1
        return path

    def _drop_partial(self, stream: int, keep: Path | None) -> None:
        old = self._partial[stream]
        if old is not None and old != keep:
            old.unlink(missing_ok=True)
        self._partial[stream] = keep

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
            # New chunks are named after every existing file, so none is ever overwritten.
            self._offset[stream] = max(f.end for f in files) - self._count[stream]
        self._saved[:] = self._count
        return len(self)

    def load_files(self, stream: int, files: list[ChunkFile], episodes: bool = False) -> None:
        """Insert the newest readable files of one stream (sorted by start) up to its capacity.

        Overlapping steps are taken from the newer file. Where steps are missing between two files (a
        skipped chunk) or with `episodes` (each file a whole episode) the later file's first step is
        marked `is_first`, so that no sequence runs on across the break as if it were contiguous.
        """
        budget, limit, taken = self.stream_capacity, None, []
        for chunk in reversed(files):
            if budget <= 0:
                break
            data = self._read(chunk, episodes)
            if data is None:
                continue
            start, stop = chunk.start, chunk.start + len(data["is_first"])
            if not episodes and limit is not None and stop > limit:
                stop = limit
            start = max(start, stop - budget)
            if stop <= start:
                continue
            skip = start - chunk.start
            taken.append((start, stop, {k: v[skip : skip + stop - start] for k, v in data.items()}))
            budget -= stop - start
            limit = start
        previous_stop = None
        for start, stop, data in reversed(taken):
            if episodes or (previous_stop is not None and start != previous_stop):
                data["is_first"] = data["is_first"].copy()
                data["is_first"][0] = True
            self._insert(stream, data)
            previous_stop = stop

    def _read(self, chunk: ChunkFile, episodes: bool) -> dict[str, np.ndarray] | None:
        try:
            data = chunks.read_arrays(chunk.path, self.spec)
            if episodes:
                data = chunks.complete_flags(data)
            data = chunks.validate(chunk.path, data, self.spec, None if episodes else chunk.length)
        except ChunkError as e:
            warnings.warn(f"skipping replay chunk {chunk.path}: {e}", stacklevel=3)
            self.counters["chunks_skipped"] += 1
            return None
        self.counters["chunks_loaded"] += 1
        return data

    # --- exact resume ---

    def state_dict(self) -> dict:
        """The sampler's random state and each stream's end index on disk (checkpoint-safe plain types).

        Call `flush()` first, so that the disk holds every step the state refers to."""
        return {
            "rng": _encode_ints(self._rng.bit_generator.state),
            "ends": (self._count + self._offset).tolist(),
            "stored": self._stored.tolist(),
        }

    def load_state_dict(self, state: Mapping) -> None:
        """Restore the sampler and drop steps added after the checkpoint (in memory and on disk), so that
        a resumed run has the data, and draws the batches, of the run it continues."""
        ends = list(state["ends"])
        if len(ends) != self.num_streams:
            raise ValueError(f"replay state has {len(ends)} streams, this replay has {self.num_streams}")
        self._rng.bit_generator.state = _decode_ints(state["rng"])
        for stream, end in enumerate(ends):
            current = int(self._count[stream] + self._offset[stream])
            if current > end:
                self._truncate(stream, end)
        if self._stored.tolist() != list(state["stored"]):
            warnings.warn(
                f"replay holds {self._stored.tolist()} steps per stream, {list(state['stored'])} at the "
                "checkpoint (chunks missing or skipped): sampling differs from the original run",
                stacklevel=2,
            )

    def _truncate(self, stream: int, end: int) -> None:
        """Forget the steps of `stream` from disk index `end` on; rewrite the kept tail of a cut file."""
        count = end - int(self._offset[stream])
        drop = int(self._count[stream]) - count
        self._count[stream] = count
        self._stored[stream] = max(0, int(self._stored[stream]) - drop)
        if self.directory is None:
            self._saved[stream] = min(self._saved[stream], count)
            return
        stale = [f for f in chunks.list_chunks(self.directory).get(stream, []) if f.end > end]
        oldest_held = count - int(self._stored[stream])
        rewrite_from = min([f.start - int(self._offset[stream]) for f in stale] + [int(self._saved[stream])])
        self._saved[stream] = max(min(rewrite_from, count), oldest_held)
        self._partial[stream] = None
        self._flush_stream(stream)
        for f in stale:
            if f.path != self._partial[stream]:
                f.path.unlink(missing_ok=True)


def _check_config(config: ReplayConfig, num_streams: int, saving: bool) -> None:
    if num_streams < 1:
        raise ValueError(f"replay needs num_streams >= 1, got {num_streams}")
    for name in ("batch_size", "batch_length", "chunk_size", "recent_window"):
        if getattr(config, name) < 1:
            raise ValueError(f"replay.{name} must be >= 1, got {getattr(config, name)}")
    if not 0.0 <= config.recency <= 1.0:
        raise ValueError(f"replay.recency must be in [0, 1], got {config.recency}")
    per_stream = config.capacity // num_streams
    if per_stream < config.batch_length:
        raise ValueError(
            f"replay.capacity={config.capacity} gives each of {num_streams} streams {per_stream} steps, "
            f"fewer than replay.batch_length={config.batch_length}"
        )
    if saving and config.chunk_size > per_stream:
        raise ValueError(
            f"replay.chunk_size={config.chunk_size} exceeds the {per_stream} steps each stream holds "
            f"(replay.capacity={config.capacity} over {num_streams} streams): a chunk would be "
            "overwritten before it is saved"
        )


def _allocate(spec: Mapping[str, ArraySpec], streams: int, capacity: int) -> dict[str, np.ndarray]:
    """Zeroed [streams, capacity, ...] arrays per key; untouched pages cost no resident memory."""
    try:
        return {key: np.zeros((streams, capacity, *s.shape), s.dtype) for key, s in spec.items()}
    except MemoryError as e:
        need = streams * capacity * raw_bytes_per_step(spec) / 2**30
        raise MemoryError(
            f"replay.capacity={streams * capacity} steps need {need:.1f} GiB of memory for "
            f"{raw_bytes_per_step(spec)} bytes per step; lower replay.capacity"
        ) from e


def _torch_dtype(dtype: np.dtype) -> torch.dtype:
    return torch.from_numpy(np.zeros((), dtype)).dtype


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
