"""The run folder's lock: one training process per run folder.

The lock is an OS lock on `<logdir>/.lock` (`fcntl.flock`; `msvcrt.locking` where there is no fcntl),
held for the life of the process. The kernel drops it when the process dies, so a kill leaves nothing
to clean up. The file holds the holder's pid and host, for the message a second process prints; a clean
release empties it, so a file that still names a process when its lock is free was left by a process
that was killed, and the next run takes it over with a notice.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]
try:
    import msvcrt
except ImportError:  # POSIX
    msvcrt = None  # type: ignore[assignment]

LOCK_FILE = ".lock"
# msvcrt's locks are mandatory: the locked byte lies far past the holder's text, which stays readable.
MSVCRT_LOCK_OFFSET = 1 << 20
# A holder writes its pid just after taking the lock; a second process may read the file in between.
HOLDER_READ_TRIES = 10
HOLDER_READ_WAIT = 0.05


class RunFolderBusyError(RuntimeError):
    """Another live process holds the run folder's lock."""


class RunLock:
    """An exclusive lock on a run folder, held from `acquire` until `release` or the process's end."""

    def __init__(self, logdir: str | os.PathLike):
        self.logdir = Path(logdir)
        self.path = self.logdir / LOCK_FILE
        self.fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise RunFolderBusyError naming its holder. Creates the folder and the lock
        file if needed; writes nothing else, and nothing at all when the folder is busy."""
        self.logdir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if not _try_lock(fd):
            holder = _read_holder(fd)
            os.close(fd)
            raise RunFolderBusyError(
                f"run folder {self.logdir} is in use by {holder or 'another process'} (lock file "
                f"{self.path}); wait for it to end, or train in another --logdir"
            )
        stale = _read(fd)
        if stale:
            print(
                f"note: taking over the lock of {self.logdir} from {stale}, which ended without releasing it",
                file=sys.stderr,
            )
        _write(fd, f"pid {os.getpid()} on host {socket.gethostname()}")
        self.fd = fd

    def release(self) -> None:
        """Empty the lock file (a clean end) and drop the lock."""
        if self.fd is None:
            return
        _write(self.fd, "")
        os.close(self.fd)  # closing the file drops the OS lock
        self.fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _try_lock(fd: int) -> bool:
    """Take the OS lock on `fd` without waiting; False when another process holds it."""
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        elif msvcrt is not None:
            os.lseek(fd, MSVCRT_LOCK_OFFSET, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        else:
            print("note: no file locking on this platform; the run folder is not locked", file=sys.stderr)
    except (BlockingIOError, PermissionError):  # held by another process (PermissionError: msvcrt)
        return False
    except OSError as e:  # e.g. a network file system without locks: train, but say so
        print(f"note: cannot lock the run folder ({e.strerror or e}); it is not locked", file=sys.stderr)
    return True


def _read_holder(fd: int) -> str:
    for _ in range(HOLDER_READ_TRIES):
        holder = _read(fd)
        if holder:
            return holder
        time.sleep(HOLDER_READ_WAIT)
    return ""


def _read(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    return os.read(fd, 4096).decode(errors="replace").strip()


def _write(fd: int, text: str) -> None:
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, text.encode())
