"""The recurrent state-space model: deterministic GRU state h and stochastic latent z.

h_t = f(h_{t-1}, z_{t-1}, a_{t-1}); prior p(z_t | h_t); posterior q(z_t | h_t, e_t) on the observation
embedding e_t. Follows DreamerV3 v2 (danijar/dreamerv3 `dreamerv3/rssm.py`): block-diagonal GRU with
8 blocks, inputs embedded separately, update-gate bias -1, zero state at `is_first`; v1 options: a plain
GRU (one dense layer to the gates, normed) and a learned initial state.

The latent statistics (`stats`) are the raw outputs of the prior/posterior layers: logits [..., S, K] for
categorical latents, [..., S, 2] (mean, pre-softplus std) for Gaussian latents. `RSSM.dist(stats)` turns
them into a distribution whose `log_prob`, `entropy` and `kl` are summed over the S latent groups.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from configs.schema import DYN_INPUTS, GRUS, INITIALS, LATENTS
from envs.spaces import ArraySpec
from nets.distributions import DiagNormal, OneHotCategorical
from nets.layers import MLP, BlockLinear, Linear, Norm, trunc_normal_fan_in_
from nets.onehot import Features, OneHot, concat, sample_like, stack


class RSSMState(NamedTuple):
    """deter: [..., D]; stoch: [..., S, K] one-hot (categorical) or [..., S] (gaussian). A one-hot stoch
    that no gradient needs may be held as its hot classes (`nets.onehot.OneHot`)."""

    deter: torch.Tensor
    stoch: torch.Tensor | OneHot


class ObserveOutput(NamedTuple):
    """states: RSSMState [B, T, ...], the posterior samples (with gradient); post_stats, prior_stats:
    [B, T, S, *] the statistics of q(z_t | h_t, e_t) and p(z_t | h_t); last: the last posterior state
    [B, ...] (with gradient; detach it to carry across batches)."""

    states: RSSMState
    post_stats: torch.Tensor
    prior_stats: torch.Tensor
    last: RSSMState


def latent_spec(config) -> dict[str, ArraySpec]:
    """The parts of a state as stored per step (float32): `deter` [D] and `stoch` [S, K] (categorical)
    or [S] (gaussian)."""
    stoch = (config.stoch, config.classes) if config.latent == "categorical" else (config.stoch,)
    return {
        "deter": ArraySpec((config.deter,), np.dtype(np.float32)),
        "stoch": ArraySpec(stoch, np.dtype(np.float32)),
    }


def _check(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"world_model.{name} must be one of {allowed}; got {value!r}")


class GroupSum:
    """Wraps a per-group distribution over [..., S, *] so log_prob/entropy/kl sum over the S groups."""

    def __init__(self, dist: OneHotCategorical | DiagNormal):
        self.dist = dist

    def sample(self) -> torch.Tensor:
        return self.dist.sample()

    def sample_index(self) -> torch.Tensor:
        """Categorical only: the sampled class of each group [..., S] (see OneHotCategorical)."""
        return self.dist.sample_index()

    def mode(self) -> torch.Tensor:
        return self.dist.mode()

    def log_prob(self, stoch: torch.Tensor) -> torch.Tensor:
        return self.dist.log_prob(stoch).sum(-1)

    def entropy(self) -> torch.Tensor:
        return self.dist.entropy().sum(-1)

    def kl(self, other: GroupSum) -> torch.Tensor:
        return self.dist.kl(other.dist).sum(-1)


class BlockGRUCore(nn.Module):
    """v2 dynamics: per-block GRU on [h block, shared input embedding] through one hidden block layer.

    The reference concatenates each deter block with a copy of the shared input embedding x and applies
    a block-diagonal layer. That equals a dense layer on x plus a block-diagonal layer on h, which is
    what we compute (no per-block copies of x). Both parts are initialized with the reference's fan-in,
    that of its block layer: the whole concatenated input, blocks x (deter / blocks + inp) = deter +
    blocks x inp (8192 at size12m, std 0.011); the gates' fan-in is `deter` (std 0.022 at size12m).

    deter: [N, D], x: [N, inp] -> next deter [N, D].
    """

    def __init__(self, deter: int, inp: int, blocks: int, norm: str):
        super().__init__()
        if deter % blocks:
            raise ValueError(
                f"world_model.deter ({deter}) must be divisible by world_model.blocks ({blocks})"
            )
        fan_in = deter + blocks * inp
        self.blocks = blocks
        self.hid_x = Linear(inp, deter, bias=False)
        self.hid_h = BlockLinear(deter, deter, blocks)
        trunc_normal_fan_in_(self.hid_x.weight, fan_in)
        trunc_normal_fan_in_(self.hid_h.weight, fan_in)
        self.hid_norm = Norm(deter, norm)
        self.gates = BlockLinear(deter, 3 * deter, blocks)

    def forward(self, deter: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        hid = F.silu(self.hid_norm(self.hid_x(x) + self.hid_h(deter)))
        reset, cand, update = rearrange(self.gates(hid), "n (g k d) -> k n (g d)", g=self.blocks, k=3)
        return _gru_update(deter, reset, cand, update)


class PlainGRUCore(nn.Module):
    """v1 dynamics: one dense layer on [x, h] to the three gates, then a norm."""

    def __init__(self, deter: int, inp: int, norm: str):
        super().__init__()
        self.gates = Linear(inp + deter, 3 * deter, bias=False)
        self.norm = Norm(3 * deter, norm)

    def forward(self, deter: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        gates = self.norm(self.gates(torch.cat([x, deter], -1)))
        reset, cand, update = gates.chunk(3, -1)
        return _gru_update(deter, reset, cand, update)


def _gru_update(deter, reset, cand, update):
    # Update-gate bias -1: the state starts out mostly kept (reference `_core`).
    cand = torch.tanh(torch.sigmoid(reset) * cand)
    update = torch.sigmoid(update - 1.0)
    return update * cand + (1.0 - update) * deter


class RSSM(nn.Module):
    """Recurrent state-space model; the state is explicit (`RSSMState`) in every call.

    Args:
        config: the `world_model` config subtree (deter, hidden, stoch, classes, latent, ...).
        embed_size: size E of the encoder output.
        action_dim: size A of the action vector.
    """

    def __init__(self, config, embed_size: int, action_dim: int):
        super().__init__()
        _check("latent", config.latent, LATENTS)
        _check("gru", config.gru, GRUS)
        _check("dyn_inputs", config.dyn_inputs, DYN_INPUTS)
        _check("initial", config.initial, INITIALS)
        c = config
        self.latent, self.initial_kind = c.latent, c.initial
        self.deter, self.stoch, self.classes = c.deter, c.stoch, c.classes
        self.unimix, self.min_std = c.unimix, c.min_std
        self.stoch_flat = c.stoch * (c.classes if c.latent == "categorical" else 1)
        stats = c.stoch * (c.classes if c.latent == "categorical" else 2)
        # Inputs of the dynamics: each embedded by Linear -> Norm -> SiLU (v2 `dynin0..2`), or
        # [stoch, action] by one such layer (v1 `img_in`).
        self.joint_inputs = c.dyn_inputs == "joint"
        if self.joint_inputs:
            self.in_joint = MLP(self.stoch_flat + action_dim, c.hidden, 1, c.norm)
        else:
            self.in_deter = MLP(c.deter, c.hidden, 1, c.norm)
            self.in_stoch = MLP(self.stoch_flat, c.hidden, 1, c.norm)
            self.in_action = MLP(action_dim, c.hidden, 1, c.norm)
        inp = c.hidden if self.joint_inputs else 3 * c.hidden
        if c.gru == "block":
            self.core = BlockGRUCore(c.deter, inp, c.blocks, c.norm)
        else:
            self.core = PlainGRUCore(c.deter, inp, c.norm)
        self.prior_net = MLP(c.deter, c.hidden, c.prior_layers, c.norm, out_features=stats)
        if c.post_layers < 1:
            raise ValueError(f"world_model.post_layers must be >= 1; got {c.post_layers}")
        # First posterior layer on [h, e], split so the e part is computed for all steps at once.
        self.post_h = Linear(c.deter, c.hidden, bias=False)
        self.post_e = Linear(embed_size, c.hidden)
        trunc_normal_fan_in_(self.post_h.weight, c.deter + embed_size)
        trunc_normal_fan_in_(self.post_e.weight, c.deter + embed_size)
        self.post_norm = Norm(c.hidden, c.norm)
        self.post_net = MLP(c.hidden, c.hidden, c.post_layers - 1, c.norm, out_features=stats)
        if c.initial == "learned":
            self.init_deter = nn.Parameter(torch.zeros(c.deter))

    # --- distributions -------------------------------------------------------------------------
    def dist(self, stats: torch.Tensor) -> GroupSum:
        """stats: [..., S, K] logits or [..., S, 2] (mean, raw std) -> distribution over stoch."""
        stats = stats.float()  # the networks may run in bf16 (autocast); the distributions do not
        if self.latent == "categorical":
            return GroupSum(OneHotCategorical(stats, self.unimix))
        std = F.softplus(stats[..., 1]) + self.min_std
        return GroupSum(DiagNormal(stats[..., 0], std, event_dims=0))

    def _stats(self, x: torch.Tensor) -> torch.Tensor:
        return rearrange(x, "... (s k) -> ... s k", s=self.stoch)

    def prior(self, deter: torch.Tensor) -> torch.Tensor:
        """deter: [..., D] -> prior stats [..., S, *]."""
        return self._stats(self.prior_net(deter))

    # --- state -----------------------------------------------------------------------------------
    def initial(self, batch_size: int) -> RSSMState:
        """The state used where `is_first`: zeros (v2) or tanh(learned) with the prior mode (v1)."""
        p = self.post_h.weight
        if self.initial_kind == "zeros":
            deter = p.new_zeros(batch_size, self.deter)
            shape = (
                (batch_size, self.stoch, self.classes)
                if self.latent == "categorical"
                else (batch_size, self.stoch)
            )
            return RSSMState(deter, p.new_zeros(shape))
        deter = torch.tanh(self.init_deter).expand(batch_size, self.deter)
        return RSSMState(deter, self.dist(self.prior(deter)).mode())

    def feat(self, state: RSSMState) -> torch.Tensor | Features:
        """[..., D + S*K] (or D + S): deter and flattened stoch."""
        return concat(state.deter, self._flat(state.stoch))

    def _flat(self, stoch: torch.Tensor | OneHot) -> torch.Tensor | OneHot:
        """stoch as features: [..., S, K] -> [..., S*K] (categorical), [..., S] as it is (gaussian)."""
        return stoch.flatten(-2) if self.latent == "categorical" else stoch

    def _reset(
        self, state: RSSMState, action: torch.Tensor, is_first: torch.Tensor, init: RSSMState | None = None
    ):
        """Where is_first [N]: initial state and zero previous action. `init`: `initial(1)`, computed
        once by callers that reset over many steps (the learned one runs the prior network)."""
        init = self.initial(1) if init is None else init
        first = is_first[:, None]
        action = torch.where(first, 0.0, action)
        deter = torch.where(first, init.deter, state.deter)
        stoch = torch.where(_expand(is_first, state.stoch), init.stoch, state.stoch)
        return RSSMState(deter, stoch), action

    def _dynamics(self, state: RSSMState, action: torch.Tensor) -> torch.Tensor:
        """h_t from the previous state and the action taken there: [N, D]."""
        # Actions are scaled into [-1, 1] without a gradient through the scale (reference `_core`).
        action = action / torch.clamp(action.abs(), min=1.0).detach()
        stoch = self._flat(state.stoch)
        if self.joint_inputs:
            x = self.in_joint(concat(stoch, action))
        else:
            x = torch.cat(
                [self.in_deter(state.deter), self.in_stoch(concat(stoch)), self.in_action(action)], -1
            )
        return self.core(state.deter, x)

    # --- steps ---------------------------------------------------------------------------------
    def img_step(
        self, state: RSSMState, action: torch.Tensor, is_first: torch.Tensor | None = None
    ) -> RSSMState:
        """One prior step: state [N], action [N, A] (taken at `state`) -> next state [N] (sampled prior,
        held like `state.stoch`)."""
        if is_first is not None:
            state, action = self._reset(state, action, is_first)
        deter = self._dynamics(state, action)
        return RSSMState(deter, sample_like(self.dist(self.prior(deter)), state.stoch))

    def obs_step(
        self, state: RSSMState, prev_action: torch.Tensor, embed: torch.Tensor, is_first: torch.Tensor
    ) -> tuple[RSSMState, torch.Tensor]:
        """One posterior step: state [N], prev_action [N, A], embed [N, E], is_first [N] -> (state [N],
        posterior stats [N, S, *])."""
        return self._obs_step(state, prev_action, self.post_e(embed), is_first, self.initial(1))

    def _obs_step(self, state, prev_action, embed_proj, is_first, init):
        """`obs_step` on the embedding's share of the first posterior layer, `post_e(embed)` [N, hidden]
        (computed for all steps of a sequence at once), with `init = initial(1)` (see `_reset`)."""
        state, prev_action = self._reset(state, prev_action, is_first, init)
        deter = self._dynamics(state, prev_action)
        x = F.silu(self.post_norm(self.post_h(deter) + embed_proj))
        stats = self._stats(self.post_net(x))
        return RSSMState(deter, self.dist(stats).sample()), stats

    def observe(
        self, embed: torch.Tensor, prev_action: torch.Tensor, is_first: torch.Tensor, state: RSSMState
    ) -> ObserveOutput:
        """Posterior rollout over a sequence.

        Args:
            embed: [B, T, E] encoder outputs.
            prev_action: [B, T, A] the action that led INTO each step (zeroed where is_first here too).
            is_first: [B, T] bool; the state resets to `initial` there.
            state: RSSMState [B, ...] before the first step.
        """
        B, T = is_first.shape
        embed_proj = self.post_e(embed)  # [B, T, hidden]
        init = self.initial(1)
        states, stats = [], []
        for t in range(T):
            state, post = self._obs_step(state, prev_action[:, t], embed_proj[:, t], is_first[:, t], init)
            states.append(state)
            stats.append(post)
        states = RSSMState(*(torch.stack(x, 1) for x in zip(*states, strict=True)))
        # The prior is not needed inside the loop: computed for all B x T steps at once.
        return ObserveOutput(states, torch.stack(stats, 1), self.prior(states.deter), state)

    def imagine(
        self, start: RSSMState, policy: Callable[[torch.Tensor | Features], torch.Tensor], horizon: int
    ) -> tuple[torch.Tensor | Features, torch.Tensor]:
        """Roll the prior forward from `start` [N] with the actions of `policy` (features [N, F], detached
        as in the reference -> action [N, A]) for H = `horizon` steps.

        Returns the features [N, H+1, F] of the start and the imagined states, and the action [N, H+1, A]
        taken at each.
        """
        state, feats, actions = start, [], []
        for t in range(horizon + 1):
            feats.append(self.feat(state))
            actions.append(policy(feats[-1].detach()))
            if t < horizon:
                state = self.img_step(state, actions[-1])
        return stack(feats, 1), torch.stack(actions, 1)


def _expand(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """mask [N] -> [N, 1, ...] broadcastable to `like`."""
    return mask.view(-1, *([1] * (like.dim() - 1)))
