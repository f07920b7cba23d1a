"""The run folder's lock: one training process per run folder, refused launches write nothing, a killed
holder's lock is taken over."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import train
from run.checkpoint import Checkpointer, load
from run.lock import LOCK_FILE, RunFolderBusyError, RunLock

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
FAST = ["--run.train_ratio", "16", "--logger.wandb.mode", "disabled", "--logger.terminal", "false"]


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime) of every file under `folder`."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def test_a_second_lock_on_a_held_folder_names_the_holder(tmp_path):
    with RunLock(tmp_path):
        assert (tmp_path / LOCK_FILE).read_text() == f"pid {os.getpid()} on host {socket.gethostname()}"
        with pytest.raises(RunFolderBusyError, match=f"in use by pid {os.getpid()} on host "):
            RunLock(tmp_path).acquire()  # another open file: flock refuses it as it would another process
    assert (tmp_path / LOCK_FILE).read_text() == ""  # a clean release empties the file
    with RunLock(tmp_path):
        pass


def test_a_killed_holders_lock_is_taken_over_with_a_notice(tmp_path, capsys):
    (tmp_path / LOCK_FILE).write_text("pid 4242 on host elsewhere")  # its process died holding it
    with RunLock(tmp_path):
        assert "taking over the lock" in capsys.readouterr().err
        assert (tmp_path / LOCK_FILE).read_text().startswith(f"pid {os.getpid()} ")
    with RunLock(tmp_path):
        assert capsys.readouterr().err == ""  # released cleanly: nothing to take over


def test_train_on_a_held_folder_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys):
    logdir = tmp_path / "run"
    with RunLock(logdir):
        before = snapshot(logdir)
        assert train.main(["--configs", "debug", "--logdir", str(logdir), *FAST]) == 2
        assert snapshot(logdir) == before
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1
    assert err.startswith(f"train.py: error: run folder {logdir} is in use by pid {os.getpid()} on host ")


def wait_for(predicate, timeout: float, process: subprocess.Popen) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end and process.poll() is None:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def run_train(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(ROOT / "train.py"), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT, env=ENV)


def test_a_second_launch_exits_2_and_a_killed_runs_folder_resumes(tmp_path):
    logdir = tmp_path / "run"
    first_args = ["--configs", "debug", "--logdir", str(logdir), *FAST, "--run.steps", "100000"]
    command = [sys.executable, str(ROOT / "train.py"), *first_args, "--run.save_every_steps", "20"]
    first = subprocess.Popen(command, cwd=ROOT, env=ENV, stderr=subprocess.PIPE, text=True)
    try:
        # Polled by name: a Checkpointer here would clear the writer's temporary files.
        found = wait_for(lambda: any((logdir / "checkpoints").glob("ckpt-*.pt")), 120, first)
        assert found, first.stderr.read()[-2000:] if first.poll() is not None else "no checkpoint in 120 s"
        first.send_signal(signal.SIGSTOP)  # the holder writes nothing while the second launch runs
        before = snapshot(logdir)
        second = run_train("--logdir", str(logdir))  # the resume command on the same folder
        assert second.returncode == 2, second.stderr[-2000:]
        assert second.stdout == "" and len(second.stderr.splitlines()) == 1
        assert f"is in use by pid {first.pid} on host {socket.gethostname()}" in second.stderr
        assert snapshot(logdir) == before
    finally:
        first.kill()
        first.wait()
    steps = load(Checkpointer(logdir / "checkpoints").latest())["step"] + 20
    third = run_train("--logdir", str(logdir), "--run.steps", str(steps))
    assert third.returncode == 0, third.stderr[-2000:]
    assert f"taking over the lock of {logdir} from pid {first.pid} on host " in third.stderr
    assert "resumed from" in third.stdout and f"finished after {steps} steps" in third.stdout
