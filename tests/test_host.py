"""run/host.py: large freed blocks stay mapped, so a repeated big temporary is not page-faulted again."""

import platform
import subprocess
import sys

import pytest

# Two 64 MiB temporaries per iteration, as an update makes them: the minor page faults of the last 4 of
# 12 iterations. (Kept, the heap needs a few iterations to grow to the working set.)
PROGRAM = """
import resource, sys, torch
from run.host import keep_freed_memory
took = keep_freed_memory() if sys.argv[1] == "keep" else None
x = torch.randn(2**24)
def temporaries():
    y = x * 2.0
    z = torch.ones(2**24)
for _ in range(8):
    temporaries()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    temporaries()
print(took, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", PROGRAM, mode], capture_output=True, text=True, check=True)
    took, count = out.stdout.split()
    return took, int(count)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_keep_freed_memory_reuses_large_blocks():
    took, kept = faults("keep")
    _, default = faults("default")
    assert took == "True"
    # By default every 64 MiB block is a fresh mapping, faulted in page by page: 4 x 2 x 16384 pages of
    # 4 KiB, or at least 4 x 2 x 32 where transparent huge pages of 2 MiB back it.
    assert default >= 8 * 32
    # Kept, the freed block is reused: its pages are already mapped.
    assert kept < default / 10


CUDA_FLAGS = """
import torch
from run.host import setup_cuda
for tf32, benchmark in ((True, True), (False, False)):
    setup_cuda(tf32, benchmark)
    cudnn = torch.backends.cudnn
    print(torch.get_float32_matmul_precision(), cudnn.allow_tf32, cudnn.benchmark)
"""


def test_setup_cuda_turns_tf32_and_the_cudnn_search_on_or_off():
    out = subprocess.run([sys.executable, "-c", CUDA_FLAGS], capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:2] == ["high True True", "highest False False"]


@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_a_cuda_run_applies_the_configured_cuda_settings_and_a_cpu_run_none(monkeypatch, device):
    import torch

    import agent
    import run.host
    import train
    from configs.loader import load_config

    calls = []
    monkeypatch.setattr(agent, "resolve_device", lambda _: torch.device(device))
    monkeypatch.setattr(run.host, "setup_cuda", lambda *args: calls.append(args))
    monkeypatch.setattr(run.host, "setup_cpu", lambda *args: False)
    config = load_config(["debug"], {"run": {"tf32": False, "cudnn_benchmark": True}})
    train.setup_host(config, announce=False)
    assert calls == ([(False, True)] if device == "cuda" else [])
