"""Actor, critic and their losses on a hand-built latent world with the world model's interface."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from agent.actor_critic import (
    Acting,
    Actor,
    ActorCritic,
    Imagination,
    MultiOneHot,
    exact_action,
    frozen,
    imag_cont,
)
from agent.returns import RetStats, lambda_return
from configs.loader import load_config
from envs.spaces import ActionSpace
from nets.distributions import Bernoulli, DiagNormal, symexp_bins


class Mean:
    def __init__(self, value):
        self.value = value

    def mean(self):
        return self.value


class ToyWorldModel(nn.Module):
    """State [N, 3]: a context one-hot (2) that never changes, and the reward just earned.

    Discrete actions (2): reward 1 for the action matching the context. Continuous (1 dim): reward
    1 - (a - target)^2 with target +0.5 / -0.5 by context. The action enters through `gain`, a world
    model parameter, so gradients into the world model would be visible.
    """

    def __init__(self, discrete, cont=0.9):
        super().__init__()
        self.discrete = discrete
        self.gain = nn.Parameter(torch.ones(()))
        self.reward_scale = nn.Parameter(torch.ones(()))
        self.cont_prob = cont

    def img_step(self, state, action):
        ctx = state[:, :2]
        if self.discrete:
            rew = (self.gain * action * ctx).sum(-1)
        else:
            target = 0.5 * (ctx[:, 0] - ctx[:, 1])
            rew = 1 - (self.gain * action[:, 0] - target) ** 2
        return torch.cat([ctx, rew[:, None]], -1)

    def imagine(self, state, policy, horizon):
        states, actions = [state], []
        for _ in range(horizon):
            actions.append(policy(state.detach()))
            state = self.img_step(state, actions[-1])
            states.append(state)
        actions.append(policy(state.detach()))
        return torch.stack(states, 1), torch.stack(actions, 1)

    def reward(self, feat):
        return Mean(self.reward_scale * feat[..., 2])

    def cont(self, feat):
        return Mean(torch.full(feat.shape[:-1], self.cont_prob))

    def starts(self, n, seed=0):
        g = torch.Generator().manual_seed(seed)
        ctx = nn.functional.one_hot(torch.randint(0, 2, (n,), generator=g), 2).float()
        return torch.cat([ctx, torch.zeros(n, 1)], -1)


def imagine(ac, wm, starts):
    """An imagined rollout from `starts`, as `Agent.loss` imagines one (its section 2)."""
    policy = Acting(ac.actor, detach=ac.grad == "reinforce")
    with frozen(wm):
        feat, action = wm.imagine(starts, policy, ac.config.imag_horizon)
        reward = wm.reward(feat).mean().float()
        is_terminal = torch.zeros(feat.shape[0], dtype=torch.bool)
        cont = imag_cont(wm.cont(feat), is_terminal, ac.config.imag_cont)
    return Imagination(feat, action, policy.outputs(), reward, cont)


def imag_loss(ac, traj):
    return ac.imag_loss(traj, ac.retnorm.update)


def make_ac(kind="discrete", overrides=None, cont_discount=True):
    cfg = load_config(["debug"], {"actor_critic": overrides or {}}).actor_critic
    space = ActionSpace("discrete", 2, (2,)) if kind == "discrete" else ActionSpace("continuous", 1)
    torch.manual_seed(0)
    return ActorCritic(3, space, cfg, "rms", symexp_bins(31), "raw", cont_discount)


def grads_of(module):
    return [p.grad for p in module.parameters()]


def test_actor_distributions():
    cfg = load_config(["debug"]).actor_critic
    torch.manual_seed(0)
    feat = torch.randn(7, 5)
    disc = Actor(5, ActionSpace("discrete", 3, (3,)), cfg, "rms")(feat)
    assert disc.sample().shape == (7, 3)
    # unimix 0.01 keeps every probability at least 0.01 / 3.
    assert disc.probs.min().item() >= 0.01 / 3 - 1e-7
    multi = Actor(5, ActionSpace("multidiscrete", 5, (2, 3)), cfg, "rms")(feat)
    a = multi.sample()
    assert isinstance(multi, MultiOneHot) and a.shape == (7, 5)
    assert torch.equal(a[:, :2].sum(-1).round(), torch.ones(7)) and torch.equal(
        a[:, 2:].sum(-1).round(), torch.ones(7)
    )
    expected = multi.parts[0].log_prob(a[:, :2]) + multi.parts[1].log_prob(a[:, 2:])
    torch.testing.assert_close(multi.log_prob(a), expected)
    actor = Actor(5, ActionSpace("continuous", 2), cfg, "rms")
    with torch.no_grad():
        actor.net.net[-1].weight.normal_(0, 10.0)
    cont = actor(feat * 10)
    assert cont.loc.abs().max() <= 1 and cont.std.min() >= cfg.min_std and cont.std.max() <= cfg.max_std
    lo, hi = actor.entropy_range()
    per_dim = lambda s: math.log(s) + 0.5 * math.log(2 * math.pi * math.e)
    np.testing.assert_allclose((lo, hi), (2 * per_dim(0.1), 2 * per_dim(1.0)))
    # The distribution is float32, and at a saturated std its float32 entropy can round one bit past the
    # float64 bound; so the exact check is against the float32 entropy of the saturated stds themselves.
    saturated = [
        DiagNormal(torch.zeros(2), torch.full((2,), s), event_dims=1).entropy()
        for s in (cfg.min_std, cfg.max_std)
    ]
    np.testing.assert_allclose([e.item() for e in saturated], (lo, hi), rtol=1e-6)
    assert saturated[0] <= cont.entropy().min() and cont.entropy().max() <= saturated[1]


def test_exact_action():
    space = ActionSpace("multidiscrete", 5, (2, 3))
    a = torch.tensor([[0.9999999, 1e-7, 0.0, 1.0000001, -1e-7]])
    assert torch.equal(exact_action(a, space), torch.tensor([[1.0, 0.0, 0.0, 1.0, 0.0]]))
    assert torch.equal(
        exact_action(torch.tensor([[1.7, -0.3]]), ActionSpace("continuous", 2)), torch.tensor([[1.0, -0.3]])
    )


def test_critic_starts_at_zero_value_and_slow_critic_is_a_copy():
    ac = make_ac()
    assert torch.equal(ac.critic(torch.randn(4, 3)).mean(), torch.zeros(4))
    for s, f in zip(ac.slow_critic.parameters(), ac.critic.parameters(), strict=True):
        assert torch.equal(s, f) and not s.requires_grad


def test_imagination_shapes_and_no_world_model_change():
    wm, ac = ToyWorldModel(True), make_ac()
    before = [p.detach().clone() for p in wm.parameters()]
    traj = imagine(ac, wm, wm.starts(6))
    H = ac.config.imag_horizon
    assert traj.feat.shape == (6, H + 1, 3) and traj.action.shape == (6, H + 1, 2)
    assert traj.reward.shape == traj.cont.shape == (6, H + 1)
    assert not traj.feat.requires_grad and not traj.action.requires_grad
    out = imag_loss(ac, traj)
    sum(v.mean() for v in out.losses.values()).backward()
    assert all(g is None for g in grads_of(wm))
    assert all(torch.equal(p, b) for p, b in zip(wm.parameters(), before, strict=True))


def test_policy_loss_reaches_actor_only_and_value_loss_critic_only():
    wm, ac = ToyWorldModel(True), make_ac()
    out = imag_loss(ac, imagine(ac, wm, wm.starts(8)))
    out.losses["policy"].mean().backward(retain_graph=True)
    assert all(g is not None and g.abs().sum() > 0 for g in grads_of(ac.actor))
    assert all(g is None for g in grads_of(ac.critic) + grads_of(ac.slow_critic) + grads_of(wm))
    ac.zero_grad(set_to_none=True)
    out.losses["value"].mean().backward()
    # The zero-initialized output layer gets gradient first; the hidden layers get it through it later.
    assert ac.critic.net.net[-1].weight.grad.abs().sum() > 0
    assert all(g is None for g in grads_of(ac.actor) + grads_of(ac.slow_critic) + grads_of(wm))


def test_dynamics_gradient_reaches_actor_through_the_model_only():
    wm = ToyWorldModel(False)
    ac = make_ac("continuous", {"grad": "dynamics", "entropy": 0.0})
    out = imag_loss(ac, imagine(ac, wm, wm.starts(8)))
    out.losses["policy"].mean().backward()
    mean_weight = ac.actor.net.net[-1].weight.grad
    assert mean_weight is not None and mean_weight.abs().sum() > 0
    assert all(g is None for g in grads_of(ac.critic) + grads_of(ac.slow_critic) + grads_of(wm))
    # Discrete actions always use REINFORCE.
    assert make_ac("discrete", {"grad": "dynamics"}).grad == "reinforce"


def test_dynamics_policy_loss_keeps_the_baselines_gradient():
    """v1 backprop loss -w ((R - v) / S) as the 2023 code: the gradient into the imagined features
    flows through the lambda-return R and through the baseline v (checked against the hand-written
    loss; without the baseline the loss and its gradient differ)."""
    ac = make_ac("continuous", {"grad": "dynamics", "entropy": 0.0})
    torch.nn.init.normal_(ac.critic.net.net[-1].weight, std=0.5)  # a critic whose value varies
    N, H = 4, ac.config.imag_horizon
    g = torch.Generator().manual_seed(1)
    feat = torch.randn(N, H + 1, 3, generator=g, requires_grad=True)
    reward = 2.0 * feat[..., 2]
    cont = torch.rand(N, H + 1, generator=g)
    traj = Imagination(feat, torch.zeros(N, H + 1, 1), ac.actor.net(feat.detach()), reward, cont)
    out = ac.imag_loss(traj, lambda ret: RetStats(torch.tensor(0.0), torch.tensor(4.0)))  # S = 4
    (got,) = torch.autograd.grad(out.losses["policy"].sum(), feat, retain_graph=True)

    value = ac.critic(feat).mean()
    ret = lambda_return(reward, cont, value, ac.config.return_lambda)
    weight = torch.cumprod(cont, 1)[:, :-1]
    expected_loss = -weight * (ret - value[:, :-1]) / 4.0
    (expected,) = torch.autograd.grad(expected_loss.sum(), feat, retain_graph=True)
    torch.testing.assert_close(out.losses["policy"], expected_loss.detach())
    torch.testing.assert_close(got, expected)
    (without,) = torch.autograd.grad((-weight * ret / 4.0).sum(), feat)
    assert (without - expected).abs().max() > 1e-2
    assert all(p.grad is None for p in ac.critic.parameters())


def test_imag_cont_probability_or_mode_with_the_real_first_step():
    """v2: the continue probability; v1 (2023 code): its mode, and 1 - is_terminal at the start."""
    logits = torch.tensor([[-1.0, 2.0, -3.0, 0.5], [3.0, -0.1, 0.2, 4.0]])
    is_terminal = torch.tensor([True, False])
    torch.testing.assert_close(imag_cont(Bernoulli(logits), is_terminal, "prob"), torch.sigmoid(logits))
    expected = torch.tensor([[0.0, 1.0, 0.0, 1.0], [1.0, 0.0, 1.0, 1.0]])
    assert torch.equal(imag_cont(Bernoulli(logits), is_terminal, "mode"), expected)
    with pytest.raises(ValueError, match="imag_cont must be one of"):
        imag_cont(Bernoulli(logits), is_terminal, "sample")


def test_v1_terminal_start_weighs_nothing():
    """With c_0 = 0 (a start on a terminal step) every weight of that rollout is 0 (the 2023 code's
    weight = cumprod(gamma c) / gamma), so it adds no policy or value loss."""
    ac = make_ac(overrides={"imag_cont": "mode"}, cont_discount=False)
    gamma = 1 - 1 / ac.config.discount_horizon
    N, H = 2, ac.config.imag_horizon
    feat = torch.randn(N, H + 1, 3)
    cont = torch.ones(N, H + 1)
    cont[0, 0] = 0.0
    traj = Imagination(feat, torch.zeros(N, H + 1, 2), ac.actor.net(feat), torch.ones(N, H + 1), cont)
    out = imag_loss(ac, traj)
    for loss in out.losses.values():
        assert torch.all(loss[0] == 0) and torch.all(loss[1] != 0)
    weight = torch.tensor([gamma**t for t in range(H + 1)])
    np.testing.assert_allclose(out.metrics["imag_weight"].item(), weight.mean().item() / 2, rtol=1e-6)


def test_v1_actor_output_init_scale_is_one():
    """The 2023 code's `actor.outscale` is 1.0 (v2: 0.01): output weights of std 1 / sqrt(units)."""
    for presets, outscale in ((["size12m"], 0.01), (["v1", "size12m"], 1.0)):
        cfg = load_config(presets).actor_critic
        assert cfg.actor.outscale == outscale
        torch.manual_seed(0)
        out = Actor(512, ActionSpace("continuous", 6), cfg, "rms").net.net[-1].weight
        assert out.std().item() == pytest.approx(outscale / math.sqrt(256), rel=0.05)


@pytest.mark.parametrize(
    "kind, overrides", [("discrete", {}), ("continuous", {}), ("continuous", {"grad": "dynamics"})]
)
def test_reading_the_rollouts_actor_outputs_equals_running_the_actor_again(kind, overrides):
    """The losses read the actor's outputs from the rollout (`Acting`); the plain version runs the actor
    again on the imagined features. Same losses and gradients."""
    wm, ac = ToyWorldModel(kind == "discrete"), make_ac(kind, overrides)
    traj = imagine(ac, wm, wm.starts(16))
    assert traj.policy.shape[:2] == traj.feat.shape[:2] and traj.policy.requires_grad

    def losses_and_grads(t):
        ac.zero_grad(set_to_none=True)
        out = imag_loss(ac, t)
        sum(v.mean() for v in out.losses.values()).backward(retain_graph=True)
        return out.losses, {n: p.grad.clone() for n, p in ac.named_parameters() if p.grad is not None}

    read, read_grads = losses_and_grads(traj)
    again, again_grads = losses_and_grads(traj._replace(policy=ac.actor.net(traj.feat.detach())))
    for key in read:
        torch.testing.assert_close(read[key], again[key])
    assert read_grads.keys() == again_grads.keys() and any(k.startswith("actor") for k in read_grads)
    for name in read_grads:
        torch.testing.assert_close(read_grads[name], again_grads[name], msg=name)


def test_imag_loss_alignment_and_values():
    """With a zero critic, R_t is the lambda-return of the rewards alone; check every term by hand."""
    ac = make_ac(overrides={"entropy": 0.0})
    N, H = 3, ac.config.imag_horizon
    g = torch.Generator().manual_seed(0)
    feat = torch.randn(N, H + 1, 3, generator=g)
    action = nn.functional.one_hot(torch.randint(0, 2, (N, H + 1), generator=g), 2).float()
    reward = torch.randn(N, H + 1, generator=g)
    cont = torch.rand(N, H + 1, generator=g)
    out = imag_loss(ac, Imagination(feat, action, ac.actor.net(feat), reward, cont))
    expected_ret = lambda_return(reward, cont, torch.zeros(N, H + 1), ac.config.return_lambda)
    torch.testing.assert_close(out.ret, expected_ret)
    weight = torch.cumprod(cont, 1)[:, :-1]
    scale = max(
        1.0, 0.01 * (np.percentile(expected_ret.numpy(), 95) - np.percentile(expected_ret.numpy(), 5))
    )
    logpi = ac.actor(feat[:, :-1]).log_prob(action[:, :-1])
    torch.testing.assert_close(out.losses["policy"], -weight * logpi * expected_ret / scale)
    # Zero critic: uniform over bins, so the loss is -log(two-hot weights . uniform) = log(31) twice.
    torch.testing.assert_close(out.losses["value"], weight * 2 * math.log(31))
    np.testing.assert_allclose(out.metrics["ret_scale"].item(), scale, rtol=1e-6)


def test_v1_discount_multiplies_continuation():
    ac = make_ac(cont_discount=False)
    gamma = 1 - 1 / ac.config.discount_horizon
    N, H = 2, ac.config.imag_horizon
    cont = torch.full((N, H + 1), 0.5)
    reward = torch.ones(N, H + 1)
    feat = torch.randn(N, H + 1, 3)
    out = imag_loss(ac, Imagination(feat, torch.zeros(N, H + 1, 2), ac.actor.net(feat), reward, cont))
    torch.testing.assert_close(out.ret, lambda_return(reward, gamma * cont, torch.zeros(N, H + 1), 0.95))
    np.testing.assert_allclose(
        out.metrics["imag_weight"].item(),
        np.mean([(0.5 * gamma) ** t * 0.5 for t in range(H + 1)]),
        rtol=1e-6,
    )


def test_repval_loss_returns_stop_at_episode_ends():
    ac = make_ac(overrides={"return_lambda": 1.0})
    gamma = ac.gamma
    reward = torch.tensor([[0.0, 1.0, 2.0, 0.0, 4.0, 5.0]])
    is_last = torch.tensor([[False, False, True, False, False, False]])
    is_terminal = torch.tensor([[False, False, True, False, False, False]])
    boot = torch.tensor([[10.0, 20.0, 30.0, 40.0, 50.0, 60.0]])
    loss, ret = ac.repval_loss(torch.randn(1, 6, 3), reward, is_last, is_terminal, boot)
    # lambda 1 inside an episode; the terminal step adds its reward and nothing after it.
    expected = [
        1 + gamma * 2,
        2.0,
        0.0 + gamma * (4 + gamma * (5 + gamma * 60)),
        4 + gamma * (5 + gamma * 60),
        5 + gamma * 60,
    ]
    np.testing.assert_allclose(ret[0].numpy(), expected, rtol=1e-6)
    assert loss.shape == (1, 5) and loss[0, 2] == 0 and (loss[0, [0, 1, 3, 4]] > 0).all()
    # A truncation (last without terminal) bootstraps from the imagined return there.
    _, ret = ac.repval_loss(torch.randn(1, 6, 3), reward, is_last, torch.zeros_like(is_terminal), boot)
    np.testing.assert_allclose(ret[0, 1].item(), 2 + gamma * 30, rtol=1e-6)


def test_slow_critic_changes_only_by_its_ema():
    ac = make_ac()
    with torch.no_grad():
        for p in ac.critic.parameters():
            p.add_(torch.randn_like(p))
    slow_before = [p.clone() for p in ac.slow_critic.parameters()]
    fast = [p.detach().clone() for p in ac.critic.parameters()]
    ac.update_slow()
    for s, b, f in zip(ac.slow_critic.parameters(), slow_before, fast, strict=True):
        torch.testing.assert_close(s, 0.98 * b + 0.02 * f)


def imagined_return(ac, wm, starts):
    with torch.no_grad():
        return imagine(ac, wm, starts).reward[:, 1:].mean().item()


@pytest.mark.parametrize(
    "kind,overrides",
    [("discrete", {}), ("continuous", {}), ("continuous", {"grad": "dynamics"})],
    ids=["discrete", "continuous-reinforce", "continuous-dynamics"],
)
def test_actor_learns_in_imagination(kind, overrides):
    """The actor's imagined reward per step rises well above chance over a few hundred updates."""
    wm, ac = ToyWorldModel(kind == "discrete"), make_ac(kind, overrides)
    opt = torch.optim.Adam(ac.parameters(), lr=3e-3)
    starts = wm.starts(64)
    before = imagined_return(ac, wm, starts)
    for _ in range(250):
        out = imag_loss(ac, imagine(ac, wm, starts))
        opt.zero_grad()
        (out.losses["policy"].mean() + out.losses["value"].mean()).backward()
        opt.step()
        ac.retnorm.commit(out.retstats)
        ac.update_slow()
    after = imagined_return(ac, wm, starts)
    # Chance: 0.5 (discrete); 1 - 0.25 - 0.89^2 ~ 0 for the initial a ~ N(0, 0.89^2) (continuous). Best: ~1.
    assert before < 0.65 and after > 0.9, (before, after)
    # The critic tracks the returns it is trained on (returns of ~1 reward per step are well above 1).
    assert out.metrics["ret"] > 1.5 and out.metrics["value"] > 0.5 * out.metrics["ret"], out.metrics


def test_bad_config_errors():
    with pytest.raises(ValueError, match="actor_critic.grad must be one of"):
        make_ac(overrides={"grad": "sideways"})
