"""The Agent: owns the world model, the actor-critic and the optimizer; acts, trains and reports.

No environment, replay or I/O lives here: `policy` maps a batch of observations to actions, `train`
performs one update on a replayed batch, `report` renders open-loop predictions. The update's maths reads
top to bottom in `Agent.loss` (v2, dreamerv3/agent.py `Agent.loss`): the world-model terms on the batch,
imagination from every posterior state, the policy / value / replay-value terms, one weighted sum; then
`Agent.update`: one optimizer step over everything, the return normalizer and the slow critic's EMA.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, NamedTuple

import numpy as np
import torch
from einops import rearrange
from torch import Tensor

from agent.actor_critic import Acting, ActorCritic, Imagination, exact_action, frozen, imag_cont
from agent.optim import Optimizer
from agent.precision import AUTOCAST
from agent.returns import RetStats
from configs.schema import ActorCriticConfig, OptimConfig, WorldModelConfig
from envs.spaces import ActionSpace, ArraySpec
from replay.spec import CONTEXT
from world_model.heads import make_bins
from world_model.rssm import RSSMState
from world_model.world_model import WorldModel

# Open-loop reports: posterior context steps (as in the reference's report) and sequences shown.
OPENLOOP_CONTEXT = 5
OPENLOOP_SEQUENCES = 4


class LossOutput(NamedTuple):
    """What `Agent.loss` returns beside the total: the carry (the last posterior [B], detached; None with
    replay context), the latents to store back in the replay (`Agent.train`), the return normalizer's
    new statistics (kept only if the update is applied) and the metrics (scalar tensors)."""

    carry: RSSMState | None
    replay: dict[str, Tensor]
    retstats: RetStats
    metrics: dict[str, Tensor]


class TrainOutput(NamedTuple):
    """What `Agent.train` returns.

    carry: the next batch's start state without replay context (the last posterior [B]), else None.
    replay: with replay context, `stepid` [B, T] and the posterior latent of each trained step
        (`context/deter` [B, T, D], `context/stoch` [B, T, ...]) for `Replay.update`; else empty.
    metrics: 0-d tensors on the device (and python floats), read back by `util.transfers.to_floats` when
        they are logged: the update itself reads nothing on the host (v2).
    """

    carry: RSSMState | None
    replay: dict[str, Tensor]
    metrics: dict[str, Tensor | float]


class PolicyState(NamedTuple):
    """What `policy` carries per env between calls: the posterior and the action taken there."""

    latent: RSSMState  # [N, ...]
    action: Tensor  # [N, A]


class Agent:
    """World model + actor-critic + optimizer(s).

    Args:
        wm_config, ac_config, optim_config: the config subtrees.
        obs_space: observation key -> ArraySpec.
        act_space: the agent-side action space.
        device: where the modules live and the updates run.
        precision: "float32", or "bfloat16" for autocast forward passes (parameters stay float32); never
            "auto", which `make_agent` resolves (agent/precision.py).
        compile: torch.compile's mode ("default", "reduce-overhead", ...) to compile the heads and the
            recurrent steps in (`compile_update`); None runs eagerly. `compile_fallback`: see there.
        context: context steps before each replayed window (`replay.context`): the window starts from
            the latent stored at its last context step (keys `context/*`), with the action taken there.
            0: windows start from the carry `train` is given.
    """

    def __init__(
        self,
        wm_config: WorldModelConfig,
        ac_config: ActorCriticConfig,
        optim_config: OptimConfig,
        obs_space: dict[str, ArraySpec],
        act_space: ActionSpace,
        device: torch.device,
        precision: str = "float32",
        compile: str | None = None,
        context: int = 0,
        compile_fallback: bool = False,
    ):
        if precision not in AUTOCAST:
            raise ValueError(
                f"run.precision must be one of {tuple(AUTOCAST)} ('auto' is resolved by make_agent), "
                f"got {precision!r}"
            )
        self.device = torch.device(device)
        self.precision = precision
        self.context = context
        self.obs_space, self.act_space = obs_space, act_space
        self.ac_config = ac_config
        discount = 1.0 - 1.0 / ac_config.discount_horizon
        self.wm = WorldModel(wm_config, obs_space, act_space, discount).to(self.device)
        bins, space = make_bins(wm_config.reward_bins, wm_config.bins)
        self.ac = ActorCritic(
            self.wm.feat_size, act_space, ac_config, wm_config.norm, bins, space, wm_config.cont_discount
        ).to(self.device)
        self.optim = Optimizer(
            optim_config, {"model": self.wm, "actor": self.ac.actor, "critic": self.ac.critic}
        )
        scales = {**dataclasses.asdict(wm_config.loss_scales), **dataclasses.asdict(ac_config.loss_scales)}
        self.scales = {k: float(v) for k, v in scales.items()}
        self.world: Any = None  # set by `data_parallel`
        self.grads: Any = None  # the world's gradient averager, set by `data_parallel`
        if compile is not None:
            self.compile_update(compile, compile_fallback)

    def compile_update(self, mode: str = "default", fallback: bool = False) -> None:
        """torch.compile (in place: names and state dicts stay the same) where an update's time goes: the
        MLPs that run on every imagined state, and the recurrent steps (posterior and prior, each one
        graph), which the Python loops of `observe` and `imagine` call once per time step. `mode` is
        torch.compile's ("reduce-overhead": CUDA graphs on a GPU). The encoder and decoder stay eager
        (compiled, their backward pass was slower on CPU). A compilation failure raises at the first call:
        no silent fall back to eager execution, whose speed would differ from the one asked for, unless
        `fallback` turns on dynamo's process-wide `suppress_errors` (a warning, then eager execution)."""
        if fallback:
            import torch._dynamo as dynamo

            dynamo.config.suppress_errors = True
        heads = (
            self.ac.actor.net,
            self.ac.critic.net,
            self.ac.slow_critic.net,
            self.wm.reward.mlp,
            self.wm.cont.mlp,
        )
        for net in heads:
            net.compile(dynamic=True, mode=mode)
        rssm = self.wm.rssm
        rssm._obs_step = torch.compile(rssm._obs_step, mode=mode)
        rssm.img_step = torch.compile(rssm.img_step, mode=mode)

    # --- acting ----------------------------------------------------------------------------------
    def initial_policy_state(self, num_envs: int) -> PolicyState:
        latent = self.wm.initial(num_envs)
        return PolicyState(latent, torch.zeros(num_envs, self.act_space.dim, device=self.device))

    @torch.no_grad()
    def policy(
        self, obs: dict[str, np.ndarray], state: PolicyState | None, sample: bool = True
    ) -> tuple[np.ndarray, PolicyState]:
        """Actions [N, A] float32 for N envs; the state resets where `obs["is_first"]`.

        `sample` draws the action from the policy, in training and in evaluation alike (the reference's
        `policy` samples in every mode); False takes the distribution's mode instead. Discrete actions
        are one-hot, continuous ones lie in [-1, 1].
        """
        is_first = self._tensor(obs["is_first"]).bool()
        state = self.initial_policy_state(is_first.shape[0]) if state is None else state
        inputs = {k: self._tensor(obs[k]) for k in self.obs_space}
        with self._autocast():
            latent = self.wm.observe_step(state.latent, state.action, inputs, is_first)
            dist = self.ac.actor(self.wm.feat(latent))
            action = dist.sample() if sample else dist.mode()
        action = exact_action(action.float(), self.act_space)
        latent = RSSMState(latent.deter.float(), latent.stoch.float())
        return action.cpu().numpy().astype(np.float32), PolicyState(latent, action)

    def latent_arrays(self, state: PolicyState) -> dict[str, np.ndarray]:
        """The posterior a policy state holds, as the replay stores it with the step (`context/*`)."""
        return {CONTEXT + k: v.float().cpu().numpy() for k, v in state.latent._asdict().items()}

    # --- learning --------------------------------------------------------------------------------
    def train(self, batch: dict[str, Any], carry: RSSMState | None = None) -> TrainOutput:
        """One update on a replayed batch of [B, K + T, ...] arrays (K = `context` steps, then the T
        trained ones), from the stored latent of the context or else from `carry` (None: the initial
        state). See `TrainOutput`.

        A non-finite loss or gradient skips the step: parameters, optimizer states, the slow critic and
        the return normalizer stay as they were, and `metrics["nonfinite"]` is 1.0. The skip is decided
        on the device (v2): nothing in an update waits for the device.
        """
        data = self.to_device(batch)
        with self._autocast():
            total, out = self.loss(data, carry)
        step = self.step(self.backward(total), out.retstats)
        return TrainOutput(out.carry, out.replay, {**out.metrics, **step})

    def window_start(
        self, data: dict[str, Tensor], carry: RSSMState | None
    ) -> tuple[dict[str, Tensor], RSSMState | None, Tensor | None]:
        """Where the posterior scan of a window starts: with `context` K, the latent stored at step K - 1
        and the action taken there, and the data of the steps after it; else `carry`, no action, `data`."""
        K = self.context
        if not K:
            return data, carry, None
        missing = [k for k in ("stepid", CONTEXT + "deter", CONTEXT + "stoch") if k not in data]
        if missing:
            raise KeyError(f"a batch with {K} context step(s) needs the replay keys {missing}")
        start = RSSMState(data[CONTEXT + "deter"][:, K - 1], data[CONTEXT + "stoch"][:, K - 1])
        return {k: v[:, K:] for k, v in data.items()}, start, data["action"][:, K - 1].float()

    def loss(self, data: dict[str, Tensor], carry: RSSMState | None) -> tuple[Tensor, LossOutput]:
        """The update's loss on a batch of [B, K + T, ...] tensors, in the reference's order
        (`Agent.loss`): world model, imagination, replay value; every term unreduced, summed once at the
        end."""
        data, start, prev_action = self.window_start(data, carry)
        B, T = data["is_first"].shape
        ac, per_start = self.ac, lambda x: rearrange(x, "(b t) ... -> b t ...", b=B, t=T)

        # 1. World model: rec, rew, con, dyn, rep [B, T] on the replayed batch, from the window's start.
        wm = self.wm.loss(data, start, prev_action)
        losses, metrics = dict(wm.losses), dict(wm.metrics)

        # 2. Imagination from every posterior state (B*T starts) with the (frozen) world model. The actor's
        # outputs keep their gradient for the policy loss. REINFORCE needs no gradient through the
        # rollout (its actions go in detached); "dynamics" keeps the actions' gradient through it.
        reinforce = ac.grad == "reinforce"
        start = self.wm.starts(wm.states, grad=not reinforce)
        policy = Acting(ac.actor, detach=reinforce)
        with frozen(self.wm):
            feat, action = self.wm.imagine(start, policy, self.ac_config.imag_horizon)
            reward = self.wm.reward(feat).mean().float()
            is_terminal = rearrange(data["is_terminal"], "b t -> (b t)")
            cont = imag_cont(self.wm.cont(feat), is_terminal, self.ac_config.imag_cont)
        imag = Imagination(feat, action, policy.outputs(), reward, cont)  # [N, H+1, ...]

        # 3. Policy and value on the imagined rollout [N, H], averaged over the horizon per start; the
        # return percentiles pool the returns of all replicas.
        out = ac.imag_loss(imag, lambda ret: ac.retnorm.update(self._gather(ret)))
        losses.update({k: per_start(v.mean(1)) for k, v in out.losses.items()})
        metrics.update({f"ac/{k}": v for k, v in out.metrics.items()})

        # 4. Replay value: the critic on the replayed posteriors [B, T-1], bootstrapped from R_0.
        if self.scales["repval"]:
            repl_feat = self.wm.feat(wm.states)
            repl_feat = repl_feat if self.ac_config.repval_grad else repl_feat.detach()
            boot = per_start(out.ret[:, 0])
            is_last, is_terminal = data["is_last"], data["is_terminal"]
            losses["repval"], _ = ac.repval_loss(repl_feat, data["reward"], is_last, is_terminal, boot)

        # 5. One weighted sum. Every term with a scale is built (a zero scale may skip its term: v1 repval).
        missing = {k for k, scale in self.scales.items() if scale} - set(losses)
        assert not missing and set(losses) <= set(self.scales), (sorted(losses), self.scales)
        total = sum(self.scales[k] * v.mean() for k, v in losses.items())
        metrics.update({f"loss/{k}": v.detach().mean() for k, v in losses.items()})
        metrics["loss/total"] = total.detach()
        if not self.context:
            return total, LossOutput(wm.last, {}, out.retstats, metrics)
        latents = {CONTEXT + k: v.detach().float() for k, v in wm.states._asdict().items()}
        return total, LossOutput(None, {"stepid": data["stepid"], **latents}, out.retstats, metrics)

    @torch.no_grad()
    def bounds(self, batch: dict[str, Any], carry: RSSMState | None, k: int) -> dict[str, float]:
        """Bounds on log p(x | a) of a training batch [B, context + T, ...] in nats per step, from the
        window's start as in `loss`: `bound/elbo` (closed-form KL, averaged over K posterior paths),
        `bound/iw` (K whole trajectories), `bound/smc` (K particles, `WorldModel.particle_bound`) and
        `bound/iw_gap`, `bound/smc_gap` (minus the ELBO). In float32, outside autocast."""
        data, start, prev_action = self.window_start(self.to_device(batch), carry)
        steps = data["is_first"].numel()
        iw = self.wm.log_likelihood_bound(data, k, start, prev_action)
        smc = self.wm.particle_bound(data, k, state=start, prev_action=prev_action).smc
        sums = {"elbo": iw.elbo_kl, "iw": iw.iwae, "smc": smc}  # [B] each, nats per sequence
        out = {f"bound/{name}": float(v.sum()) / steps for name, v in sums.items()}
        for name in ("iw", "smc"):
            out[f"bound/{name}_gap"] = out[f"bound/{name}"] - out["bound/elbo"]
        return out

    def backward(self, total: Tensor) -> Tensor:
        """Gradients of `total` into `.grad`; returns the loss the optimizer step checks. Under
        `data_parallel` the gradients and the loss are averaged over all replicas."""
        self.optim.zero_grad()
        total.backward()  # under `data_parallel` the averaging starts while this runs
        return total if self.grads is None else self.grads.finish(total)

    def step(self, total: Tensor, retstats: RetStats) -> dict[str, Tensor | float]:
        """The optimizer step, the return normalizer's new statistics and the slow critic's EMA, or
        nothing at all when the loss or a gradient is non-finite."""
        step = self.optim.step(total)
        applied = step["nonfinite"] == 0
        self.ac.retnorm.commit(retstats, applied)
        self.ac.update_slow(applied)
        return step

    def to_device(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Arrays or tensors [B, T, ...] -> tensors on the device (float64 -> float32, images stay uint8)."""
        return {k: self._tensor(v) for k, v in batch.items()}

    def data_parallel(self, world: Any) -> None:
        """Train as one replica among several: `world` (a `run.distributed.World`) averages the gradients
        during each backward pass, and the return percentiles pool the returns of all replicas."""
        self.world = world
        self.grads = world.grad_averager([p for m in (self.wm, self.ac) for p in m.parameters()])

    def _gather(self, x: Tensor) -> Tensor:
        return x if self.world is None else self.world.all_gather(x)

    # --- reporting -------------------------------------------------------------------------------
    @torch.no_grad()
    def report(self, batch: dict[str, Any]) -> dict[str, np.ndarray]:
        """Open-loop predictions: 5 posterior steps, then the prior on the real actions.

        For every decoded key: `openloop/<key>_mse` [T] the mean squared error per step (in [0, 1]
        pixel units for images, raw units for vectors) and `openloop/<key>_mse_imagined` (a 0-d array)
        its mean over the imagined steps. For image keys also `openloop/<key>`: uint8 video
        [T, 3H, W * n, C] of true / predicted / error rows for n = min(B, 4) sequences.
        """
        n = min(OPENLOOP_SEQUENCES, len(batch["is_first"]))
        data = {k: self._tensor(v[:n]) for k, v in batch.items()}
        T = data["is_first"].shape[1]
        context = min(OPENLOOP_CONTEXT, T - 1)
        with self._autocast():
            pred = self.wm.open_loop(data, context)
        out = {}
        for key, value in pred.items():
            value = value.float()
            truth = data[key].float() / 255.0 if key in self.wm.image_keys else data[key].float()
            err = (value - truth).square()
            per_step = err.flatten(2).mean((0, 2))
            out[f"openloop/{key}_mse"] = per_step.cpu().numpy()
            out[f"openloop/{key}_mse_imagined"] = per_step[context:].mean().cpu().numpy()
            if key in self.wm.image_keys:
                out[f"openloop/{key}"] = openloop_video(truth, value.clamp(0, 1))
        return out

    # --- state -----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything learned and running: modules (incl. slow critic and return normalizer) and
        optimizer states. Tensors and plain python values only (weights-only loadable)."""
        return {
            "world_model": self.wm.state_dict(),
            "actor_critic": self.ac.state_dict(),
            "optim": self.optim.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.wm.load_state_dict(state["world_model"])
        self.ac.load_state_dict(state["actor_critic"])
        self.optim.load_state_dict(state["optim"])

    @staticmethod
    def carry_state(carry: RSSMState | None) -> dict[str, Tensor] | None:
        """The training carry that `train` returns, as tensors to store in a checkpoint."""
        return None if carry is None else carry._asdict()

    def load_carry(self, state: dict[str, Tensor] | None) -> RSSMState | None:
        """The training carry from `carry_state`'s output, on this agent's device."""
        return None if state is None else RSSMState(*(state[k].to(self.device) for k in RSSMState._fields))

    # --- helpers ---------------------------------------------------------------------------------
    def _autocast(self):
        dtype = AUTOCAST[self.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def _tensor(self, x: Any) -> Tensor:
        x = torch.as_tensor(x)
        if x.dtype == torch.float64:
            x = x.float()
        return x.to(self.device, non_blocking=True)


def openloop_video(truth: Tensor, pred: Tensor) -> np.ndarray:
    """truth, pred: [B, T, H, W, C] in [0, 1] -> uint8 [T, 3H, B*W, C] rows: true, predicted, error."""
    error = (pred - truth + 1.0) / 2.0
    video = torch.cat([truth, pred, error], 2)
    video = rearrange(video, "b t h w c -> t h (b w) c")
    return (video * 255).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
