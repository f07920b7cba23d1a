"""`run.precision`: the autocast dtype of the forward passes, and what `auto` picks on this machine.

`auto` computes in bfloat16 where the device does so natively and in float32 elsewhere: bf16 autocast on
a CPU without bf16 instructions is emulated and ~90x slower than fp32 (1-thread matmuls measured on an
AVX2-only EPYC: ~1 against ~90 GFLOP/s), while a Xeon with AMX computes bf16 matmuls ~3x faster than fp32.
Parameters, optimizer states and loss reductions stay float32 under either dtype, so checkpoints do not
depend on the precision.

`choose_precision` is the rule, a pure function of the device and the hardware facts; `auto_precision`
gathers those facts on this machine and `resolve_precision` keeps an explicit value. train.py resolves
`auto` once at start, says the choice in one line and saves the resolved value in the run's config.yaml;
`make_agent` resolves it for every other builder (evaluate.py, the bench scripts), so an Agent only ever
gets a concrete precision.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch

# The autocast dtype of each concrete `run.precision` (float32: no autocast).
AUTOCAST = {"float32": None, "bfloat16": torch.bfloat16}
# x86 CPU flags of native bf16 arithmetic: AMX tiles (Sapphire Rapids and later), AVX512-BF16 dot products.
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
CPUINFO = Path("/proc/cpuinfo")


class Choice(NamedTuple):
    """A concrete precision and why `auto` picked it."""

    precision: str
    reason: str

    def line(self) -> str:
        """The one line a run prints at start."""
        return f"run.precision auto -> {self.precision}: {self.reason}"


def cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str]:
    """The CPU feature flags listed in /proc/cpuinfo (empty where it cannot be read: not Linux)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    lines = (line.partition(":") for line in text.splitlines())
    return frozenset(flag for key, _, value in lines if key.strip() == "flags" for flag in value.split())


def choose_precision(device_type: str, cpu_flags: frozenset[str], cuda_bf16: bool) -> Choice:
    """What `auto` means for a device of this type ("cpu" or "cuda"), given the CPU's flags and whether
    the CUDA device computes bf16 natively (`torch.cuda.is_bf16_supported(including_emulation=False)`)."""
    if device_type == "cuda":
        if cuda_bf16:
            return Choice("bfloat16", "this CUDA device computes bfloat16 natively")
        return Choice("float32", "this CUDA device has no native bfloat16 (before compute capability 8.0)")
    native = " / ".join(flag for flag in BF16_CPU_FLAGS if flag in cpu_flags)
    if native:
        return Choice("bfloat16", f"this CPU computes bfloat16 natively ({native} in {CPUINFO})")
    wanted = " / ".join(BF16_CPU_FLAGS)
    return Choice("float32", f"this CPU has no native bfloat16 (no {wanted} in {CPUINFO})")


def auto_precision(device: torch.device) -> Choice:
    """What `auto` means for `device` on this machine: the facts gathered, then `choose_precision`."""
    cuda_bf16 = False
    if device.type == "cuda":
        with torch.cuda.device(device):
            cuda_bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
    return choose_precision(device.type, cpu_flags() if device.type == "cpu" else frozenset(), cuda_bf16)


def resolve_precision(precision: str, device: torch.device) -> str:
    """`run.precision` as the Agent takes it: `auto` resolved for `device`, an explicit value kept."""
    return auto_precision(device).precision if precision == "auto" else precision
