"""Atomic file writes: a crash or a full disk never leaves a half-written file under the final name."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import BinaryIO, Callable

TMP_SUFFIX = ".tmp"


def write_atomic(
    path: Path, write: Callable[[BinaryIO], object], before_rename: Callable[[Path], object] | None = None
) -> None:
    """Call `write(file)` on `<path>.tmp`, fsync, then `before_rename(tmp)` if given, and rename it to
    `path`; on failure remove the tmp."""
    tmp = path.with_name(path.name + TMP_SUFFIX)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if before_rename is not None:
            before_rename(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def cannot_write(folder: Path) -> str | None:
    """Why `folder` (created if missing) cannot be written, or None when it can."""
    probe = folder / f".write-test-{uuid.uuid4().hex[:8]}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        return e.strerror or str(e)
    return None
