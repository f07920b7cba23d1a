"""Actor and critic learned inside imagined latent rollouts (DreamerV3 "Actor-critic in imagination").

The losses follow the reference's `imag_loss` and `repl_loss` (dreamerv3/agent.py, v2); `Agent.loss`
imagines the rollouts and calls them:

- On a rollout of N starts over H + 1 steps (index 0 the start): reward r = reward-head mean,
  continuation c = continue-head probability (v2) or its mode with c_0 = 1 - is_terminal of the start
  (v1, `imag_cont`); weight w_t = prod_{k<=t} (d c_k) / d with d = 1 when the
  continue target already holds the discount (`world_model.cont_discount`, v2) and
  d = 1 - 1/discount_horizon otherwise (v1).
- lambda-returns R bootstrap from the online critic (v2 `slowtar: False`), R_H = v_H.
- policy: -w (log pi(a) sg(A) + eta H[pi]) with A = (R - v) / max(1, P95 - P5) (REINFORCE, v2), or
  -w ((R - v) / S + eta H[pi]) with gradients through the imagined dynamics into R and the baseline v
  (v1 option, continuous actions).
- value: w (-log p_v(sg R) - slow_reg log p_v(sg v_slow)), the critic a two-hot over bins.
- repval: the same critic loss on the replayed posteriors, with lambda-returns along the real sequence
  (real rewards, terminations, episode ends) bootstrapped from each start's imagined return R_0.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterator
from typing import NamedTuple

import torch
from torch import Tensor, nn

from agent.returns import RetNorm, RetStats, lambda_return
from configs.schema import GRADS, IMAG_CONTS, ActorCriticConfig
from envs.spaces import ActionSpace
from nets.distributions import LOG_2PI, Bernoulli, BoundedNormal, OneHotCategorical, TwoHot
from nets.functional import where_
from nets.layers import MLP


class MultiOneHot:
    """Independent one-hot categoricals over consecutive slices of the last dim (multidiscrete actions).

    logits: [..., sum(nvec)]; samples and modes are concatenated one-hots [..., sum(nvec)];
    log_prob and entropy sum over the sub-actions.
    """

    def __init__(self, logits: Tensor, nvec: tuple[int, ...], unimix: float = 0.0):
        self.parts = [OneHotCategorical(x, unimix) for x in torch.split(logits, list(nvec), -1)]
        self.nvec = tuple(nvec)

    def sample(self) -> Tensor:
        return torch.cat([p.sample() for p in self.parts], -1)

    def mode(self) -> Tensor:
        return torch.cat([p.mode() for p in self.parts], -1)

    def log_prob(self, onehot: Tensor) -> Tensor:
        xs = torch.split(onehot, list(self.nvec), -1)
        return sum(p.log_prob(x) for p, x in zip(self.parts, xs, strict=True))

    def entropy(self) -> Tensor:
        return sum(p.entropy() for p in self.parts)


ActionDist = MultiOneHot | OneHotCategorical | BoundedNormal


class Actor(nn.Module):
    """The policy head: feat [..., F] -> action distribution over [..., A].

    Discrete: one-hot categorical with `unimix` (multidiscrete: one per sub-action); continuous:
    BoundedNormal with mean tanh(x) and std (max - min) sigmoid(x + 2) + min.
    """

    def __init__(self, feat_size: int, act_space: ActionSpace, config: ActorCriticConfig, norm: str):
        super().__init__()
        if act_space.kind not in ("discrete", "multidiscrete", "continuous"):
            raise ValueError(
                f"action space kind must be discrete, multidiscrete or continuous; got {act_space.kind!r}"
            )
        self.act_space, self.config = act_space, config
        outputs = act_space.dim if act_space.discrete else 2 * act_space.dim
        head = config.actor
        self.net = MLP(feat_size, head.units, head.layers, norm, outputs, head.outscale)

    def forward(self, feat: Tensor) -> ActionDist:
        return self.dist(self.net(feat))

    def dist(self, out: Tensor) -> ActionDist:
        """The action distribution from the network's outputs [..., P]."""
        out = out.float()
        if self.act_space.kind == "discrete":
            return OneHotCategorical(out, self.config.unimix)
        if self.act_space.kind == "multidiscrete":
            return MultiOneHot(out, self.act_space.nvec, self.config.unimix)
        mean, std = out.chunk(2, -1)
        return BoundedNormal(mean, std, self.config.min_std, self.config.max_std)

    def entropy_range(self) -> tuple[float, float]:
        """Lowest and highest entropy the policy can have, to report a normalized entropy in [0, 1]."""
        if self.act_space.discrete:
            nvec = self.act_space.nvec or (self.act_space.dim,)
            return 0.0, float(sum(math.log(n) for n in nvec))
        per_dim = lambda std: math.log(std) + 0.5 * (LOG_2PI + 1.0)
        dim = self.act_space.dim
        return dim * per_dim(self.config.min_std), dim * per_dim(self.config.max_std)


def exact_action(action: Tensor, act_space: ActionSpace) -> Tensor:
    """Actions for the environment: exact one-hots for discrete kinds (the straight-through sample
    carries rounding of `probs - probs`), values clipped to [-1, 1] for continuous ones. [..., A]."""
    action = action.detach()
    if act_space.kind == "continuous":
        return action.clamp(-1.0, 1.0)
    nvec = act_space.nvec or (act_space.dim,)
    parts = [nn.functional.one_hot(x.argmax(-1), x.shape[-1]) for x in torch.split(action, list(nvec), -1)]
    return torch.cat(parts, -1).to(action.dtype)


class Critic(nn.Module):
    """The value head: feat [..., F] -> TwoHot over `bins` (zero-initialized output, so v = 0 at first)."""

    def __init__(self, feat_size: int, config: ActorCriticConfig, norm: str, bins: Tensor, space: str):
        super().__init__()
        head = config.critic
        self.net = MLP(feat_size, head.units, head.layers, norm, bins.shape[0], head.outscale)
        self.register_buffer("bins", bins.clone(), persistent=False)
        self.space = space

    def forward(self, feat: Tensor) -> TwoHot:
        return TwoHot(self.net(feat).float(), self.bins, self.space)


class Acting:
    """The policy of an imagined rollout: feat [N, F] -> a sampled action [N, A] (detached with `detach`,
    so no gradient follows it into the world model), keeping the actor's outputs at every step with
    their gradient: the losses read the policy there instead of running the actor again (`outputs`)."""

    def __init__(self, actor: Actor, detach: bool):
        self.actor, self.detach, self.outs = actor, detach, []

    def __call__(self, feat: Tensor) -> Tensor:
        self.outs.append(self.actor.net(feat))
        action = self.actor.dist(self.outs[-1]).sample()
        return action.detach() if self.detach else action

    def outputs(self) -> Tensor:
        """[N, H+1, P] the actor's outputs at each state of the rollout, in order."""
        return torch.stack(self.outs, 1)


class Imagination(NamedTuple):
    """An imagined rollout of N starts over H + 1 steps (index 0 is the start state)."""

    feat: Tensor  # [N, H+1, F] model features (nets.onehot.Features when one-hot latents are indices)
    action: Tensor  # [N, H+1, A] the action the actor took at each state
    policy: Tensor  # [N, H+1, P] the actor's outputs that chose the actions (Actor.dist reads them)
    reward: Tensor  # [N, H+1] reward-head mean (index 0 unused)
    cont: Tensor  # [N, H+1] continuation (`imag_cont`), detached


def imag_cont(dist: Bernoulli, is_terminal: Tensor, kind: str) -> Tensor:
    """Continuation [N, H+1] of an imagined rollout, detached, from the continue head over it.

    "prob" (v2): the head's probability at every step. "mode" (v1, the 2023 code): its mode (0 or 1),
    and at the start the replayed 1 - is_terminal [N], so a start on a terminal step weighs nothing.
    """
    if kind not in IMAG_CONTS:
        raise ValueError(f"actor_critic.imag_cont must be one of {IMAG_CONTS}; got {kind!r}")
    if kind == "prob":
        return dist.mean().float().detach()
    cont = dist.mode().float().detach()
    return torch.cat([1.0 - is_terminal.float()[:, None], cont[:, 1:]], 1)


class ImagLoss(NamedTuple):
    losses: dict[str, Tensor]  # "policy", "value": [N, H]
    ret: Tensor  # [N, H] lambda-returns, detached
    retstats: RetStats  # the return normalizer's statistics after seeing `ret`
    metrics: dict[str, Tensor]


@contextlib.contextmanager
def frozen(*modules: nn.Module) -> Iterator[None]:
    """Parameters of `modules` record no gradient inside the block; activations still do."""
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


class ActorCritic(nn.Module):
    """The behaviour learner's parts: actor, critic, slow critic and return normalizer.

    Args:
        feat_size: size F of the world model's features.
        act_space: the action space.
        config: the actor_critic config subtree.
        norm: norm kind of the MLPs ("rms" v2, "layer" v1), shared with the world model.
        bins: [K] two-hot bins of the critic; space: "raw" (symexp bins, v2) or "symlog" (v1).
        cont_discount: whether the continue head's target already holds the discount 1 - 1/horizon (v2).
    """

    def __init__(
        self,
        feat_size: int,
        act_space: ActionSpace,
        config: ActorCriticConfig,
        norm: str,
        bins: Tensor,
        space: str,
        cont_discount: bool,
    ):
        super().__init__()
        if config.grad not in GRADS:
            raise ValueError(f"actor_critic.grad must be one of {GRADS}, got {config.grad!r}")
        self.config, self.act_space = config, act_space
        # `grad` chooses the gradient for continuous actions; discrete ones always use REINFORCE (as
        # the reference's `actor_grad_disc`).
        self.grad = "reinforce" if act_space.discrete else config.grad
        self.actor = Actor(feat_size, act_space, config, norm)
        self.critic = Critic(feat_size, config, norm, bins, space)
        self.slow_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.retnorm = RetNorm(
            config.retnorm_decay, config.retnorm_low, config.retnorm_high, config.retnorm_limit
        )
        self.gamma = 1.0 - 1.0 / config.discount_horizon
        # The discount applied on top of the continue probability in imagination.
        self.imag_disc = 1.0 if cont_discount else self.gamma

    def imag_loss(self, traj: Imagination, normalize: Callable[[Tensor], RetStats]) -> ImagLoss:
        """Policy and value losses [N, H] on an imagined rollout. `normalize` maps the returns to the return
        normalizer's new statistics (`RetNorm.update`, over the returns of all replicas)."""
        cfg = self.config
        feat = traj.feat.detach()
        weight = (torch.cumprod(self.imag_disc * traj.cont, 1) / self.imag_disc).detach()
        value_dist = self.critic(feat)
        value = value_dist.mean()
        ret = lambda_return(
            traj.reward.detach(), self.imag_disc * traj.cont, value.detach(), cfg.return_lambda
        )
        retstats = normalize(ret)
        scale = retstats.scale(cfg.retnorm_limit)
        adv = (ret - value[:, :-1].detach()) / scale
        # Heads run on all H + 1 steps and are sliced after: slicing the input first would copy it.
        policy = self.actor.dist(traj.policy)
        ent = policy.entropy()[:, :-1]
        if self.grad == "reinforce":
            logpi = policy.log_prob(traj.action.detach())[:, :-1]
            policy_loss = -weight[:, :-1] * (logpi * adv + cfg.entropy * ent)
        else:
            dyn_ret, dyn_value = self._dynamics_return(traj)
            dyn_adv = (dyn_ret - dyn_value[:, :-1]) / scale
            policy_loss = -weight[:, :-1] * (dyn_adv + cfg.entropy * ent)
        with torch.no_grad():
            slow_mean = self.slow_critic(feat).mean()
        value_loss = weight[:, :-1] * critic_loss(value_dist, ret, slow_mean, cfg.slow_reg)
        m = (retstats, scale, traj.reward, traj.cont, weight, ret, adv, value, slow_mean[:, :-1], ent)
        losses = {"policy": policy_loss, "value": value_loss}
        return ImagLoss(losses, ret, retstats, imag_metrics(self.actor, *m))

    def _dynamics_return(self, traj: Imagination) -> tuple[Tensor, Tensor]:
        """(lambda-return [N, H], value [N, H+1]), both differentiable through the imagined features (v1).

        The value is also the baseline: the 2023 code's backprop loss -(R - v) / S lets the gradient
        through v as well (v_t for t >= 1 depends on the earlier actions; v_0, the start's, does not).
        """
        with frozen(self.critic):
            value = self.critic(traj.feat).mean()
        ret = lambda_return(traj.reward, self.imag_disc * traj.cont, value, self.config.return_lambda)
        return ret, value

    def repval_loss(
        self, feat: Tensor, reward: Tensor, is_last: Tensor, is_terminal: Tensor, boot: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Critic loss [B, T-1] on replayed posterior features (v2 `repl_loss`).

        Args:
            feat: [B, T, F] posterior features (attached when the world model should learn from it).
            reward, is_last, is_terminal: [B, T] the replayed sequence.
            boot: [B, T] the imagined return R_0 from each posterior (detached).
        Returns:
            (loss [B, T-1], ret [B, T-1]).
        """
        cfg = self.config
        cont = (1.0 - is_terminal.float()) * self.gamma
        lam = cfg.return_lambda * (1.0 - is_last.float())
        ret = lambda_return(reward.float(), cont, boot.detach().float(), lam)
        with torch.no_grad():
            slow_mean = self.slow_critic(feat.detach()).mean()
        live = 1.0 - is_last[:, :-1].float()
        return live * critic_loss(self.critic(feat), ret, slow_mean, cfg.slow_reg), ret

    @torch.no_grad()
    def update_slow(self, applied: Tensor | bool = True) -> None:
        """Move the slow critic towards the critic by `slow_rate` (v2: 0.02 every update) where `applied`
        (a bool, or a 0-d bool tensor on the device: no host read)."""
        for slow, fast in zip(self.slow_critic.parameters(), self.critic.parameters(), strict=True):
            where_(applied, slow, slow.lerp(fast, self.config.slow_rate))


def critic_loss(dist: TwoHot, ret: Tensor, slow_mean: Tensor, slow_reg: float) -> Tensor:
    """[N, T-1]: -log p(sg R) - slow_reg log p(sg v_slow) for dist [N, T], ret [N, T-1], slow_mean [N, T].

    The last step has no return; it is padded and dropped, as in the reference.
    """
    target = torch.cat([ret, torch.zeros_like(ret[:, -1:])], 1)
    loss = -dist.log_prob(target.detach()) - slow_reg * dist.log_prob(slow_mean.detach())
    return loss[:, :-1]


@torch.no_grad()
def imag_metrics(
    actor: Actor, retstats: RetStats, scale: Tensor, reward, cont, weight, ret, adv, value, slow_mean, ent
) -> dict[str, Tensor]:
    """What the imagined rollout and its returns report (scalars, detached)."""
    lo, hi = actor.entropy_range()
    m = {
        "ret": ret.mean(),
        "ret_min": ret.min(),
        "ret_max": ret.max(),
        "ret_normed": ((ret - retstats.lo) / scale).mean(),
        "ret_scale": scale,
        "ret_lo": retstats.lo.clone(),
        "ret_hi": retstats.hi.clone(),
        "adv": adv.mean(),
        "adv_std": adv.std(),
        "adv_mag": adv.abs().mean(),
        "value": value.mean(),
        "slow_value": slow_mean.mean(),
        "entropy": ent.mean(),
        "entropy_normed": (ent.mean() - lo) / max(hi - lo, 1e-8),
        "imag_reward": reward[:, 1:].mean(),
        "imag_cont": cont[:, 1:].mean(),
        "imag_weight": weight.mean(),
    }
    return {k: v.detach().float() for k, v in m.items()}
