"""Sequence replay: per-stream ring buffers, contiguous B x T samples, chunked to disk for resume.

Each env stream owns a ring buffer of `capacity // num_streams` steps, preallocated per key at the
key's own dtype (uint8 images stay one byte per value). The oldest steps of a stream are overwritten
first (FIFO). A sample is `batch_size` windows of contiguous steps, each inside one stream and inside the
steps it still holds; windows may cross episode boundaries (the model resets where `is_first` is set).
A window is `batch_length` steps, preceded by `replay.context` steps when the spec holds the model's
latent (`context/*` keys, see `step_spec`): the latent stored at a step is where the policy's posterior
was after it, and `update` overwrites it with the posterior of a later training step. With `online`,
training batches first take the windows of newly collected steps not yet trained on (see
`replay/sampling.py`).

A step with a NaN or inf in a float key is never stored: `add` raises NonFiniteStepError naming the
env, the key and the step, or with `drop_nonfinite` drops that env's step.

With a directory and `save`, steps are written per stream in chunks of `chunk_size`; `flush()` also
writes the unsaved tail. The constructor reloads the chunks it finds there; chunks no checkpoint needs
any more are deleted (see `replay/persistence.py`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from configs.schema import ReplayConfig
from envs.spaces import ArraySpec
from replay import chunks
from replay.chunks import Piece
from replay.persistence import Persistence
from replay.sampling import Windows, drop_evicted, sample_windows, take_online, window_counts
from replay.spec import check_array, context_keys, float_keys, nonfinite_rows, raw_bytes_per_step


class NonFiniteStepError(ValueError):
    """An env step with a NaN or inf observation, reward or action; the message names env, key and step."""


class Replay(Persistence):
    """FIFO sequence replay over `num_streams` env streams.

    Args:
        spec: every key of a step (see `replay.step_spec`).
        config: the `replay` config subtree.
        num_streams: env streams; `add` takes one step of each.
        directory: the run's replay folder; chunks are written there and reloaded from it when
            `config.save` is set (otherwise it is ignored).
        seed: seed of the sampler.
        env_id: the env the steps come from, named in errors.
    """

    def __init__(
        self,
        spec: Mapping[str, ArraySpec],
        config: ReplayConfig,
        num_streams: int,
        directory: str | Path | None = None,
        seed: int = 0,
        env_id: str | None = None,
    ):
        self.directory = Path(directory) if directory is not None and config.save else None
        check_config(config, num_streams, self.directory is not None)
        self.spec = {key: ArraySpec(tuple(s.shape), np.dtype(s.dtype)) for key, s in spec.items()}
        if "is_first" not in self.spec:
            raise ValueError(f"replay spec needs an 'is_first' key; it has {sorted(self.spec)}")
        self.config = config
        self.num_streams = num_streams
        self.env_id = env_id
        self.stream_capacity = config.capacity // num_streams
        self._data = _allocate(self.spec, num_streams, self.stream_capacity)
        self._floats = float_keys(self.spec)
        self._latent = context_keys(self.spec)
        # Steps per window: the context steps (only with a stored latent) and `batch_length`.
        self.context = config.context if self._latent else 0
        self.length = self.context + config.batch_length
        S = num_streams
        self._rows = np.arange(S)
        self._count = np.zeros(S, np.int64)  # steps inserted per stream: index of its next step
        self._stored = np.zeros(S, np.int64)  # steps held: the newest `stored` indices below `count`
        self._saved = np.zeros(S, np.int64)  # steps below this index are in chunk files
        self._disk = np.zeros((S, self.stream_capacity), np.int64)  # index on disk of each held step
        self._next = np.zeros(S, np.int64)  # index on disk of the next step; after every existing file
        self._break = np.zeros(S, bool)  # the next step does not follow the last held one on disk
        self._partial: list[Path | None] = [None] * S  # the last flushed tail file per stream
        self._release: np.ndarray | None = None  # per stream: the last checkpoint needs no older step
        self._rng = np.random.default_rng(seed)
        # Online: (stream, index in memory of the first step) of windows of new steps, in order of arrival.
        self._online: deque[tuple[int, int]] = deque()
        self.counters = {
            "chunks_saved": 0,
            "chunks_loaded": 0,
            "chunks_skipped": 0,
            "chunks_deleted": 0,
            "steps_dropped": 0,
        }
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            chunks.remove_stale(self.directory)
            if chunks.list_chunks(self.directory):
                self.load()

    # --- size ---

    def __len__(self) -> int:
        """Steps stored, all streams."""
        return int(self._stored.sum())

    def windows(self) -> int:
        """Windows of `length` steps held, all streams (the reference's `len(replay)`)."""
        return int(window_counts(self._stored, self.length).sum())

    @property
    def ready(self) -> bool:
        """Whether training may start: the replay holds `batch_size x batch_length` windows, the
        reference's condition (embodied/run/train.py: `len(replay) >= batch_size * batch_length`)."""
        return self.windows() >= self.config.batch_size * self.config.batch_length

    def stats(self) -> dict:
        """Steps, memory (preallocated bytes, per step slot and the raw size of a step) and counts of
        chunks and dropped steps."""
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
        """Store one step of every stream: each spec key an array [num_streams, ...]; other keys ignored.
        A step without the latent (`context/*`: a step of a random policy) stores zeros, the initial state.

        A NaN or inf in a float key raises NonFiniteStepError (nothing is stored), or with
        `drop_nonfinite` drops the steps of the streams holding one."""
        missing = sorted(set(self.spec) - set(step) - set(self._latent))
        if missing:
            raise KeyError(f"replay step lacks keys {missing} (it has {sorted(step)})")
        absent = [key for key in self._latent if key not in step]  # a random policy's step
        if absent:
            step = {**step, **{key: np.zeros((self.num_streams, *self.spec[key].shape)) for key in absent}}
        values = {k: check_array(k, step[k], s, (self.num_streams,)) for k, s in self.spec.items()}
        # Checked at the stored dtype: a float64 beyond float32's range would be stored as inf.
        for key in self._floats:
            if values[key].dtype != self.spec[key].dtype:
                with np.errstate(over="ignore"):  # an overflow to inf is reported below, naming the key
                    values[key] = values[key].astype(self.spec[key].dtype)
        rows = self._finite_rows(values)
        if rows is not None:
            values = {key: value[rows] for key, value in values.items()}
        self._store(values, rows)
        if self.directory is not None:
            self._delete_released()
            self._save_full_chunks()

    def _store(self, values: dict[str, np.ndarray], rows: np.ndarray | None) -> None:
        """Write one step (key -> [len(rows), ...]) of the streams `rows` (None: all of them)."""
        rows = self._rows if rows is None else rows
        slots = self._count[rows] % self.stream_capacity
        values["is_first"] = values["is_first"] | self._break[rows]
        self._break[rows] = False
        for key, value in values.items():
            self._data[key][rows, slots] = value
        self._disk[rows, slots] = self._next[rows]
        self._count[rows] += 1
        self._next[rows] += 1
        self._stored[rows] = np.minimum(self._stored[rows] + 1, self.stream_capacity)
        if self.config.online:
            self._enqueue(rows)

    def _enqueue(self, rows: np.ndarray) -> None:
        """Queue the newest window of each stream in `rows` whose step just completed another
        `batch_length` steps on disk: the trained steps of a stream's windows tile it, each queued once
        (a window's context steps are the last trained steps of the window before)."""
        T, L = self.config.batch_length, self.length
        full = rows[(self._next[rows] % T == 0) & (self._stored[rows] >= L)]
        self._online.extend(zip(full.tolist(), (self._count[full] - L).tolist(), strict=True))
        drop_evicted(self._online, self._count - self._stored)

    def _finite_rows(self, values: dict[str, np.ndarray]) -> np.ndarray | None:
        """The streams whose step to store: None (all) when every float is finite; else those without a
        NaN or inf (`drop_nonfinite`), or a NonFiniteStepError."""
        bad = nonfinite_rows(values, self._floats)
        if not bad:
            return None
        if not self.config.drop_nonfinite:
            raise NonFiniteStepError(self._nonfinite_message(bad))
        dropped = np.logical_or.reduce(list(bad.values()))
        self.counters["steps_dropped"] += int(dropped.sum())
        self._break |= dropped  # the next step of a dropping stream does not follow its last one
        return np.flatnonzero(~dropped)

    def _nonfinite_message(self, bad: dict[str, np.ndarray]) -> str:
        key, rows = next(iter(bad.items()))
        stream = int(np.flatnonzero(rows)[0])
        env = f"env {self.env_id} stream {stream}" if self.env_id else f"env stream {stream}"
        return (
            f"non-finite value (NaN or inf) in '{key}' at step {int(self._next[stream])} of {env} (keys "
            f"holding one: {sorted(bad)}); the step was not stored. Fix the env, or set "
            "replay.drop_nonfinite true to drop such steps"
        )

    def _insert(self, stream: int, piece: Piece) -> None:
        """Append a piece (key -> [L, ...] contiguous on disk) to one stream; only the newest capacity are
        kept."""
        length = piece.stop - piece.start
        keep = min(length, self.stream_capacity)
        slots = (self._count[stream] + length - keep + np.arange(keep)) % self.stream_capacity
        for key in self.spec:
            self._data[key][stream, slots] = piece.data[key][length - keep :]
        self._disk[stream, slots] = np.arange(piece.stop - keep, piece.stop)
        self._count[stream] += length
        self._next[stream] = piece.stop
        self._stored[stream] = min(self._stored[stream] + length, self.stream_capacity)

    def _prepend(self, stream: int, pieces: list[Piece]) -> None:
        """Put pieces (oldest first, older than every held step) before the held steps of a stream."""
        total = sum(p.stop - p.start for p in pieces)
        first = self._count[stream] - self._stored[stream] - total
        for piece in pieces:
            slots = (first + np.arange(piece.stop - piece.start)) % self.stream_capacity
            for key in self.spec:
                self._data[key][stream, slots] = piece.data[key]
            self._disk[stream, slots] = np.arange(piece.start, piece.stop)
            first += piece.stop - piece.start
        self._stored[stream] += total

    def stream_data(self, stream: int) -> dict[str, np.ndarray]:
        """A copy of the steps one stream holds, oldest first: key -> [stored, ...]."""
        return self._extract(stream, self._count[stream] - self._stored[stream], self._count[stream])

    def _extract(self, stream: int, start: int, stop: int) -> dict[str, np.ndarray]:
        slots = np.arange(start, stop) % self.stream_capacity
        return {key: array[stream, slots] for key, array in self._data.items()}

    # --- sampling ---

    def sample(self, online: bool = True) -> dict[str, np.ndarray]:
        """A batch: key -> [B, L, ...] at the stored dtypes (images uint8), L = `length` (context steps
        first), and `stepid` [B, L] int64 naming each step for `update`.

        `online` (a training batch) takes the queued windows of new steps first, when `config.online`;
        False (a report) leaves the queue as it is."""
        B, L = self.config.batch_size, self.length
        out = {key: np.empty((B, L, *s.shape), s.dtype) for key, s in self.spec.items()}
        windows = self._windows(online)
        self._gather(windows, out)
        out["stepid"] = self._stepids(windows)
        return out

    def sample_torch(self, device: str | torch.device, online: bool = True) -> dict[str, torch.Tensor]:
        """A batch (see `sample`) as tensors on `device`: gathered into pinned memory and copied without
        blocking on CUDA, plain tensors sharing the sampled arrays on CPU."""
        device = torch.device(device)
        if device.type != "cuda":
            return {key: torch.from_numpy(value) for key, value in self.sample(online).items()}
        B, L = self.config.batch_size, self.length
        # Fresh pinned buffers: torch's host allocator reuses one only once its copy has finished.
        pinned = {
            key: torch.empty((B, L, *s.shape), dtype=_torch_dtype(s.dtype), pin_memory=True)
            for key, s in self.spec.items()
        }
        windows = self._windows(online)
        self._gather(windows, {key: tensor.numpy() for key, tensor in pinned.items()})
        pinned["stepid"] = torch.from_numpy(self._stepids(windows)).pin_memory()
        return {key: tensor.to(device, non_blocking=True) for key, tensor in pinned.items()}

    def update(self, values: Mapping[str, np.ndarray | torch.Tensor]) -> None:
        """Overwrite the stored latent of sampled steps: `stepid` [B, L'] (from a batch) and `context/*`
        keys [B, L', ...]. Steps no longer held (overwritten since the sample) are skipped."""
        values = {key: np.asarray(_numpy(value)) for key, value in values.items()}
        stepid = values.pop("stepid").reshape(-1)
        unknown = sorted(set(values) - set(self._latent))
        if unknown:
            raise KeyError(f"replay.update takes the stepid and {self._latent}; got {unknown}")
        values = {key: v.reshape(len(stepid), *self.spec[key].shape) for key, v in values.items()}
        streams, disk = stepid % self.num_streams, stepid // self.num_streams
        for stream in np.unique(streams).tolist():
            rows = np.flatnonzero(streams == stream)
            slots, found = self._slots_of(stream, disk[rows])
            for key, value in values.items():
                self._data[key][stream, slots] = value[rows[found]]

    def _slots_of(self, stream: int, disk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The ring slots of the held steps among `disk` (indices on disk of one stream's steps), and
        which of `disk` are held."""
        held = self._held_disk(stream)  # increasing
        pos = np.minimum(np.searchsorted(held, disk), max(len(held) - 1, 0))
        found = held[pos] == disk if len(held) else np.zeros(len(disk), bool)
        first = self._count[stream] - self._stored[stream]
        return (first + pos[found]) % self.stream_capacity, found

    def _windows(self, online: bool) -> Windows:
        """The batch's windows: queued new ones first (with `online`), the rest drawn (`sample_windows`)."""
        if not self.windows():
            raise RuntimeError(
                f"replay cannot sample yet: streams hold {self._stored.tolist()} steps, a sequence needs "
                f"{self.length} (replay.batch_length={self.config.batch_length} after "
                f"{self.context} context steps)"
            )
        c = self.config
        queued = take_online(self._online, c.batch_size if online else 0, self._count - self._stored)
        recent = c.recent_window // self.num_streams
        drawn = sample_windows(
            self._rng, self._stored, self.length, c.batch_size - len(queued.stream), c.recency, recent
        )
        return Windows(*(np.concatenate(pair) for pair in zip(queued, drawn, strict=True)))

    def _stepids(self, windows: Windows) -> np.ndarray:
        """[B, L] int64: disk index * num_streams + stream of each step of the windows (the same for a
        step reloaded from disk)."""
        first = self._count[windows.stream] - self._stored[windows.stream] + windows.offset
        slots = (first[:, None] + np.arange(self.length)) % self.stream_capacity
        return self._disk[windows.stream[:, None], slots] * self.num_streams + windows.stream[:, None]

    def _gather(self, windows: Windows, out: dict[str, np.ndarray]) -> None:
        """Copy each window into `out` [B, T, ...] as one or two slices (two where the ring wraps)."""
        T, C = self.length, self.stream_capacity
        first = self._count[windows.stream] - self._stored[windows.stream] + windows.offset
        streams, slots = windows.stream.tolist(), (first % C).tolist()
        for b, (stream, slot) in enumerate(zip(streams, slots, strict=True)):
            head = min(T, C - slot)
            for key, array in self._data.items():
                out[key][b, :head] = array[stream, slot : slot + head]
                if head < T:
                    out[key][b, head:] = array[stream, : T - head]


def check_config(config: ReplayConfig, num_streams: int, saving: bool) -> None:
    if num_streams < 1:
        raise ValueError(f"replay needs num_streams >= 1, got {num_streams}")
    for name in ("batch_size", "batch_length", "chunk_size", "recent_window"):
        if getattr(config, name) < 1:
            raise ValueError(f"replay.{name} must be >= 1, got {getattr(config, name)}")
    if not 0.0 <= config.recency <= 1.0:
        raise ValueError(f"replay.recency must be in [0, 1], got {config.recency}")
    per_stream = config.capacity // num_streams
    if per_stream < config.batch_length + config.context:
        raise ValueError(
            f"replay.capacity={config.capacity} gives each of {num_streams} streams {per_stream} steps, "
            f"fewer than a window of replay.batch_length={config.batch_length} after "
            f"replay.context={config.context} steps"
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


def _numpy(value: np.ndarray | torch.Tensor) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value
