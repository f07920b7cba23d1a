"""bench/update.py: the recorder of matmul and convolution calls behind its "kernels" figure."""

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_update", ROOT / "bench" / "update.py")
update = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(update)


def test_recorder_sees_forward_and_backward_matmuls_and_convolutions_only():
    torch.manual_seed(0)
    x = torch.randn(8, 5, requires_grad=True)
    w, b = torch.randn(3, 5, requires_grad=True), torch.randn(3, requires_grad=True)
    image, kernel = torch.randn(2, 1, 6, 6), torch.randn(4, 1, 3, 3, requires_grad=True)
    recorder = update.KernelRecorder()
    with recorder:
        loss = F.linear(x, w, b).tanh().sum() + F.conv2d(image, kernel).sum()
        loss.backward()
    ops = sorted(str(func.overloadpacket) for func, _, _ in recorder.calls)
    # addmm forward; the input's and the weight's gradients as two mm; the convolution and its backward.
    assert ops == ["aten.addmm", "aten.convolution", "aten.convolution_backward", "aten.mm", "aten.mm"]
    func, args, _ = next(c for c in recorder.calls if str(c[0].overloadpacket) == "aten.addmm")
    assert args[0] == ((3,), (1,), torch.float32, torch.device("cpu"))
    assert args[2] == ((5, 3), (1, 5), torch.float32, torch.device("cpu"))  # w.t(): a transposed view


def test_specs_remake_tensors_of_the_same_layout_and_replay_counts_repeats(monkeypatch):
    expanded = torch.randn(4, 1).expand(4, 6)
    for t in (torch.randn(3, 7).t(), expanded, torch.randn(2, 3, 4)[:, 1:, ::2]):
        spec = update.TensorSpec(t.shape, t.stride(), t.dtype, t.device)
        made = spec.make()
        assert made.shape == t.shape and made.stride() == t.stride() and made.dtype == t.dtype
    a, b = torch.randn(64, 64), torch.randn(64, 64)
    recorder = update.KernelRecorder()
    with recorder:
        for _ in range(3):
            a @ b
    assert len(recorder.calls) == 3 and len({repr(c) for c in recorder.calls}) == 1
    # A clock that advances 1 ms per reading: each replay of the one distinct call takes 1 ms, and it
    # counts 3 times.
    clock = iter(range(1000))
    monkeypatch.setattr(update.time, "perf_counter", lambda: next(clock) / 1000)
    assert update.kernel_ms(recorder.calls, torch.device("cpu")) == pytest.approx(3.0)


def test_the_synthetic_batch_is_what_the_replay_samples_and_the_agent_trains_on():
    from agent import make_agent
    from configs.loader import load_config

    for context in (0, 1):
        config = load_config(["debug"], {"replay": {"context": context}})
        obs = update.OBS_SPACES["vector"]
        data = update.config_batch(config, obs)
        B, T = config.replay.batch_size, config.replay.batch_length
        assert data["vector"].shape == (B, context + T, 4) and ("stepid" in data) == bool(context)
        if context:
            assert data["context/deter"].shape == (B, 1 + T, 32)
            assert (data["context/stoch"].sum(-1) == 1).all()  # one-hot
        agent = make_agent(config, obs, update.ACT_SPACE)
        times, _ = update.timed_update(agent, agent.to_device(data), None)
        assert set(times) == {*update.PARTS, "total"} and all(t > 0 for t in times.values())
