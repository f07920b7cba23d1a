"""Process-wide settings: torch's thread count and how the C allocator treats large blocks on a CPU run;
TF32 and cudnn's algorithm search on a CUDA run (`setup_cuda`).

An update allocates temporaries of tens to hundreds of MB (the imagined features are N(H+1) x F floats,
the image activations B T x C x H x W). glibc serves every block above its mmap threshold with a fresh
mmap and unmaps it on free, so each such temporary is page-faulted in again, one 4 KiB page at a time:
on this machine `x * 2` over 100 MB took 65 ms into a new tensor against 12 ms into an existing one.
`keep_freed_memory` raises the mmap and trim thresholds so that large blocks come from the heap and stay
mapped once freed, for the next update to reuse. The cost: the process keeps its peak heap instead of
handing freed memory back to the system. train.py and evaluate.py apply it (`run.keep_freed_memory`)
only when the run's device is the CPU, and say so in one line.
"""

from __future__ import annotations

import ctypes
import ctypes.util

import torch

# mallopt parameters (malloc.h).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
# Blocks up to 1 GiB come from the heap; up to 2 GiB - 1 of free memory at its top stays mapped.
MMAP_THRESHOLD, TRIM_THRESHOLD = 1 << 30, (1 << 31) - 1


def keep_freed_memory() -> bool:
    """Keep large freed blocks mapped for reuse (glibc only). Returns whether the allocator took it."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS, Windows): nothing to do
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def setup_cpu(threads: int, keep_memory: bool) -> bool:
    """torch threads (0: torch's choice) and, if `keep_memory`, `keep_freed_memory()`. Returns whether
    the allocator setting was applied."""
    if threads > 0:
        torch.set_num_threads(threads)
    return keep_memory and keep_freed_memory()


def setup_cuda(tf32: bool, benchmark: bool) -> None:
    """float32 matmuls and convolutions in TF32 (`tf32`) and cudnn's per-shape algorithm search
    (`benchmark`), process-wide; both stay off when False."""
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = benchmark
