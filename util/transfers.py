"""Counting host-device transfers: every point where the host waits for an accelerator's queue.

`HostTransfers` records, while it is active,

- reads: a device tensor's value brought to the host (`.item()`, `.tolist()`, `bool(t)`, `.cpu()`,
  `.numpy()`: the `_local_scalar_dense` op, or a copy from the device to the CPU);
- writes: host data put on the device by a copy from a CPU tensor (`.to(device)`) or by a factory that
  takes Python data (`torch.tensor`, `torch.as_tensor`, `Tensor.new_tensor` with a device). The
  factories copy below the dispatcher, so a function-level mode sees them.

Each is a synchronization on CUDA (a read waits for every queued kernel; a pageable write as well), and
a CUDA graph cannot capture either. With `device="meta"` (a stand-in accelerator: shapes only, no data)
and `fake_reads=True`, a read returns zeros of the right shape and dtype instead of failing, so code that
reads back (acting, logging, checkpoints) runs on and its reads are counted.
"""

from __future__ import annotations

import traceback
from contextlib import ExitStack
from typing import Any, NamedTuple

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

FACTORIES = {torch.tensor, torch.as_tensor, torch.asarray, torch.Tensor.new_tensor}
_COPIES = {torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default}


def to_floats(metrics: dict[str, torch.Tensor | float]) -> dict[str, float]:
    """Scalar tensors (on one device) and numbers -> python floats, reading the device once."""
    tensors = {k: v.detach().double().reshape(()) for k, v in metrics.items() if isinstance(v, torch.Tensor)}
    read = dict(zip(tensors, torch.stack(list(tensors.values())).tolist(), strict=True)) if tensors else {}
    return {k: read[k] if k in read else float(v) for k, v in metrics.items()}


class Transfer(NamedTuple):
    kind: str  # "read" or "write"
    op: str
    where: str  # the innermost caller outside torch, as "file:line in function"


def _caller() -> str:
    for frame in reversed(traceback.extract_stack()[:-3]):
        if "/torch/" not in frame.filename and not frame.filename.endswith("transfers.py"):
            return f"{frame.filename}:{frame.lineno} in {frame.name}"
    return "?"


class _Dispatch(TorchDispatchMode):
    def __init__(self, owner: HostTransfers):
        super().__init__()
        self.owner = owner

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        owner = self.owner
        if func is torch.ops.aten._local_scalar_dense.default and owner.watches(args[0].device):
            owner.record("read", func)
            if owner.fake_reads and args[0].device.type == "meta":
                return False if args[0].dtype == torch.bool else 0
        if func in _COPIES:
            if func is torch.ops.aten.copy_.default:
                source, target = args[1].device, args[0].device
            else:
                source, target = args[0].device, torch.device(kwargs.get("device") or args[0].device)
            if owner.watches(source) and target.type == "cpu":
                owner.record("read", func)
                if owner.fake_reads and source.type == "meta":
                    if func is torch.ops.aten.copy_.default:
                        return args[0].zero_()
                    return torch.zeros(args[0].shape, dtype=kwargs.get("dtype") or args[0].dtype)
            elif source.type == "cpu" and owner.watches(target):
                owner.record("write", func)
        return func(*args, **kwargs)


class _Function(TorchFunctionMode):
    def __init__(self, owner: HostTransfers):
        super().__init__()
        self.owner = owner

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in FACTORIES and isinstance(out, torch.Tensor) and self.owner.watches(out.device):
            data = args[1] if func is torch.Tensor.new_tensor else (args[0] if args else kwargs.get("data"))
            if not (isinstance(data, torch.Tensor) and data.device == out.device):
                self.owner.record("write", func)
        return out


class HostTransfers:
    """Context manager recording the host-device transfers of `device` (any non-CPU device by default).

    `transfers` lists them in order; `reads` and `writes` count each kind. See the module docstring.
    """

    def __init__(self, device: str | torch.device | None = None, fake_reads: bool = False):
        self.device = None if device is None else torch.device(device)
        self.fake_reads = fake_reads
        self.transfers: list[Transfer] = []
        self._stack = ExitStack()

    def watches(self, device: torch.device) -> bool:
        if self.device is None:
            return device.type != "cpu"
        return device.type == self.device.type and (self.device.index is None or device == self.device)

    def record(self, kind: str, op: Any) -> None:
        self.transfers.append(Transfer(kind, str(getattr(op, "__name__", op)), _caller()))

    @property
    def reads(self) -> int:
        return sum(t.kind == "read" for t in self.transfers)

    @property
    def writes(self) -> int:
        return sum(t.kind == "write" for t in self.transfers)

    def __enter__(self) -> HostTransfers:
        self._stack.enter_context(_Function(self))
        self._stack.enter_context(_Dispatch(self))
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def __str__(self) -> str:
        lines = [f"{self.reads} read(s), {self.writes} write(s)"]
        lines += [f"  {t.kind} {t.op} at {t.where}" for t in self.transfers]
        return "\n".join(lines)
