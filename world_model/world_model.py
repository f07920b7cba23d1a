"""The world model: encoder, RSSM, decoder, reward and continuation heads, trained by the sequential ELBO.

Losses are unreduced [B, T] tensors keyed like `loss_scales` (`rec rew con dyn rep`), summed with the
agent's in one place (`Agent.loss`). Beside them the pure ELBO is reported per step in nats, with its
rate (KL of the posterior to the prior) and distortion (negative log-likelihoods with their normalizing
constants):

- vectors: Gaussian with std `obs_std` over symlog(x) (the decoder's output space), so it is a density
  over symlog(x), not x; the training term is the reference's squared error in symlog space.
- images: Gaussian with std `obs_std` over x / 255 in [0, 1] (summed over H, W, C); also reported in
  bits per dimension (`elbo.bits_per_dim`); the training term is the reference's squared error.
- reward: the two-hot cross-entropy, the log-probability of the target's bin assignment under the
  predicted categorical over bins (exact log-probability when the reward lies on a bin).
- continuation: Bernoulli NLL of the target (1 - is_terminal) * discount (a soft target when discounted).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from einops import rearrange, repeat
from torch import nn

from envs.spaces import ActionSpace, ArraySpec
from nets.onehot import OneHot
from world_model import elbo
from world_model.decoder import Decoder
from world_model.encoder import Encoder
from world_model.heads import BernoulliHead, TwoHotHead
from world_model.rssm import RSSM, RSSMState


class WorldModelOutput(NamedTuple):
    """losses: {rec, rew, con, dyn, rep} each [B, T], unreduced; states: the posterior RSSMState [B, T, ...]
    with gradient; last: the last posterior state [B, ...], detached; metrics: scalar tensors, detached."""

    losses: dict[str, torch.Tensor]
    states: RSSMState
    last: RSSMState
    metrics: dict[str, torch.Tensor]


class Likelihood(NamedTuple):
    """Per-step terms [...]: `rec` training losses per decoded key; `nll` distortion per decoded key and
    for `reward` and `cont`, in nats with normalizing constants; `rew`, `con` training losses."""

    rec: dict[str, torch.Tensor]
    nll: dict[str, torch.Tensor]
    rew: torch.Tensor
    con: torch.Tensor


class BoundOutput(NamedTuple):
    """Per sequence [B], nats: `iwae` the K-sample bound on log p(x_{1:T} | a), `elbo` the mean of the K
    single-sample ELBO estimates, `elbo_kl` the ELBO with the closed-form KL (averaged over the K)."""

    iwae: torch.Tensor
    elbo: torch.Tensor
    elbo_kl: torch.Tensor


class ParticleBound(NamedTuple):
    """Per sequence [B]: `smc` the particle (filtering) bound on log p(x_{1:T} | a) in nats; `resamples`
    the number of steps at which its particles were resampled."""

    smc: torch.Tensor
    resamples: torch.Tensor


class WorldModel(nn.Module):
    """RSSM world model.

    Args:
        config: the `world_model` config subtree.
        obs_space: observation key -> ArraySpec (images uint8 [H, W, C], vectors float32 [D]).
        act_space: the agent-side action space (actions are float vectors of length `dim`).
        discount: the continuation target's discount 1 - 1/horizon, used when `config.cont_discount`.
    """

    def __init__(self, config, obs_space: dict[str, ArraySpec], act_space: ActionSpace, discount: float):
        super().__init__()
        if config.obs_std <= 0:
            raise ValueError(f"world_model.obs_std must be > 0; got {config.obs_std}")
        self.encoder = Encoder(config.encoder, obs_space, config.norm)
        self.rssm = RSSM(config, self.encoder.out_features, act_space.dim)
        self.feat_size = config.deter + self.rssm.stoch_flat
        self.decoder = Decoder(config.decoder, obs_space, self.feat_size, config.deter, config.norm)
        self.reward = TwoHotHead(
            self.feat_size, config.reward_head, config.bins, config.reward_bins, config.norm
        )
        self.cont = BernoulliHead(self.feat_size, config.cont_head, config.norm)
        self.obs_space, self.act_space = obs_space, act_space
        self.discount = discount if config.cont_discount else 1.0
        self.free_nats, self.obs_std = config.free_nats, config.obs_std
        self.decoded_keys = self.decoder.vector_keys + self.decoder.image_keys
        self.image_keys = self.decoder.image_keys

    # --- small API used by the actor-critic ------------------------------------------------------
    def initial(self, batch_size: int) -> RSSMState:
        return self.rssm.initial(batch_size)

    def feat(self, state: RSSMState) -> torch.Tensor:
        """[..., feat_size] = [deter, flatten(stoch)]."""
        return self.rssm.feat(state)

    # --- data ------------------------------------------------------------------------------------
    def _obs(self, data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: data[k] for k in self.obs_space if k in data}

    @staticmethod
    def prev_actions(
        action: torch.Tensor, is_first: torch.Tensor, first: torch.Tensor | None = None
    ) -> torch.Tensor:
        """action [B, T, A] taken AT each step -> the action that led INTO each step: action[t - 1], at
        t = 0 `first` [B, A] (the action before the window; None: zero), zero where is_first [B, T]."""
        first = torch.zeros_like(action[:, 0]) if first is None else first.to(action.dtype)
        prev = torch.cat([first[:, None], action[:, :-1]], 1)
        return prev * (~is_first.bool()).unsqueeze(-1).to(prev.dtype)

    def _target(self, key: str, x: torch.Tensor) -> torch.Tensor:
        return x.float() / 255.0 if key in self.image_keys else x.float()

    def likelihood(self, feat: torch.Tensor, data: dict[str, torch.Tensor]) -> Likelihood:
        """Training losses and distortion terms [...] of the data under the decoder and heads at `feat`."""
        rec, nll = {}, {}
        for key, dist in self.decoder(feat).items():
            target = self._target(key, data[key])
            rec[key] = dist.sq_error(target)
            nll[key] = elbo.gaussian_nll(rec[key], _event_size(dist), self.obs_std)
        rew = -self.reward(feat).log_prob(data["reward"].float())
        cont_target = (1.0 - data["is_terminal"].float()) * self.discount
        con = -self.cont(feat).log_prob(cont_target)
        nll["reward"], nll["cont"] = rew, con
        return Likelihood(rec, nll, rew, con)

    # --- training --------------------------------------------------------------------------------
    def loss(
        self,
        data: dict[str, torch.Tensor],
        state: RSSMState | None = None,
        prev_action: torch.Tensor | None = None,
    ) -> WorldModelOutput:
        """The world-model loss terms on a batch of [B, T, ...] tensors (see the module docstring), from
        `state` [B] before the first step (None: the initial state), reached there by taking
        `prev_action` [B, A] (None: zero)."""
        is_first = data["is_first"].bool()
        B, T = is_first.shape
        # 1. Encode all B x T steps at once, then the posterior scan.
        embed = self.encoder(self._obs(data))
        state = self.initial(B) if state is None else state
        prev = self.prev_actions(data["action"].float(), is_first, prev_action)
        out = self.rssm.observe(embed, prev, is_first, state)
        feat = self.rssm.feat(out.states)
        # 2. Likelihood terms (all steps at once) and the balanced KL.
        lik = self.likelihood(feat, data)
        kl = elbo.kl_balance(self.rssm.dist, out.post_stats, out.prior_stats, self.free_nats)
        losses = {"rec": sum(lik.rec.values()), "rew": lik.rew, "con": lik.con, "dyn": kl.dyn, "rep": kl.rep}
        metrics = self._metrics(lik, kl.rate, out)
        last = RSSMState(out.last.deter.detach(), out.last.stoch.detach())
        return WorldModelOutput(losses, out.states, last, metrics)

    @torch.no_grad()
    def _metrics(self, lik: Likelihood, rate: torch.Tensor, out) -> dict[str, torch.Tensor]:
        metrics = {f"rec/{k}": v.mean() for k, v in lik.rec.items()}
        metrics.update({f"distortion/{k}": v.mean() for k, v in lik.nll.items()})
        for key in self.image_keys:
            dims = _numel(self.obs_space[key].shape)
            metrics[f"bits_per_dim/{key}"] = elbo.bits_per_dim(lik.nll[key], dims).mean()
        metrics["elbo"] = elbo.sequence_elbo(lik.nll, rate).mean()
        metrics["rate"] = rate.mean()
        metrics["distortion"] = sum(lik.nll.values()).mean()
        metrics["kl/max"] = rate.max()
        metrics["kl/first"] = rate[:, 0].mean()  # the window's first step: how well its start fits
        metrics["prior_ent"] = self.rssm.dist(out.prior_stats).entropy().mean()
        metrics["post_ent"] = self.rssm.dist(out.post_stats).entropy().mean()
        return metrics

    # --- imagination -----------------------------------------------------------------------------
    def starts(self, states: RSSMState, grad: bool) -> RSSMState:
        """Every state of `states` [B, T] as one of B*T imagination starts, detached. Without `grad` (no
        gradient will flow through the rollout), one-hot latents are held as their hot classes, which
        the layers read by gathers (`nets.onehot`)."""
        deter, stoch = (rearrange(x.detach(), "b t ... -> (b t) ...") for x in states)
        if not grad and self.rssm.latent == "categorical":
            stoch = OneHot.of(stoch)
        return RSSMState(deter, stoch)

    def imagine(self, start: RSSMState, policy, horizon: int):
        """Features [N, H+1, F] and actions [N, H+1, A] of a rollout from `start` [N] (`RSSM.imagine`)."""
        return self.rssm.imagine(start, policy, horizon)

    # --- acting and evaluation -------------------------------------------------------------------
    def observe_step(
        self,
        state: RSSMState,
        prev_action: torch.Tensor,
        obs: dict[str, torch.Tensor],
        is_first: torch.Tensor,
    ) -> RSSMState:
        """Posterior step for acting: state [N], prev_action [N, A], obs {key: [N, ...]}, is_first [N]."""
        embed = self.encoder(self._obs(obs))
        state, _ = self.rssm.obs_step(state, prev_action.float(), embed, is_first.bool())
        return state

    @torch.no_grad()
    def open_loop(self, data: dict[str, torch.Tensor], context: int) -> dict[str, torch.Tensor]:
        """Posterior on the first `context` steps, then the prior on the real actions; decoded means.

        Returns {key: [B, T, ...]} for each decoded key (images float in [0, 1] [H, W, C], vectors raw).
        """
        is_first = data["is_first"].bool()
        B, T = is_first.shape
        prev_action = self.prev_actions(data["action"].float(), is_first)
        obs = {k: v[:, :context] for k, v in self._obs(data).items()}
        out = self.rssm.observe(
            self.encoder(obs), prev_action[:, :context], is_first[:, :context], self.initial(B)
        )
        state, feats = out.last, [self.rssm.feat(out.states)]
        for t in range(context, T):
            state = self.rssm.img_step(state, prev_action[:, t], is_first[:, t])
            feats.append(self.rssm.feat(state)[:, None])
        feat = torch.cat(feats, 1)
        return {k: d.mode() for k, d in self.decoder(feat).items()}

    @torch.no_grad()
    def log_likelihood_bound(
        self,
        data: dict[str, torch.Tensor],
        k: int,
        state: RSSMState | None = None,
        prev_action: torch.Tensor | None = None,
    ) -> BoundOutput:
        """Importance-weighted bound with K posterior trajectories per sequence on log p(x_{1:T} | a), from
        `state` [B] before the first step (None: the initial state), reached by `prev_action` [B, A].

        x_t are the decoded observations, reward and continuation, with the distortion likelihoods.
        log w = sum_t [log p(x_t | s_t) + log p(z_t | h_t) - log q(z_t | h_t, x_t)] per trajectory.
        """
        if k < 1:
            raise ValueError(f"the number of importance samples k must be >= 1; got {k}")
        B = data["is_first"].shape[0]
        rep = {key: repeat(v, "b ... -> (k b) ...", k=k) for key, v in data.items()}
        is_first = rep["is_first"].bool()
        embed = self.encoder(self._obs(rep))
        prev = self.prev_actions(rep["action"].float(), is_first, _repeat(prev_action, k))
        start = self._repeat_start(state, k, B)
        out = self.rssm.observe(embed, prev, is_first, start)
        lik = self.likelihood(self.rssm.feat(out.states), rep)
        log_px = -sum(lik.nll.values())  # [K*B, T]
        post, prior = self.rssm.dist(out.post_stats), self.rssm.dist(out.prior_stats)
        z = out.states.stoch
        log_w = (log_px + prior.log_prob(z) - post.log_prob(z)).sum(1)
        elbo_kl = (log_px - post.kl(prior)).sum(1)
        log_w, elbo_kl = log_w.view(k, B), elbo_kl.view(k, B)
        return BoundOutput(elbo.iwae_bound(log_w), log_w.mean(0), elbo_kl.mean(0))

    @torch.no_grad()
    def particle_bound(
        self,
        data: dict[str, torch.Tensor],
        k: int,
        resampler: elbo.Resampler = "systematic",
        ess_threshold: float = 0.5,
        state: RSSMState | None = None,
        prev_action: torch.Tensor | None = None,
    ) -> ParticleBound:
        """Filtering (sequential Monte Carlo) bound with K particles per sequence on log p(x_{1:T} | a),
        from `state` [B] (None: the initial state) reached by `prev_action` [B, A], as
        `log_likelihood_bound`.

        The particles follow the posterior step by step. Step t weighs each by its incremental weight
        w_t = p(x_t | h_t, z_t) p(z_t | h_t) / q(z_t | h_t, x_t) (the ELBO's likelihood terms: decoded
        keys, reward, continuation), adds log sum_k W_k w_t^k to the bound (W: the normalized weights
        carried so far) and, where the effective sample size of the new weights is at most
        `ess_threshold` x K, draws K new particles from them (`resampler`) with uniform weights. A new
        particle takes its parent's whole state: h_{t+1} depends on both h_t and z_t. At `is_first` the
        particles restart from the initial state with uniform weights (the evidence factorizes there).

        E[exp(smc)] = p(x_{1:T} | a), so E[smc] <= log p(x_{1:T} | a). K = 1 is the single-sample ELBO
        estimate; `ess_threshold` 0 (never resample) the importance-weighted bound of K trajectories
        (when no episode restarts inside the window).
        """
        if k < 1:
            raise ValueError(f"the number of particles k must be >= 1; got {k}")
        is_first = data["is_first"].bool()
        B, T = is_first.shape
        embed = _repeat(self.encoder(self._obs(data)), k)  # [K*B, T, E], particle k of sequence b at k*B + b
        prev = _repeat(self.prev_actions(data["action"].float(), is_first, prev_action), k)
        first = _repeat(is_first, k)
        state = self._repeat_start(state, k, B)
        keys = (*self.decoded_keys, "reward", "is_terminal")
        log_w = embed.new_zeros(k, B)
        smc, resamples = embed.new_zeros(B), embed.new_zeros(B)
        for t in range(T):
            state, post = self.rssm.obs_step(state, prev[:, t], embed[:, t], first[:, t])
            log_inc = self._log_weight(state, post, {key: _repeat(data[key][:, t], k) for key in keys})
            log_w = torch.where(is_first[:, t], 0.0, log_w)
            step, log_w = elbo.smc_step(log_w, log_inc.view(k, B))
            smc += step
            resample = elbo.effective_sample_size(log_w) <= ess_threshold * k
            if t < T - 1 and resample.any():
                keep = torch.arange(k, device=log_w.device)[:, None]
                parents = torch.where(resample, elbo.resample(log_w, resampler), keep)
                state = select_particles(state, parents)
                log_w = torch.where(resample, 0.0, log_w)
                resamples += resample
        return ParticleBound(smc, resamples)

    def _repeat_start(self, state: RSSMState | None, k: int, B: int) -> RSSMState:
        """K copies [K*B, ...] of the start `state` [B, ...] (None: the initial state), as `_repeat`."""
        return self.initial(k * B) if state is None else RSSMState(*(_repeat(x, k) for x in state))

    def _log_weight(self, state: RSSMState, post: torch.Tensor, data: dict[str, torch.Tensor]):
        """log p(x_t | s_t) + log p(z_t | h_t) - log q(z_t | h_t, x_t) [N] of one posterior step: state [N],
        its posterior stats [N, S, *], data {key: [N, ...]} of the step."""
        log_px = -sum(self.likelihood(self.rssm.feat(state), data).nll.values())
        prior = self.rssm.dist(self.rssm.prior(state.deter))
        return log_px + prior.log_prob(state.stoch) - self.rssm.dist(post).log_prob(state.stoch)


def select_particles(state: RSSMState, parents: torch.Tensor) -> RSSMState:
    """The states [K*B, ...] (particle k of sequence b at k*B + b) of the new particles, each the whole
    state (deter and stoch) of its parent: parents [K, B] are indices into the K particles of a sequence."""
    K, B = parents.shape
    index = (parents * B + torch.arange(B, device=parents.device)).flatten()
    return RSSMState(state.deter[index], state.stoch[index])


def _repeat(x: torch.Tensor | None, k: int) -> torch.Tensor | None:
    """[B, ...] -> [K*B, ...], copy k of row b at k*B + b; None stays None."""
    return None if x is None else repeat(x, "b ... -> (k b) ...", k=k)


def _numel(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def _event_size(dist) -> int:
    """Number of dimensions in one event of a decoder distribution (its last `event_dims` dims)."""
    return _numel(tuple(dist.pred.shape[dist.pred.dim() - dist.event_dims :]))
