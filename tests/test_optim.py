"""LaProp against a float64 hand computation; AGC per tensor; warm-up; skip on non-finite; v1 Adam."""

import dataclasses
import io

import numpy as np
import pytest
import torch
from torch import nn

from agent.optim import AGC_PMIN, LaProp, Optimizer, adaptive_clip
from configs.loader import load_config


def reference_laprop(params, grads_per_step, lr, b1, b2, eps, agc, warmup):
    """The reference's optax chain, written out in float64 numpy, one tensor at a time."""
    params = [p.astype(np.float64).copy() for p in params]
    mus = [np.zeros_like(p) for p in params]
    nus = [np.zeros_like(p) for p in params]
    for k, grads in enumerate(grads_per_step, start=1):
        step_lr = lr * min(1.0, (k - 1) / warmup) if warmup else lr
        for i, g in enumerate(grads):
            g = g.astype(np.float64)
            upper = agc * max(AGC_PMIN, np.linalg.norm(params[i]))
            g = g / max(1.0, np.linalg.norm(g) / upper)
            nus[i] = b2 * nus[i] + (1 - b2) * g * g
            u = g / (np.sqrt(nus[i] / (1 - b2**k)) + eps)
            mus[i] = b1 * mus[i] + (1 - b1) * u
            params[i] = params[i] - step_lr * mus[i] / (1 - b1**k)
    return params


def test_laprop_matches_float64_reference():
    rng = np.random.default_rng(0)
    init = [rng.normal(size=(3, 4)), rng.normal(size=(5,)) * 1e-5, np.zeros((2,))]
    # Gradients large enough that AGC clips some tensors at some steps and not others.
    grads = [
        [rng.normal(size=p.shape) * s for p, s in zip(init, (0.1, 3.0, 1e-4), strict=True)] for _ in range(5)
    ]
    params = [torch.tensor(p, requires_grad=True) for p in init]
    opt = LaProp(params, lr=0.1, betas=(0.9, 0.99), eps=1e-8, agc=0.3, warmup=3)
    for step_grads in grads:
        for p, g in zip(params, step_grads, strict=True):
            p.grad = torch.tensor(g)
        opt.step()
    expected = reference_laprop(init, grads, 0.1, 0.9, 0.99, 1e-8, 0.3, 3)
    for p, e in zip(params, expected, strict=True):
        np.testing.assert_allclose(p.detach().numpy(), e, rtol=1e-12, atol=1e-15)


def test_laprop_first_update_has_zero_lr_then_ramps():
    p = nn.Parameter(torch.ones(4, dtype=torch.float64))
    opt = LaProp([p], lr=1.0, warmup=4, agc=0.0)
    lrs = []
    for _ in range(6):
        lrs.append(opt.current_lr())
        p.grad = torch.ones_like(p)
        opt.step()
        if len(lrs) == 1:
            assert torch.equal(p.detach(), torch.ones(4, dtype=torch.float64))
    assert lrs == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]


def test_adaptive_clip_is_per_tensor():
    big = torch.full((4,), 2.0)  # ||p|| = 4
    tiny = torch.zeros(3)  # ||p|| = 0 -> uses pmin
    small_grad_param = torch.ones(9)  # ||p|| = 3
    grads = [torch.full((4,), 10.0), torch.ones(3), torch.full((9,), 0.01)]
    clipped = adaptive_clip(grads, [big, tiny, small_grad_param], agc=0.3)
    np.testing.assert_allclose(clipped[0].norm().item(), 0.3 * 4.0, rtol=1e-6)
    np.testing.assert_allclose(clipped[1].norm().item(), 0.3 * AGC_PMIN, rtol=1e-6)
    assert torch.equal(clipped[2], grads[2])
    # Direction is kept and the inputs are not modified.
    np.testing.assert_allclose((clipped[0] / clipped[0].norm()).numpy(), np.full(4, 0.5), rtol=1e-6)
    assert torch.equal(grads[0], torch.full((4,), 10.0))


def make_modules():
    torch.manual_seed(0)
    return {"model": nn.Linear(3, 2), "actor": nn.Linear(2, 2), "critic": nn.Linear(2, 1)}


def loss_of(modules, scale=1.0):
    x = torch.randn(8, 3)
    h = modules["model"](x)
    return scale * (h.pow(2).mean() + modules["actor"](h).pow(2).mean() + modules["critic"](h).pow(2).mean())


@pytest.mark.parametrize("kind", ["laprop", "adam"])
def test_nonfinite_update_is_skipped(kind):
    cfg = dataclasses.replace(load_config(["debug"]).optim, kind=kind, warmup=0)
    modules = make_modules()
    opt = Optimizer(cfg, modules)
    loss = loss_of(modules)
    loss.backward()
    assert opt.step(loss)["nonfinite"] == 0.0
    before = {k: [p.detach().clone() for p in m.parameters()] for k, m in modules.items()}
    state_before = io.BytesIO()
    torch.save(opt.state_dict(), state_before)
    opt.zero_grad()
    loss = loss_of(modules, scale=float("nan"))
    loss.backward()
    metrics = opt.step(loss)
    assert metrics["nonfinite"] == 1.0
    for k, m in modules.items():
        for p, b in zip(m.parameters(), before[k], strict=True):
            assert torch.equal(p.detach(), b)
    state_after = io.BytesIO()
    torch.save(opt.state_dict(), state_after)
    assert state_before.getvalue() == state_after.getvalue()


def test_grad_norm_metrics_per_module():
    cfg = load_config(["debug"]).optim
    modules = make_modules()
    opt = Optimizer(cfg, modules)
    loss = loss_of(modules)
    loss.backward()
    expected = {
        k: torch.sqrt(sum((p.grad.double() ** 2).sum() for p in m.parameters())).item()
        for k, m in modules.items()
    }
    metrics = opt.step(loss)
    for k, v in expected.items():
        np.testing.assert_allclose(metrics[f"grad_norm/{k}"], v, rtol=1e-5)
    # The learning rate used by this update: 0 for the first one of the warm-up, then lr * k / warmup.
    assert metrics["lr"] == 0.0
    opt.zero_grad()
    loss = loss_of(modules)
    loss.backward()
    np.testing.assert_allclose(opt.step(loss)["lr"], cfg.lr / cfg.warmup, rtol=1e-12)


def test_adam_v1_clips_each_module_with_its_own_norm():
    cfg = dataclasses.replace(load_config(["debug"]).optim, kind="adam", model_clip=1e-3, ac_clip=1e3)
    modules = make_modules()
    opt = Optimizer(cfg, modules)
    loss = loss_of(modules, scale=100.0)
    loss.backward()
    raw = opt.grad_norms()
    assert raw["model"] > 1e-3 and raw["actor"] < 1e3
    opt.step(loss)
    after = opt.grad_norms()  # clip_grad_norm_ rescales .grad in place
    np.testing.assert_allclose(after["model"].item(), 1e-3, rtol=1e-4)
    np.testing.assert_allclose(after["actor"].item(), raw["actor"].item(), rtol=1e-6)
    assert opt.optimizers["model"].param_groups[0]["lr"] == cfg.model_lr
    assert opt.optimizers["actor"].param_groups[0]["eps"] == cfg.ac_eps


@pytest.mark.parametrize("kind", ["laprop", "adam"])
def test_state_dict_round_trip_continues_identically(kind):
    cfg = dataclasses.replace(load_config(["debug"]).optim, kind=kind)
    a_mods, b_mods = make_modules(), make_modules()
    a = Optimizer(cfg, a_mods)
    for _ in range(3):
        a.zero_grad()
        loss = loss_of(a_mods)
        loss.backward()
        a.step(loss)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    for name in a_mods:
        b_mods[name].load_state_dict(a_mods[name].state_dict())
    b = Optimizer(cfg, b_mods)
    b.load_state_dict(torch.load(buf, weights_only=True))
    for mods, opt in ((a_mods, a), (b_mods, b)):
        torch.manual_seed(1)
        opt.zero_grad()
        loss = loss_of(mods)
        loss.backward()
        opt.step(loss)
    for name in a_mods:
        for p, q in zip(a_mods[name].parameters(), b_mods[name].parameters(), strict=True):
            assert torch.equal(p, q)


def test_bad_optimizer_config_errors():
    cfg = load_config(["debug"]).optim
    with pytest.raises(ValueError, match=r"optim.kind must be one of \('laprop', 'adam'\), got 'sgd'"):
        Optimizer(dataclasses.replace(cfg, kind="sgd"), make_modules())
    with pytest.raises(ValueError, match="needs the modules"):
        Optimizer(dataclasses.replace(cfg, kind="adam"), {"model": nn.Linear(2, 2)})
    with pytest.raises(ValueError, match="betas"):
        LaProp([nn.Parameter(torch.ones(1))], betas=(0.9, 1.0))


def test_laprop_counts_on_the_parameters_device_and_loads_a_count_saved_as_an_int_step():
    p = nn.Parameter(torch.ones(3))
    opt = LaProp([p], lr=1.0, warmup=4, agc=0.0)
    for _ in range(2):
        p.grad = torch.ones_like(p)
        opt.step()
    saved = opt.state_dict()
    assert (
        saved["param_groups"][0]["count"].dtype == torch.float64
        and int(saved["param_groups"][0]["count"]) == 2
    )
    # A checkpoint from before the count was a tensor holds the int "step" instead.
    group = {k: v for k, v in saved["param_groups"][0].items() if k != "count"}
    old = {"state": saved["state"], "param_groups": [{**group, "step": 2}]}
    q = nn.Parameter(p.detach().clone())
    again = LaProp([q], lr=1.0, warmup=4, agc=0.0)
    again.load_state_dict(old)
    assert "step" not in again.param_groups[0] and again.param_groups[0]["count"].item() == 2.0
    assert again.current_lr().item() == opt.current_lr().item() == 0.5
    # Applied only where the device says so: a skipped step changes nothing, not even the count.
    q.grad = torch.ones_like(q)
    before = q.detach().clone()
    again.step(applied=torch.tensor(False))
    assert torch.equal(q.detach(), before) and again.param_groups[0]["count"].item() == 2.0
