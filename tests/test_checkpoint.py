"""Checkpoints: exact round trip, atomic writes, keep-last-N, safe loading, corruption, config checks."""

import errno
import os
import pickle
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from configs.loader import load_config, to_yaml
from run import checkpoint as ckpt
from run.checkpoint import Checkpointer, CheckpointError, check_compatible, load
from run.seeding import generator_state, rng_state, seed_everything, set_generator_state, set_rng_state

ROOT = Path(__file__).resolve().parents[1]


def make_state(value: float = 1.0) -> dict:
    return {
        "agent": {"w": torch.full((3, 2), value), "opt": {"step": torch.tensor(5), "lr": 1e-4}},
        "replay": {"rng": generator_state(np.random.default_rng(7)), "counts": np.arange(4, dtype=np.int64)},
        "loop": {"step": 100, "updates": 12, "scalar": np.float32(0.5)},
    }


def test_round_trip_is_exact_including_numpy(tmp_path):
    saver = Checkpointer(tmp_path)
    path = saver.save(make_state(2.0), step=100)
    assert path.name == "ckpt-000000100.pt"
    state = load(path)
    assert state["step"] == 100
    assert torch.equal(state["agent"]["w"], torch.full((3, 2), 2.0))
    assert state["agent"]["opt"]["lr"] == 1e-4
    counts = state["replay"]["counts"]
    assert isinstance(counts, np.ndarray) and counts.dtype == np.int64 and counts.tolist() == [0, 1, 2, 3]
    assert state["loop"]["scalar"] == 0.5 and isinstance(state["loop"]["scalar"], float)


def test_rng_states_restore_exactly_through_a_checkpoint(tmp_path):
    seed_everything(123)
    gen = np.random.default_rng(5)
    gen.random(3)
    Checkpointer(tmp_path).save({"rng": rng_state(), "gen": generator_state(gen)}, step=1)
    expected = (random.random(), np.random.rand(), torch.rand(2), gen.random())
    seed_everything(999)
    state = load(tmp_path / "ckpt-000000001.pt")
    set_rng_state(state["rng"])
    restored = np.random.default_rng(0)
    set_generator_state(restored, state["gen"])
    got = (random.random(), np.random.rand(), torch.rand(2), restored.random())
    assert got[0] == expected[0] and got[1] == expected[1] and got[3] == expected[3]
    assert torch.equal(got[2], expected[2])


@pytest.mark.parametrize("visible", [1, 2, 3])
def test_cuda_rng_states_restore_on_the_devices_that_exist(monkeypatch, capsys, visible):
    saved = [torch.full((8,), float(device), dtype=torch.uint8) for device in range(2)]  # a 2-GPU run
    state = {**rng_state(), "cuda": saved}
    restored = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device: restored.__setitem__(device, s))
    set_rng_state(state)
    assert sorted(restored) == list(range(min(visible, 2)))
    assert all(torch.equal(restored[d], saved[d]) for d in restored)
    dropped = "random states of 2 CUDA devices saved, 1 visible: restoring the first 1"
    assert capsys.readouterr().out.splitlines() == ([dropped] if visible < 2 else [])


def test_keeps_only_the_newest_n(tmp_path):
    saver = Checkpointer(tmp_path, keep=2)
    for step in (10, 20, 30, 40):
        saver.save(make_state(step), step)
    assert [p.name for p in saver.paths()] == ["ckpt-000000030.pt", "ckpt-000000040.pt"]
    assert sorted(p.name for p in tmp_path.glob("*.sha256")) == [
        "ckpt-000000030.pt.sha256",
        "ckpt-000000040.pt.sha256",
    ]
    assert saver.latest().name == "ckpt-000000040.pt"
    assert load(tmp_path)["step"] == 40  # a folder resolves to its newest checkpoint


def test_paths_sort_by_step_not_by_name_length(tmp_path):
    saver = Checkpointer(tmp_path, keep=5)
    for step in (999, 1000, 5):
        saver.save(make_state(), step)
    assert [int(p.stem.split("-")[1]) for p in saver.paths()] == [5, 999, 1000]


def test_weights_only_refuses_a_file_that_would_run_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "ckpt-000000001.pt"
    torch.save({"format": ckpt.FORMAT, "x": Evil()}, path)
    with pytest.raises(CheckpointError, match="corrupt or truncated") as info:
        load(path)
    # torch's own message advises loading with weights_only=False, which would run the file's code.
    message = str(info.value)
    assert "the safe loader refuses it: Trying to load unsupported GLOBAL posix.system" in message
    assert "weights_only=False" not in message and "weights_only` set to `False" not in message


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupt_latest_falls_back_to_the_previous(tmp_path, damage, capsys):
    saver = Checkpointer(tmp_path, keep=3)
    saver.save(make_state(1.0), 10)
    bad = saver.save(make_state(2.0), 20)
    data = bad.read_bytes()
    if damage == "truncate":
        bad.write_bytes(data[: len(data) // 2])
    else:  # one flipped byte in the middle: still a valid zip, caught by the sha256
        middle = len(data) // 2
        bad.write_bytes(data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :])
    with pytest.raises(CheckpointError, match="ckpt-000000020.pt is corrupt"):
        load(bad)
    loaded = saver.load_latest()
    assert loaded.path.name == "ckpt-000000010.pt" and loaded.state["step"] == 10
    err = capsys.readouterr().err
    assert "trying the previous checkpoint" in err and "moved the corrupt checkpoint ckpt-000000020.pt" in err
    assert sorted(p.name for p in tmp_path.glob("*.corrupt")) == [
        "ckpt-000000020.pt.corrupt",
        "ckpt-000000020.pt.sha256.corrupt",
    ]


def test_a_corrupt_checkpoint_is_moved_aside_not_counted_nor_retried(tmp_path, capsys):
    # Before: a corrupt ckpt-900 kept one of the `keep` slots for good and was tried on every resume.
    saver = Checkpointer(tmp_path, keep=2)
    saver.save(make_state(1.0), 10)
    saver.save(make_state(2.0), 20)
    (tmp_path / "ckpt-000000900.pt").write_bytes(b"garbage")
    assert saver.load_latest().path.name == "ckpt-000000020.pt"
    assert "ckpt-000000900.pt is corrupt" in capsys.readouterr().err
    assert Checkpointer(tmp_path, keep=2).load_latest().path.name == "ckpt-000000020.pt"
    assert capsys.readouterr().err == ""  # not tried again
    saver.save(make_state(3.0), 30)
    assert [p.name for p in saver.paths()] == ["ckpt-000000020.pt", "ckpt-000000030.pt"]
    assert (tmp_path / "ckpt-000000900.pt.corrupt").read_bytes() == b"garbage"


def test_an_unreadable_checkpoint_is_skipped_but_not_moved(tmp_path, capsys, monkeypatch):
    saver = Checkpointer(tmp_path)
    saver.save(make_state(1.0), 10)
    newest = saver.save(make_state(2.0), 20)
    real = Path.read_bytes

    def unreadable(path):
        if path == newest:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real(path)

    monkeypatch.setattr(Path, "read_bytes", unreadable)
    assert saver.load_latest().path.name == "ckpt-000000010.pt"
    assert "cannot read checkpoint" in capsys.readouterr().err
    assert newest.exists() and not list(tmp_path.glob("*.corrupt"))  # an I/O error may pass


def test_a_folder_of_checkpoints_falls_back_without_changing_it(tmp_path, capsys):
    saver = Checkpointer(tmp_path / "checkpoints")
    saver.save(make_state(1.0), 10)
    saver.save(make_state(2.0), 20).write_bytes(b"garbage")
    assert load(tmp_path)["step"] == 10  # the run folder
    assert "ckpt-000000020.pt is corrupt" in capsys.readouterr().err
    assert not list((tmp_path / "checkpoints").glob("*.corrupt"))


def test_truncated_without_digest_is_a_clear_error(tmp_path):
    saver = Checkpointer(tmp_path)
    path = saver.save(make_state(), 1)
    (tmp_path / "ckpt-000000001.pt.sha256").unlink()
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load(path)


def test_all_unreadable_raises_and_none_gives_none(tmp_path):
    saver = Checkpointer(tmp_path)
    assert saver.load_latest() is None
    (tmp_path / "ckpt-000000001.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="no readable checkpoint") as info:
        saver.load_latest()
    assert "weights_only" not in str(info.value).replace(str(tmp_path), "")
    assert saver.latest().name == "ckpt-000000001.pt"  # nothing to fall back to: left for a person


# --- a kill during a save (subprocess tests) -----------------------------------------------------------

# Saves ckpt 1, then ckpt 2 with a recognizable tensor, and SIGKILLs itself right before or right after
# the rename that gives ckpt 2 its final name.
KILLED_SAVE = """
import os, signal, sys, torch
from run.checkpoint import Checkpointer
saver = Checkpointer(sys.argv[1])
saver.save({"w": torch.full((256,), 1.0)}, 1)
real_replace, when = os.replace, sys.argv[2]
def replace(src, dst):
    final = str(dst).endswith("ckpt-000000002.pt")
    if final and when == "before":
        os.kill(os.getpid(), signal.SIGKILL)
    real_replace(src, dst)
    if final and when == "after":
        os.kill(os.getpid(), signal.SIGKILL)
os.replace = replace
saver.save({"w": torch.full((256,), 0.123456789)}, 2)
"""


def killed_save(directory: Path, when: str) -> None:
    command = [sys.executable, "-c", KILLED_SAVE, str(directory), when]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]


def test_a_kill_right_after_the_rename_leaves_a_checkpoint_with_its_digest(tmp_path, capsys):
    # Before: the digest was written after the rename, so this kill left ckpt 2 without one, and a
    # flipped byte in its tensor then loaded silently.
    killed_save(tmp_path, "after")
    path = tmp_path / "ckpt-000000002.pt"
    assert (tmp_path / "ckpt-000000002.pt.sha256").exists()
    assert torch.equal(load(path)["w"], torch.full((256,), 0.123456789))
    data = bytearray(path.read_bytes())
    at = data.index(np.float32(0.123456789).tobytes()) + 2
    data[at] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="ckpt-000000002.pt is corrupt"):
        load(path)
    loaded = Checkpointer(tmp_path).load_latest()
    assert loaded.path.name == "ckpt-000000001.pt"
    assert (tmp_path / "ckpt-000000002.pt.corrupt").exists()


def test_a_kill_right_before_the_rename_leaves_the_previous_checkpoint_only(tmp_path):
    killed_save(tmp_path, "before")
    assert (tmp_path / "ckpt-000000002.pt.tmp").exists()
    saver = Checkpointer(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-000000001.pt", "ckpt-000000001.pt.sha256"]
    assert saver.load_latest().path.name == "ckpt-000000001.pt"


def test_a_checkpoint_without_a_digest_loads_with_a_warning(tmp_path, capsys):
    path = Checkpointer(tmp_path).save(make_state(), 1)
    (tmp_path / "ckpt-000000001.pt.sha256").unlink()
    assert load(path)["step"] == 1
    assert "has no ckpt-000000001.pt.sha256" in capsys.readouterr().err


def test_not_a_checkpoint_and_missing_file(tmp_path):
    torch.save({"something": 1}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a checkpoint of this project"):
        load(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load(tmp_path)


def test_disk_full_while_saving_leaves_the_previous_intact(tmp_path, monkeypatch):
    saver = Checkpointer(tmp_path)
    saver.save(make_state(1.0), 10)

    def full_disk(obj, f, *args, **kwargs):
        f.write(b"partial bytes")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointError) as info:
        saver.save(make_state(2.0), 20)
    message = str(info.value)
    assert "ckpt-000000020.pt" in message and "No space left on device" in message
    assert "ckpt-000000010.pt is intact" in message
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".sha256")] == ["ckpt-000000010.pt"]
    monkeypatch.undo()
    assert load(saver.latest())["step"] == 10


def test_stale_tmp_from_a_killed_save_is_ignored_and_removed(tmp_path):
    Checkpointer(tmp_path).save(make_state(), 5)
    (tmp_path / "ckpt-000000010.pt.tmp").write_bytes(b"half")
    saver = Checkpointer(tmp_path)
    assert not list(tmp_path.glob("*.tmp"))
    assert saver.latest().name == "ckpt-000000005.pt"


def test_save_into_an_unwritable_place_is_a_clear_error(tmp_path):
    saver = Checkpointer(tmp_path / "ckpts")
    (tmp_path / "ckpts").rename(tmp_path / "moved")
    (tmp_path / "ckpts").write_text("a file where the folder was")
    with pytest.raises(CheckpointError, match="cannot write checkpoint"):
        saver.save(make_state(), 1)


def test_config_check_names_the_mismatching_keys():
    a = load_config(["debug"])
    b = load_config(
        ["debug"], {"world_model": {"deter": 64, "encoder": {"units": 8}}, "env": {"id": "Pendulum-v1"}}
    )
    with pytest.raises(CheckpointError) as info:
        check_compatible(to_yaml(a), to_yaml(b), "run/ckpt-1.pt")
    message = str(info.value)
    assert "world_model.deter (checkpoint 32, config 64)" in message
    assert "world_model.encoder.units (checkpoint 16, config 8)" in message
    assert "env.id (checkpoint 'CartPole-v1', config 'Pendulum-v1')" in message
    assert "run/ckpt-1.pt" in message


def test_config_check_allows_schedule_and_loss_changes():
    a = load_config(["debug"])
    b = load_config(
        ["debug"], {"run": {"steps": 5000}, "optim": {"lr": 1e-3}, "world_model": {"free_nats": 0.5}}
    )
    check_compatible(to_yaml(a), to_yaml(b), "x")


def test_pack_keeps_containers_and_is_picklable_by_weights_only_loader():
    packed = ckpt.pack({"a": [np.zeros(2, np.float32), (np.int64(3), "s")]})
    assert isinstance(packed["a"][1], tuple) and packed["a"][1][0] == 3
    pickle.dumps(packed)
    back = ckpt.unpack(packed)
    assert back["a"][0].dtype == np.float32 and back["a"][1] == (3, "s")
