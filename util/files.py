"""Atomic file writes: a crash or a full disk never leaves a half-written file under the final name."""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO, Callable

TMP_SUFFIX = ".tmp"


def write_atomic(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Call `write(file)` on `<path>.tmp`, fsync, and rename it to `path`; on failure remove the tmp."""
    tmp = path.with_name(path.name + TMP_SUFFIX)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
