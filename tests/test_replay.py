"""Replay: invariants of storage and sampling, persistence (save, kill, reload, corruption, disk bounded by
capacity), exact resume, the offline dataset loader, and errors (non-finite steps among them).

The synthetic data makes every step identify itself: `vector` = [stream, step index, episode id], the
image is filled with the step index modulo 251, so contiguity and order can be read off a batch.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from configs.loader import load_config
from envs.spaces import ArraySpec
from replay import NonFiniteStepError, Replay, load_dataset, step_spec
from replay.chunks import current, list_chunks, write_chunk
from replay.sampling import recent_counts, sample_windows, window_counts

ROOT = Path(__file__).resolve().parents[1]
OBS = {"vector": ArraySpec((3,), np.float32), "image": ArraySpec((4, 4, 3), np.uint8)}
SPEC = step_spec(OBS, 2)


@functools.cache
def debug_replay_config():
    return load_config(["debug"]).replay


def replay_config(**changes):
    changes = {"capacity": 120, "batch_size": 6, "batch_length": 8, **changes}
    return dataclasses.replace(debug_replay_config(), **changes)


class Streams:
    """Deterministic fake env streams with episodes of 3..12 steps; `step()` gives one step of each."""

    def __init__(self, num_streams: int, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.num_streams = num_streams
        self.t = 0
        self.episode = np.zeros(num_streams, np.int64)
        self.left = self.rng.integers(3, 13, num_streams)
        self.first = np.ones(num_streams, bool)

    def step(self) -> dict[str, np.ndarray]:
        S = self.num_streams
        last = self.left == 1
        vector = np.stack([np.arange(S), np.full(S, self.t), self.episode], 1).astype(np.float32)
        step = {
            "vector": vector,
            "image": np.full((S, 4, 4, 3), self.t % 251, np.uint8),
            "reward": self.rng.normal(size=S).astype(np.float32),
            "is_first": self.first.copy(),
            "is_last": last,
            "is_terminal": last & (self.episode % 2 == 0),
            "action": self.rng.uniform(-1, 1, (S, 2)).astype(np.float32),
            "episode_return": np.zeros(S, np.float32),  # an extra key the replay ignores
        }
        self.t += 1
        self.first = last
        self.episode = self.episode + last
        self.left = np.where(last, self.rng.integers(3, 13, S), self.left - 1)
        return step


def fill(replay: Replay, streams: Streams, steps: int) -> None:
    for _ in range(steps):
        replay.add(streams.step())


def through_checkpoint(state: dict) -> dict:
    """`state` saved and loaded as a checkpoint stores it."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def steps_on_disk(directory: Path) -> dict[int, int]:
    """Steps per stream in the chunk files that count (a flushed tail superseded by its full chunk not)."""
    return {s: sum(f.length for f in current(files)) for s, files in list_chunks(directory).items()}


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


# --- storage and sampling invariants ---


@pytest.mark.parametrize("num_streams", [1, 3])
@pytest.mark.parametrize("capacity", [60, 121])
def test_capacity_never_exceeded_and_eviction_is_fifo(num_streams, capacity):
    replay = Replay(SPEC, replay_config(capacity=capacity), num_streams)
    C = capacity // num_streams
    streams = Streams(num_streams)
    for added in range(1, 150):
        replay.add(streams.step())
        assert len(replay) == num_streams * min(added, C) <= capacity
    for s in range(num_streams):
        held = replay.stream_data(s)["vector"]
        np.testing.assert_array_equal(held[:, 0], s)
        np.testing.assert_array_equal(held[:, 1], np.arange(149 - C, 149))  # the newest C, in order


@pytest.mark.parametrize("num_streams", [1, 3])
@pytest.mark.parametrize("recency", [0.0, 0.5])
def test_sequences_contiguous_within_one_stream_and_is_first_exact(num_streams, recency):
    config = replay_config(capacity=90, recency=recency, recent_window=30)
    replay = Replay(SPEC, config, num_streams, seed=3)
    streams = Streams(num_streams)
    log = [streams.step() for _ in range(200)]  # wraps each ring buffer several times
    starts = np.stack([step["is_first"] for step in log])  # [steps, S]
    C = 90 // num_streams
    for added, step in enumerate(log, 1):
        replay.add(step)
        if added < config.batch_length or added % 7:
            continue
        batch = replay.sample()
        B, T = batch["is_first"].shape
        assert (B, T) == (6, 8)
        stream, t = batch["vector"][..., 0].astype(int), batch["vector"][..., 1].astype(int)
        assert (stream == stream[:, :1]).all()
        np.testing.assert_array_equal(t, t[:, :1] + np.arange(T))
        assert (t[:, 0] >= added - C).all() and (t[:, -1] < added).all()  # never evicted or unwritten
        np.testing.assert_array_equal(batch["is_first"], starts[t, stream])
        np.testing.assert_array_equal(batch["image"][:, :, 0, 0, 0], t % 251)


def test_sampling_is_seeded():
    def batches(seed):
        replay = Replay(SPEC, replay_config(recency=0.5), 2, seed=seed)
        fill(replay, Streams(2), 80)
        return [replay.sample()["vector"] for _ in range(3)]

    for a, b in zip(batches(7), batches(7), strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(batches(7), batches(8), strict=True))


def test_uniform_sampling_weights_streams_by_their_windows():
    stored, T, n = np.array([10, 20, 3]), 5, 40000
    rng = np.random.default_rng(0)
    windows = sample_windows(rng, stored, T, n, 0.0, 100)
    W = window_counts(stored, T)  # [6, 16, 0]
    freq = np.bincount(windows.stream, minlength=3) / n
    p = W / W.sum()
    assert freq[2] == 0  # too short for a window
    assert np.all(np.abs(freq - p)[:2] < 4 * np.sqrt(p * (1 - p) / n)[:2])
    offsets = windows.offset[windows.stream == 1]
    assert offsets.min() == 0 and offsets.max() == 15
    assert abs(offsets.mean() - 7.5) < 4 * np.sqrt((16**2 - 1) / 12 / len(offsets))


def test_recent_windows_lie_in_the_newest_steps():
    stored, T, B = np.array([50, 50]), 4, 1000
    windows = sample_windows(np.random.default_rng(1), stored, T, B, 0.25, 10)
    recent = slice(B - 250, B)
    assert (windows.offset[recent] >= 50 - 10).all() and (windows.offset[recent] <= 50 - T).all()
    assert windows.offset[: B - 250].min() < 40  # the uniform part reaches older windows
    np.testing.assert_array_equal(recent_counts(stored, T, 10), [7, 7])


def test_samples_once_a_stream_holds_a_sequence_ready_at_batch_size_x_length_windows():
    replay = Replay(SPEC, replay_config(capacity=400, batch_size=2, batch_length=4), 2)
    fill(replay, Streams(2), 3)
    with pytest.raises(RuntimeError, match="batch_length=4"):
        replay.sample()
    fill(replay, Streams(2), 1)
    replay.sample()
    # Ready, as the reference's train.py starts training, once B x T = 8 windows are held: 2 x (7 - 4 + 1).
    fill(replay, Streams(2), 1)
    assert replay.windows() == 4 and not replay.ready
    fill(replay, Streams(2), 1)
    assert replay.windows() == 6 and not replay.ready
    fill(replay, Streams(2), 1)
    assert replay.windows() == 8 and replay.ready


# --- online queue ---


def window_ids(batch: dict[str, np.ndarray]) -> list[tuple[int, int]]:
    """(stream, index of the first step) of each window of a batch, read off the synthetic `vector`."""
    return [(int(s), int(t)) for s, t in batch["vector"][:, 0, :2]]


def take_in_order(batches: list[list[tuple[int, int]]], arrivals: list[tuple[int, int]]) -> int:
    """How many of `arrivals` lead the batches in order: each batch's first windows are the queued ones."""
    taken = 0
    for windows in batches:
        for window in windows:
            if taken == len(arrivals) or window != arrivals[taken]:
                break
            taken += 1
    return taken


@pytest.mark.parametrize("every", [1, 3, 10])
def test_every_window_of_new_steps_is_trained_in_order_of_arrival(every):
    T, steps = 4, 60
    replay = Replay(SPEC, replay_config(capacity=400, batch_size=3, batch_length=T), 2, seed=1)
    data, batches = Streams(2), []
    for step in range(1, steps + 1):
        replay.add(data.step())
        if step % every == 0 and step >= T:
            batches.append(window_ids(replay.sample()))
    batches += [window_ids(replay.sample()) for _ in range(20)]  # the queue left at the end
    # Each stream's steps tile into windows of T, queued as their last step arrives (stream 0 first).
    arrivals = [(s, k * T) for k in range(steps // T) for s in range(2)]
    assert take_in_order(batches, arrivals) == len(arrivals)


def test_reports_leave_the_queue_and_online_false_draws_uniformly():
    config = replay_config(capacity=400, batch_size=3, batch_length=4)
    online, plain = (
        Replay(SPEC, config, 1, seed=3),
        Replay(SPEC, dataclasses.replace(config, online=False), 1, seed=3),
    )
    data = Streams(1)
    for _ in range(8):
        step = data.step()
        online.add(step)
        plain.add(step)
    report = online.sample(online=False)
    assert_same(report, plain.sample())  # uniform draws, the same as without a queue
    assert window_ids(online.sample())[:2] == [(0, 0), (0, 4)]  # the queue is still there for training


def test_online_queue_survives_a_checkpoint_round_trip(tmp_path):
    config = replay_config(capacity=400, batch_size=3, batch_length=4)
    replay = Replay(SPEC, config, 2, tmp_path, seed=2)
    fill(replay, Streams(2), 18)  # 4 windows per stream queued, none taken
    replay.sample()  # takes 3 of the 8
    replay.flush()
    state = through_checkpoint(replay.state_dict())
    assert state["online"] == [[1, 4], [0, 8], [1, 8], [0, 12], [1, 12]]  # (stream, index on disk)
    resumed = Replay(SPEC, config, 2, tmp_path, seed=0)
    resumed.load_state_dict(state)
    for _ in range(3):
        assert_same(resumed.sample(), replay.sample())


def test_windows_evicted_before_training_are_skipped():
    replay = Replay(SPEC, replay_config(capacity=16, batch_size=2, batch_length=4), 1)
    fill(replay, Streams(1), 24)  # queued 6 windows; the ring holds only the last 16 steps (4 windows)
    assert window_ids(replay.sample()) == [(0, 8), (0, 12)]
    assert window_ids(replay.sample()) == [(0, 16), (0, 20)]


def test_memory_is_the_raw_size_of_a_step_and_images_stay_uint8():
    spec = step_spec({"image": ArraySpec((64, 64, 3), np.uint8)}, 6)
    replay = Replay(spec, replay_config(capacity=200), 1)
    stats = replay.stats()
    assert stats["raw_bytes_per_step"] == 64 * 64 * 3 + 4 + 3 + 6 * 4
    assert stats["bytes_per_step"] == pytest.approx(stats["raw_bytes_per_step"], rel=0.1)
    fill_spec = {k: np.zeros((1, *s.shape), s.dtype) for k, s in spec.items()}
    for _ in range(10):
        replay.add(fill_spec)
    assert replay.sample()["image"].dtype == np.uint8


def test_sample_torch_on_cpu_matches_numpy():
    a, b = Replay(SPEC, replay_config(), 2, seed=4), Replay(SPEC, replay_config(), 2, seed=4)
    fill(a, Streams(2), 40)
    fill(b, Streams(2), 40)
    tensors, arrays = a.sample_torch("cpu"), b.sample()
    assert tensors["image"].dtype == torch.uint8 and tensors["is_first"].dtype == torch.bool
    assert_same({k: v.numpy() for k, v in tensors.items()}, arrays)


# --- persistence ---


def test_save_reload_gives_the_same_steps(tmp_path):
    config = replay_config(capacity=300, chunk_size=16)
    replay = Replay(SPEC, config, 3, tmp_path)
    fill(replay, Streams(3), 75)
    replay.flush()
    reloaded = Replay(SPEC, config, 3, tmp_path)
    assert len(reloaded) == len(replay) == 225
    for s in range(3):
        assert_same(reloaded.stream_data(s), replay.stream_data(s))
    assert reloaded.stats()["chunks_loaded"] == 3 * 5  # 4 full chunks and one tail per stream


def test_reload_without_flush_keeps_full_chunks_and_newest_up_to_capacity(tmp_path):
    replay = Replay(SPEC, replay_config(capacity=100, chunk_size=16), 1, tmp_path)
    fill(replay, Streams(1), 150)  # 9 full chunks on disk (144 steps), 6 steps unsaved
    reloaded = Replay(SPEC, replay_config(capacity=40, chunk_size=16), 1, tmp_path)
    held = reloaded.stream_data(0)["vector"][:, 1]
    np.testing.assert_array_equal(held, np.arange(104, 144))


def test_flushed_tail_is_superseded_not_loaded_twice(tmp_path):
    config = replay_config(capacity=200, chunk_size=16)
    replay = Replay(SPEC, config, 1, tmp_path)
    streams = Streams(1)
    fill(replay, streams, 20)
    replay.flush()  # tail [16, 20)
    tail = next(p for p in tmp_path.iterdir() if "-000000000016-" in p.name)
    copy = tail.read_bytes()
    fill(replay, streams, 14)  # full chunk [16, 32) replaces the tail file
    assert not tail.exists()
    replay.flush()
    tail.write_bytes(copy)  # as if killed between writing the full chunk and removing the tail
    reloaded = Replay(SPEC, config, 1, tmp_path)
    np.testing.assert_array_equal(reloaded.stream_data(0)["vector"][:, 1], np.arange(34))


def test_overlapping_chunks_take_each_step_once_from_the_later_file(tmp_path):
    config = replay_config(capacity=200, chunk_size=16)
    replay = Replay(SPEC, config, 1, tmp_path)
    fill(replay, Streams(1), 32)
    later = {k: v[20:28] for k, v in replay.stream_data(0).items()}
    later["reward"] = later["reward"] + 1000.0  # marks the steps read from this file
    write_chunk(tmp_path, 0, 20, later)  # steps 20..27, also in the chunk [16, 32)
    held = Replay(SPEC, config, 1, tmp_path).stream_data(0)
    np.testing.assert_array_equal(held["vector"][:, 1], np.arange(28))
    assert (held["reward"][20:] > 500).all() and (held["reward"][:20] < 500).all()


def test_corrupt_chunks_are_skipped_with_a_warning_and_the_rest_loads(tmp_path):
    config = replay_config(capacity=200, chunk_size=16)
    replay = Replay(SPEC, config, 1, tmp_path)
    fill(replay, Streams(1), 64)
    files = sorted(tmp_path.glob("*.npz"))
    truncated, garbage = files[1], files[2]
    truncated.write_bytes(truncated.read_bytes()[:200])
    garbage.write_bytes(b"not a zip file at all")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reloaded = Replay(SPEC, config, 1, tmp_path)
    named = " ".join(str(w.message) for w in caught)
    assert truncated.name in named and garbage.name in named
    held = reloaded.stream_data(0)
    np.testing.assert_array_equal(held["vector"][:, 1], np.r_[0:16, 48:64])
    assert held["is_first"][16]  # the gap is a reset: no sequence runs across it as if contiguous
    assert reloaded.stats()["chunks_skipped"] == 2
    fill(reloaded, Streams(1, seed=9), 16)  # new chunks go after every existing file
    names = {p.name for p in tmp_path.glob("*.npz")}
    assert "0000-000000000064-0000016.npz" in names and truncated.name in names


def test_stale_temporary_files_are_removed(tmp_path):
    (tmp_path / "0000-000000000000-0000016.npz.tmp").write_bytes(b"half")
    Replay(SPEC, replay_config(chunk_size=16), 1, tmp_path)
    assert not list(tmp_path.glob("*.tmp"))


def test_killed_writer_leaves_a_loadable_prefix(tmp_path):
    """A process adding steps is killed (SIGKILL) at a random moment; what it left loads cleanly."""
    code = f"""
import sys; sys.path.insert(0, {str(ROOT)!r}); sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_replay import SPEC, Replay, Streams, replay_config
replay = Replay(SPEC, replay_config(capacity=100000, chunk_size=8), 2, {str(tmp_path)!r})
streams = Streams(2)
while True:
    replay.add(streams.step())
"""
    child = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("*.npz"))) < 40 and time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reloaded = Replay(SPEC, replay_config(capacity=100000, chunk_size=8), 2, tmp_path)
    expected = Streams(2)
    log = [expected.step() for _ in range(len(reloaded) // 2 + 8)]
    assert len(reloaded) >= 2 * 8 * 19
    for s in range(2):
        held = reloaded.stream_data(s)
        n = len(held["vector"])
        assert n % 8 == 0
        for key in SPEC:
            np.testing.assert_array_equal(held[key], np.stack([step[key][s] for step in log[:n]]), key)


def test_newest_corrupt_chunk_loses_only_its_steps_after_a_kill(tmp_path):
    """A run is killed after its checkpoint at step 200 (SIGKILL at step 270); the newest chunk (steps
    192..255) is then cut to 500 bytes. The resume keeps every valid step (0..191; it used to keep 136,
    its index taken from the skipped file's name), the next step starts a new sequence, and new chunks
    are named after the checkpoint's steps (no longer a copy of steps 128..135 under a new name)."""
    code = f"""
import os, signal, sys; sys.path.insert(0, {str(ROOT)!r}); sys.path.insert(0, {str(Path(__file__).parent)!r})
import torch
from test_replay import SPEC, Replay, Streams, fill, replay_config
replay = Replay(SPEC, replay_config(capacity=300, chunk_size=64), 1, {str(tmp_path)!r})
streams = Streams(1)
fill(replay, streams, 200)
replay.flush()
torch.save(replay.state_dict(), {str(tmp_path / "state.pt")!r})
fill(replay, streams, 70)
os.kill(os.getpid(), signal.SIGKILL)
"""
    child = subprocess.run([sys.executable, "-c", code], env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert child.returncode == -signal.SIGKILL
    newest = tmp_path / "0000-000000000192-0000064.npz"
    os.truncate(newest, 500)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = Replay(SPEC, replay_config(capacity=300, chunk_size=64), 1, tmp_path)
        resumed.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert newest.name in " ".join(str(w.message) for w in caught)
    np.testing.assert_array_equal(resumed.stream_data(0)["vector"][:, 1], np.arange(192))
    later = Streams(1, seed=5)
    later.step()  # so that the first step added is not an episode start of its own
    log = [later.step() for _ in range(70)]
    assert not log[0]["is_first"][0]
    for step in log:
        resumed.add(step)
    resumed.flush()
    assert sorted(p.name for p in tmp_path.glob("*.npz"))[3:] == [
        "0000-000000000200-0000064.npz",
        "0000-000000000264-0000006.npz",
    ]
    held = Replay(SPEC, replay_config(capacity=300, chunk_size=64), 1, tmp_path).stream_data(0)
    np.testing.assert_array_equal(held["vector"][:192, 1], np.arange(192))
    np.testing.assert_array_equal(held["vector"][192:], np.stack([step["vector"][0] for step in log]))
    assert held["is_first"][192]  # no window runs from step 191 into the resumed steps as if contiguous
    np.testing.assert_array_equal(held["is_first"][193:], [step["is_first"][0] for step in log[1:]])


def test_chunks_no_checkpoint_needs_are_deleted_and_a_resume_finds_every_step(tmp_path):
    """Disk use is bounded by capacity (every chunk used to stay: 400 steps per stream here). After each
    checkpoint the loop goes on, and a kill at that point resumes with the checkpoint's exact steps."""
    config = replay_config(capacity=2 * 48, chunk_size=16)
    replay = Replay(SPEC, config, 2, tmp_path, seed=1)
    streams = Streams(2)
    for _ in range(8):
        fill(replay, streams, 30)
        replay.flush()  # the loop's checkpoint: flush, state_dict, write the checkpoint
        state = through_checkpoint(replay.state_dict())
        held = [replay.stream_data(s) for s in range(2)]
        expected = replay.sample()
        fill(replay, streams, 20)  # the steps after it, lost with a kill
        # Its 48 steps per stream, the part of the chunk before them, the 20 steps after it.
        assert all(steps <= 48 + 15 + 20 for steps in steps_on_disk(tmp_path).values())
    assert replay.stats()["chunks_deleted"] > 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no step of the checkpoint is missing
        resumed = Replay(SPEC, config, 2, tmp_path, seed=7)
        resumed.load_state_dict(state)
    for s in range(2):
        assert_same(resumed.stream_data(s), held[s])
    assert_same(resumed.sample(), expected)


def test_chunks_are_deleted_only_once_the_checkpoint_no_longer_needing_them_is_written(tmp_path):
    """Killed while writing a checkpoint (after its state was taken, before the loop adds a step): the
    previous checkpoint, the newest on disk, still finds every step it holds."""
    config = replay_config(capacity=48, chunk_size=16)
    replay = Replay(SPEC, config, 1, tmp_path)
    streams = Streams(1)
    fill(replay, streams, 100)
    replay.flush()
    written = through_checkpoint(replay.state_dict())  # holds steps 52..99
    held = replay.stream_data(0)
    fill(replay, streams, 50)  # deletes the chunks of steps 0..47, which it does not need
    replay.flush()
    replay.state_dict()  # holds steps 102..149; its checkpoint is never written
    assert sorted(f.start for f in current(list_chunks(tmp_path)[0]))[0] == 48
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resumed = Replay(SPEC, config, 1, tmp_path)
        resumed.load_state_dict(written)
    assert_same(resumed.stream_data(0), held)


# --- exact resume ---


def test_resume_from_state_dict_continues_like_the_uninterrupted_run(tmp_path):
    config = replay_config(capacity=300, chunk_size=16, recency=0.3)
    data = Streams(2)
    before = [data.step() for _ in range(50)]
    after = [data.step() for _ in range(30)]

    uninterrupted = Replay(SPEC, config, 2, tmp_path / "a", seed=5)
    for step in before:
        uninterrupted.add(step)
    uninterrupted.flush()
    expected = [uninterrupted.sample()]
    for step in after:
        uninterrupted.add(step)
    expected.append(uninterrupted.sample())

    crashed = Replay(SPEC, config, 2, tmp_path / "b", seed=5)
    for step in before:
        crashed.add(step)
    crashed.flush()
    buffer = io.BytesIO()
    torch.save(crashed.state_dict(), buffer)  # as the checkpoint stores it
    fill(crashed, Streams(2, seed=99), 40)  # steps after the checkpoint, lost with the crash
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)

    resumed = Replay(SPEC, config, 2, tmp_path / "b", seed=0)
    resumed.load_state_dict(state)
    assert_same(resumed.sample(), expected[0])
    for step in after:
        resumed.add(step)
    assert_same(resumed.sample(), expected[1])
    again = Replay(SPEC, config, 2, tmp_path / "b")  # the disk now holds exactly the resumed data
    for s in range(2):
        assert_same(again.stream_data(s), uninterrupted.stream_data(s))


# --- offline dataset ---


def test_load_dataset_reads_chunks_and_episode_files(tmp_path):
    run = Replay(SPEC, replay_config(capacity=300, chunk_size=16), 2, tmp_path)
    fill(run, Streams(2), 40)
    run.flush()
    rng = np.random.default_rng(0)
    for i, length in enumerate([12, 9]):
        episode = {
            "vector": np.full((length, 3), 100 + i, np.float32),
            "image": rng.integers(0, 255, (length, 4, 4, 3), dtype=np.uint8),
            "reward": np.zeros(length, np.float32),
            "action": np.zeros((length, 2), np.float32),
        }
        np.savez_compressed(tmp_path / f"episode-{i}.npz", **episode)
    listing = sorted(p.name for p in tmp_path.iterdir())

    dataset = load_dataset(tmp_path, None, replay_config(batch_size=8, batch_length=8))
    assert set(dataset.spec) == set(SPEC) and dataset.spec["image"].dtype == np.uint8
    assert dataset.num_streams == 3 and len(dataset) == 40 + 40 + 21
    for s in range(2):
        assert_same(dataset.stream_data(s), run.stream_data(s))
    episodes = dataset.stream_data(2)
    np.testing.assert_array_equal(np.flatnonzero(episodes["is_first"]), [0, 12])
    np.testing.assert_array_equal(np.flatnonzero(episodes["is_last"]), [11, 20])
    assert dataset.sample()["image"].shape == (8, 8, 4, 4, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == listing  # never writes into the dataset


def test_load_dataset_reads_the_shards_of_every_rank(tmp_path):
    shards = [Replay(SPEC, replay_config(chunk_size=16), 2, tmp_path / f"rank{r}") for r in range(2)]
    for r, shard in enumerate(shards):
        fill(shard, Streams(2, seed=r), 20 + 10 * r)
        shard.flush()
    dataset = load_dataset(tmp_path, None, replay_config(capacity=200))
    assert dataset.num_streams == 4 and len(dataset) == 2 * 20 + 2 * 30
    for r, shard in enumerate(shards):
        for s in range(2):
            assert_same(dataset.stream_data(2 * r + s), shard.stream_data(s))


def test_load_dataset_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no chunk or episode"):
        load_dataset(tmp_path, None, replay_config())
    np.savez(tmp_path / "short.npz", reward=np.zeros(5, np.float32))
    with pytest.raises(ValueError, match="batch_length=8"):
        load_dataset(tmp_path, None, replay_config())


# --- errors ---


def test_bad_steps_are_rejected_naming_the_key():
    replay = Replay(SPEC, replay_config(), 2)
    step = Streams(2).step()
    with pytest.raises(KeyError, match="reward"):
        replay.add({k: v for k, v in step.items() if k != "reward"})
    with pytest.raises(ValueError, match="'action'.*\\(2, 2\\).*\\(2, 3\\)"):
        replay.add({**step, "action": np.zeros((2, 3), np.float32)})
    with pytest.raises(ValueError, match="'image'.*float64"):
        replay.add({**step, "image": step["image"] / 255.0})
    assert len(replay) == 0  # a rejected step stores nothing


@pytest.mark.parametrize(
    ("changes", "streams", "match"),
    [
        ({"capacity": 20}, 3, "replay.capacity=20 gives each of 3 streams 6 steps"),
        ({"recency": 1.5}, 1, "replay.recency"),
        ({"batch_size": 0}, 1, "replay.batch_size"),
        ({"chunk_size": 64, "capacity": 100}, 2, "replay.chunk_size=64"),
    ],
)
def test_bad_config_is_rejected(tmp_path, changes, streams, match):
    with pytest.raises(ValueError, match=match):
        Replay(SPEC, replay_config(**changes), streams, tmp_path)


def test_chunk_names_are_unique_per_stream_and_start(tmp_path):
    replay = Replay(SPEC, replay_config(capacity=300, chunk_size=16), 3, tmp_path)
    fill(replay, Streams(3), 48)
    found = list_chunks(tmp_path)
    assert sorted(found) == [0, 1, 2]
    assert all([c.start for c in files] == [0, 16, 32] for files in found.values())


def test_nonfinite_steps_are_refused_naming_the_env_key_and_step():
    """A NaN observation used to be stored and stop the run 10 updates later ("non-finite loss or
    gradient"), naming neither env nor key; now the step is refused at once and nothing is stored."""
    replay = Replay(SPEC, replay_config(), 2, env_id="Pendulum-v1")
    streams = Streams(2)
    fill(replay, streams, 5)
    step = streams.step()
    bad = {**step, "vector": step["vector"].copy()}
    bad["vector"][1, 2] = np.nan
    with pytest.raises(NonFiniteStepError, match="'vector' at step 5 of env Pendulum-v1 stream 1"):
        replay.add(bad)
    with pytest.raises(NonFiniteStepError, match="'reward' at step 0 of env stream 0"):
        Replay(SPEC, replay_config(), 2).add({**step, "reward": np.array([np.inf, 0.0], np.float32)})
    huge = step["vector"].astype(np.float64)
    huge[0, 0] = 1e300  # finite as float64, inf at the stored float32
    with pytest.raises(NonFiniteStepError, match="'vector'"):
        replay.add({**step, "vector": huge})
    assert len(replay) == 10 and all(np.isfinite(replay.stream_data(s)["vector"]).all() for s in range(2))


def test_drop_nonfinite_drops_and_counts_the_step_and_the_next_starts_a_sequence(tmp_path):
    config = replay_config(capacity=300, chunk_size=16, drop_nonfinite=True)
    replay = Replay(SPEC, config, 2, tmp_path)
    streams = Streams(2)
    log = [streams.step() for _ in range(40)]
    log[10] = {**log[10], "reward": np.array([np.nan, 1.0], np.float32)}
    for step in log:
        replay.add(step)
    assert replay.stats()["steps_dropped"] == 1
    held = [replay.stream_data(s) for s in range(2)]
    np.testing.assert_array_equal(held[0]["vector"][:, 1], np.r_[0:10, 11:40])
    np.testing.assert_array_equal(held[1]["vector"][:, 1], np.arange(40))
    assert held[0]["is_first"][10]  # step 11 does not follow step 9
    assert all(np.isfinite(h[key]).all() for h in held for key in ("vector", "reward", "action"))
    replay.flush()
    reloaded = Replay(SPEC, config, 2, tmp_path)
    for s in range(2):
        assert_same(reloaded.stream_data(s), held[s])


def test_chunks_holding_nonfinite_values_are_skipped(tmp_path):
    """Chunks written before non-finite steps were refused no longer bring the NaN back on every resume."""
    replay = Replay(SPEC, replay_config(capacity=200, chunk_size=16), 1, tmp_path)
    fill(replay, Streams(1), 32)
    poisoned = replay.stream_data(0)
    poisoned["vector"][20, 0] = np.nan
    write_chunk(tmp_path, 0, 16, {k: v[16:32] for k, v in poisoned.items()})  # over the chunk [16, 32)
    with pytest.warns(UserWarning, match=r"0000-000000000016-0000016.npz holds non-finite values.*'vector'"):
        reloaded = Replay(SPEC, replay_config(capacity=200, chunk_size=16), 1, tmp_path)
    np.testing.assert_array_equal(reloaded.stream_data(0)["vector"][:, 1], np.arange(16))


# --- stored latents (replay.context) ----------------------------------------------------------------

LATENT = {"deter": ArraySpec((5,), np.float32), "stoch": ArraySpec((2, 3), np.float32)}
CONTEXT_SPEC = step_spec(OBS, 2, LATENT)


def with_latent(step: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The step with a latent that names it: deter = [stream, step index, 0, 0, 0]."""
    S = len(step["is_first"])
    deter = np.zeros((S, 5), np.float32)
    deter[:, :2] = step["vector"][:, :2]
    return {**step, "context/deter": deter, "context/stoch": np.ones((S, 2, 3), np.float32)}


def test_windows_hold_the_context_steps_before_the_trained_ones_and_name_every_step():
    replay = Replay(CONTEXT_SPEC, replay_config(context=1), 2, seed=3)
    streams = Streams(2)
    for _ in range(8):  # one step short of a window of 1 + 8 steps
        replay.add(with_latent(streams.step()))
    assert not replay.ready
    for _ in range(40):
        replay.add(with_latent(streams.step()))
    batch = replay.sample()
    assert batch["vector"].shape == (6, 9, 3) and batch["stepid"].shape == (6, 9)
    index = batch["vector"][..., 1]
    assert (np.diff(index, axis=1) == 1).all()  # contiguous, the context step first
    # The stepid names the stream and the step: here the disk index is the step index.
    np.testing.assert_array_equal(batch["stepid"] % 2, batch["vector"][..., 0])
    np.testing.assert_array_equal(batch["stepid"] // 2, index)
    np.testing.assert_array_equal(batch["context/deter"][..., :2], batch["vector"][..., :2])
    # Without a stored latent there is no context: windows are batch_length steps.
    assert Replay(SPEC, replay_config(context=1), 2).length == 8


def test_update_overwrites_the_latent_of_the_steps_still_held():
    replay = Replay(CONTEXT_SPEC, replay_config(capacity=40, context=1), 2, seed=1)
    streams = Streams(2)
    for _ in range(15):
        replay.add(streams.step())  # a random policy's steps: no latent, the initial (zero) one stored
    assert not replay.stream_data(0)["context/deter"].any()
    batch = replay.sample()
    for _ in range(10):  # stream capacity 20: the oldest 5 steps of each stream are overwritten
        replay.add(with_latent(streams.step()))
    trained = batch["stepid"][:, 1:]
    new = np.full((*trained.shape, 5), 7.0, np.float32)
    replay.update(
        {"stepid": trained, "context/deter": new, "context/stoch": np.zeros((*trained.shape, 2, 3))}
    )
    for stream in range(2):
        data = replay.stream_data(stream)
        held = data["vector"][:, 1].astype(int)
        mine = trained[trained % 2 == stream] // 2
        refreshed = np.isin(held, mine)
        assert refreshed.any() and (data["context/deter"][refreshed] == 7.0).all()
        assert not data["context/stoch"][refreshed].any()
        policy = held >= 15  # the steps added after the sample keep the policy's latent
        np.testing.assert_array_equal(data["context/deter"][policy, 1], held[policy])
        assert not data["context/deter"][~refreshed & ~policy].any()
    with pytest.raises(KeyError, match="reward"):
        replay.update({"stepid": trained, "reward": np.zeros(trained.shape)})


def test_a_resume_restores_the_refreshed_latents_and_draws_the_same_batches(tmp_path):
    """Latents refreshed after their chunk was written come back with the checkpoint's flush."""
    config = replay_config(capacity=2 * 48, chunk_size=16, context=1)
    replay = Replay(CONTEXT_SPEC, config, 2, tmp_path, seed=1)
    streams = Streams(2)
    for round in range(4):
        for _ in range(30):
            replay.add(with_latent(streams.step()))
        batch = replay.sample()
        latent = np.full((*batch["stepid"].shape, 5), float(round + 1), np.float32)
        replay.update({"stepid": batch["stepid"], "context/deter": latent})
    replay.flush()
    state = through_checkpoint(replay.state_dict())
    held = [replay.stream_data(s) for s in range(2)]
    expected = replay.sample()
    for _ in range(20):  # steps after the checkpoint, lost with a kill
        replay.add(with_latent(streams.step()))
    resumed = Replay(CONTEXT_SPEC, config, 2, tmp_path, seed=7)
    resumed.load_state_dict(state)
    for s in range(2):
        assert (held[s]["context/deter"][:, 2] > 0).any()  # some held steps were refreshed
        assert_same(resumed.stream_data(s), held[s])
    assert_same(resumed.sample(), expected)


def test_online_windows_with_a_context_step_tile_the_trained_steps():
    """Queued windows of 1 + T steps: the context step of each is the last trained step of the one before,
    so every step after the first T of a stream is trained once through the queue."""
    replay = Replay(CONTEXT_SPEC, replay_config(context=1, batch_size=1, online=True), 1, seed=0)
    streams, trained = Streams(1), []
    for _ in range(60):
        replay.add(with_latent(streams.step()))
        while replay._online:
            trained.extend(replay.sample()["vector"][0, 1:, 1].astype(int).tolist())
    assert trained == list(range(8, 56))


def test_an_offline_dataset_holds_the_latents_refreshed_after_their_chunks_were_written(tmp_path):
    config = replay_config(capacity=64, chunk_size=16, context=1)
    replay = Replay(CONTEXT_SPEC, config, 2, tmp_path, seed=1)
    streams = Streams(2)
    for _ in range(40):
        replay.add(with_latent(streams.step()))
    batch = replay.sample()
    replay.update({"stepid": batch["stepid"], "context/deter": np.full((*batch["stepid"].shape, 5), 9.0)})
    replay.flush()
    dataset = load_dataset(tmp_path, CONTEXT_SPEC, config)
    for s in range(2):
        assert_same(dataset.stream_data(s), replay.stream_data(s))
    assert (dataset.stream_data(0)["context/deter"] == 9.0).any() or (
        dataset.stream_data(1)["context/deter"] == 9.0
    ).any()
