"""The update rules: LaProp with adaptive gradient clipping and warm-up (v2), or Adam per module (v1).

LaProp follows the reference's optax chain (embodied/jax/opt.py and `Agent._make_opt`, v2):

    g <- g / max(1, ||g|| / (agc * max(pmin, ||p||)))      adaptive gradient clipping, per tensor
    nu <- b2 nu + (1 - b2) g^2;  u = g / (sqrt(nu / (1 - b2^k)) + eps)      RMS scaling first
    mu <- b1 mu + (1 - b1) u;    p <- p - lr_k * mu / (1 - b1^k)           then momentum (LaProp)
    lr_k = lr * min(1, (k - 1) / warmup)                                    linear warm-up from 0

where k counts updates from 1 (optax's schedule sees k - 1, so the very first update has lr 0).
v1 used Adam per module with global-norm clipping (dreamerv3/jaxutils.py `Optimizer`, 2023).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from configs.schema import OPTIM_KINDS, OptimConfig
from nets.functional import where_

# AGC never clips relative to a parameter norm below this (reference: `clip_by_agc(pmin=1e-3)`).
AGC_PMIN = 1e-3
# The module groups of the v1 optimizer: the world model, and the actor and critic with their own settings.
ADAM_GROUPS = ("model", "actor", "critic")


class LaProp(torch.optim.Optimizer):
    """LaProp with per-tensor adaptive gradient clipping and a linear learning-rate warm-up.

    Each group counts its applied updates in `group["count"]`, a 0-d float64 tensor on the parameters'
    device, so that an update can be applied or skipped on the device (`step(applied=...)`) without the
    host reading anything.

    Args:
        params: parameters (or parameter groups) to optimize.
        lr: learning rate after warm-up (v2: 4e-5).
        betas: momentum and RMS decay rates (v2: 0.9, 0.999).
        eps: added to the RMS denominator (v2: 1e-20).
        agc: adaptive clipping ratio of update norm to parameter norm; 0 disables it (v2: 0.3).
        warmup: updates over which the learning rate ramps up linearly from 0; 0 disables it (v2: 1000).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        lr: float = 4e-5,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-20,
        agc: float = 0.3,
        warmup: int = 1000,
    ):
        if lr < 0 or eps < 0 or agc < 0 or warmup < 0:
            raise ValueError(f"LaProp needs lr, eps, agc, warmup >= 0; got {lr}, {eps}, {agc}, {warmup}")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"LaProp betas must be in [0, 1), got {betas}")
        defaults = dict(lr=lr, betas=betas, eps=eps, agc=agc, warmup=warmup)
        super().__init__(params, defaults)
        for group in self.param_groups:
            group["count"] = _count(0, group)

    def current_lr(self, group: dict | None = None) -> Tensor:
        """The learning rate the next update of `group` (default: the first) will use (0-d, float64)."""
        group = group or self.param_groups[0]
        if not group["warmup"]:
            return torch.full_like(group["count"], group["lr"])
        return group["lr"] * torch.clamp(group["count"] / group["warmup"], max=1.0)

    @torch.no_grad()
    def step(self, closure=None, applied: Tensor | None = None):
        """Update the parameters that have a gradient; where `applied` (a 0-d bool tensor on their
        device) is False, nothing changes: parameters, moments and count."""
        if closure is not None:
            raise ValueError("LaProp.step does not take a closure")
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                self._update_group(group, params, True if applied is None else applied)

    def _update_group(self, group: dict, params: list[Tensor], applied: Tensor | bool) -> None:
        lr, k = self.current_lr(group), group["count"] + 1
        beta1, beta2 = group["betas"]
        dtype = params[0].dtype
        grads = [p.grad for p in params]
        if group["agc"]:
            grads = adaptive_clip(grads, params, group["agc"])
        for p in params:
            if not self.state[p]:
                self.state[p]["mu"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                self.state[p]["nu"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        mus = [self.state[p]["mu"] for p in params]
        nus = [self.state[p]["nu"] for p in params]
        new_nus = torch._foreach_mul(nus, beta2)
        torch._foreach_addcmul_(new_nus, grads, grads, value=1 - beta2)
        denom = torch._foreach_sqrt(new_nus)
        torch._foreach_div_(denom, torch.sqrt(1 - beta2**k).to(dtype))
        torch._foreach_add_(denom, group["eps"])
        new_mus = torch._foreach_lerp(mus, torch._foreach_div(grads, denom), 1 - beta1)
        new_params = torch._foreach_add(params, torch._foreach_mul(new_mus, (-lr / (1 - beta1**k)).to(dtype)))
        for old, new in zip(params + mus + nus, new_params + new_mus + new_nus, strict=True):
            where_(applied, old, new)
        where_(applied, group["count"], k)

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            # A checkpoint loads on the CPU; before the count was a tensor it was the int "step".
            group["count"] = _count(group.pop("step", group.get("count")), group)


def _count(value: int | Tensor, group: dict) -> Tensor:
    """A group's update count as a 0-d float64 tensor on its parameters' device."""
    return torch.as_tensor(value, dtype=torch.float64).to(group["params"][0].device)


def adaptive_clip(grads: list[Tensor], params: list[Tensor], agc: float) -> list[Tensor]:
    """Scale each gradient tensor so that ||g|| <= agc * max(pmin, ||p||) (new tensors, same order)."""
    gnorm = torch.stack(torch._foreach_norm(grads))
    pnorm = torch.stack(torch._foreach_norm(params))
    factor = 1 / torch.clamp(gnorm / (agc * torch.clamp(pnorm, min=AGC_PMIN)), min=1.0)
    return list(torch._foreach_mul(grads, list(factor.unbind())))


def global_norm(tensors: list[Tensor], device: torch.device | None = None) -> Tensor:
    """The L2 norm of all tensors together (0 on `device` for an empty list)."""
    if not tensors:
        return torch.zeros((), device=device)
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(tensors)))


class Optimizer:
    """Optimizes named modules with the configured rule; skips updates with a non-finite loss or gradient.

    `kind: laprop` (v2) puts every module into one LaProp. `kind: adam` (v1) needs the modules
    "model", "actor", "critic" and gives each its own Adam and global-norm clip (model_* for the
    world model, ac_* for the actor and the critic), without warm-up as in v1.
    """

    def __init__(self, config: OptimConfig, modules: dict[str, nn.Module]):
        self.config = config
        self.modules = modules
        self.device = next(p.device for m in modules.values() for p in m.parameters())
        if config.kind == "laprop":
            params = [p for m in modules.values() for p in m.parameters()]
            self.optimizers = {
                "all": LaProp(
                    params, config.lr, (config.beta1, config.beta2), config.eps, config.agc, config.warmup
                )
            }
            self.clips = {}
        elif config.kind == "adam":
            if set(modules) != set(ADAM_GROUPS):
                raise ValueError(f"optim.kind 'adam' needs the modules {ADAM_GROUPS}, got {tuple(modules)}")
            self.optimizers, self.clips = {}, {}
            for name, module in modules.items():
                lr, eps, clip = self._adam_settings(name)
                self.optimizers[name] = torch.optim.Adam(module.parameters(), lr=lr, eps=eps)
                self.clips[name] = clip
        else:
            raise ValueError(f"optim.kind must be one of {OPTIM_KINDS}, got {config.kind!r}")

    def _adam_settings(self, name: str) -> tuple[float, float, float]:
        c = self.config
        return (c.model_lr, c.model_eps, c.model_clip) if name == "model" else (c.ac_lr, c.ac_eps, c.ac_clip)

    def zero_grad(self) -> None:
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)

    def grad_norms(self) -> dict[str, Tensor]:
        """Global gradient norm of each module (before any clipping)."""
        return {
            name: global_norm([p.grad for p in m.parameters() if p.grad is not None], self.device)
            for name, m in self.modules.items()
        }

    def step(self, loss: Tensor) -> dict[str, Tensor | float]:
        """Apply the gradients in `.grad` unless `loss` or any gradient is non-finite.

        Returns metrics: `grad_norm/<module>`, `lr` (used by this update), and `nonfinite` (1.0 when
        the update was skipped, leaving parameters and optimizer states untouched), as 0-d tensors on the
        device. With LaProp (v2) the device decides the skip: the host reads nothing. v1's Adam counts
        its steps on the host, so there the host reads the decision (one synchronization).
        """
        norms = self.grad_norms()
        lr = self.lr()
        finite = torch.isfinite(torch.stack([loss.detach().float().reshape(()), *norms.values()])).all()
        if self.config.kind == "laprop":
            self.optimizers["all"].step(applied=finite)
        elif finite.item():
            for name, opt in self.optimizers.items():
                nn.utils.clip_grad_norm_(self.modules[name].parameters(), self.clips[name])
                opt.step()
        metrics = {f"grad_norm/{k}": v for k, v in norms.items()}
        return {**metrics, "lr": lr, "nonfinite": (~finite).float()}

    def lr(self) -> Tensor | float:
        """The learning rate of the next update (of the world model for v1)."""
        opt = next(iter(self.optimizers.values()))
        return opt.current_lr() if isinstance(opt, LaProp) else opt.param_groups[0]["lr"]

    def state_dict(self) -> dict:
        return {name: opt.state_dict() for name, opt in self.optimizers.items()}

    def load_state_dict(self, state: dict) -> None:
        if set(state) != set(self.optimizers):
            raise ValueError(
                f"optimizer state has parts {sorted(state)}, this optimizer ({self.config.kind}) has "
                f"{sorted(self.optimizers)}"
            )
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state[name])
