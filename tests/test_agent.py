"""The Agent: one full update, skip on non-finite, slow critic EMA, checkpoints, batched acting, report."""

import io

import numpy as np
import pytest
import torch

import agent.agent as agent_module
from agent import make_agent, resolve_device
from agent.actor_critic import Imagination, imag_cont
from configs.loader import load_config
from envs.spaces import ActionSpace, ArraySpec
from nets.onehot import Features
from util.transfers import to_floats
from world_model.rssm import RSSMState

B, T = 3, 6
OBS = {"vector": ArraySpec((4,), np.float32), "image": ArraySpec((16, 16, 3), np.uint8)}
DISCRETE = ActionSpace("discrete", 2, (2,))
CONTINUOUS = ActionSpace("continuous", 2)


def make(presets=("debug",), overrides=None, act_space=DISCRETE, obs_space=OBS, seed=0):
    torch.manual_seed(seed)
    return make_agent(load_config(list(presets), overrides or {}), obs_space, act_space)


def batch(act_space=DISCRETE, seed=0, obs_space=OBS):
    rng = np.random.default_rng(seed)
    data = {
        "reward": rng.normal(size=(B, T)).astype(np.float32),
        "is_first": np.zeros((B, T), bool),
        "is_last": np.zeros((B, T), bool),
        "is_terminal": np.zeros((B, T), bool),
    }
    if "vector" in obs_space:
        data["vector"] = rng.normal(size=(B, T, 4)).astype(np.float32)
    if "image" in obs_space:
        data["image"] = rng.integers(0, 256, (B, T, 16, 16, 3), dtype=np.uint8)
    if act_space.discrete:
        data["action"] = np.eye(act_space.dim, dtype=np.float32)[rng.integers(0, act_space.dim, (B, T))]
    else:
        data["action"] = rng.uniform(-1, 1, (B, T, act_space.dim)).astype(np.float32)
    data["is_first"][:, 0] = True
    data["is_last"][1, 3] = data["is_terminal"][1, 3] = True
    data["is_first"][1, 4] = True
    # The replay's stored latents (debug dims: deter 32, 4 x 4 categorical); with `replay.context` 1 the
    # first step is the context the other T - 1 start from.
    data["stepid"] = np.arange(B * T).reshape(B, T)
    data["context/deter"] = rng.uniform(-1, 1, (B, T, 32)).astype(np.float32)
    data["context/stoch"] = np.eye(4, dtype=np.float32)[rng.integers(0, 4, (B, T, 4))]
    return data


def train(agent, data, carry=None):
    """`Agent.train` with its metrics read back as python floats, as the loop logs them."""
    out = agent.train(data, carry)
    return out._replace(metrics=to_floats(out.metrics))


def params(agent):
    return {
        f"{name}.{k}": v.detach().clone()
        for name, m in (("wm", agent.wm), ("ac", agent.ac))
        for k, v in m.state_dict().items()
    }


def sampler(agent):
    """The policy `Agent.loss` imagines with: features -> a sampled action."""
    return lambda feat: agent.ac.actor(feat).sample()


def steps(agent):
    """Updates the (v2, LaProp) optimizer has applied."""
    return int(agent.optim.optimizers["all"].param_groups[0]["count"])


def serialized(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def test_train_reports_every_metric_and_updates_after_the_zero_lr_step():
    agent = make()
    before = params(agent)
    data = batch()
    state, replay, metrics = train(agent, data, None)
    # With replay context the next batch starts from its own stored latent: no carry; the trained steps'
    # posteriors go back to the replay, addressed by their stepid.
    assert state is None and replay.keys() == {"stepid", "context/deter", "context/stoch"}
    np.testing.assert_array_equal(replay["stepid"].numpy(), data["stepid"][:, 1:])
    assert replay["context/deter"].shape == (B, T - 1, 32) and not replay["context/deter"].requires_grad
    assert replay["context/stoch"].shape == (B, T - 1, 4, 4)
    expected = {
        "loss/policy", "loss/value", "loss/repval", "loss/rec", "loss/rew", "loss/con", "loss/dyn",
        "loss/rep", "loss/total",
        "ac/ret", "ac/adv", "ac/value", "ac/slow_value", "ac/entropy", "ac/entropy_normed", "ac/ret_scale",
        "ac/imag_reward", "ac/imag_cont", "grad_norm/model", "grad_norm/actor", "grad_norm/critic",
        "lr", "nonfinite",
    }  # fmt: skip
    assert expected <= set(metrics), expected - set(metrics)
    assert all(isinstance(v, float) and np.isfinite(v) for v in metrics.values())
    assert metrics["nonfinite"] == 0.0 and metrics["lr"] == 0.0 and steps(agent) == 1
    # The warm-up starts at lr 0 (as the reference's optax schedule): learned weights are unchanged,
    # the return normalizer (a running statistic) has moved.
    after = params(agent)
    assert all(torch.equal(after[k], v) for k, v in before.items() if "retnorm" not in k)
    state, _, metrics = train(agent, batch(seed=1), state)
    after = params(agent)
    changed = [k for k, v in before.items() if not torch.equal(after[k], v)]
    assert any(k.startswith("wm.") for k in changed) and any(k.startswith("ac.actor") for k in changed)
    assert any(k.startswith("ac.critic") for k in changed) and any(
        k.startswith("ac.slow_critic") for k in changed
    )
    assert steps(agent) == 2 and metrics["lr"] > 0


def test_nonfinite_batch_skips_the_update_entirely():
    agent = make()
    state, _, _ = train(agent, batch(), None)
    before, optim_before = params(agent), serialized(agent.optim.state_dict())
    bad = batch(seed=1)
    bad["vector"][0, 2, 1] = np.nan
    _, _, metrics = train(agent, bad, state)
    assert metrics["nonfinite"] == 1.0 and steps(agent) == 1
    after = params(agent)
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert serialized(agent.optim.state_dict()) == optim_before


def test_slow_critic_moves_only_by_its_ema_in_train():
    agent = make(overrides={"optim": {"warmup": 0}})
    slow = [p.detach().clone() for p in agent.ac.slow_critic.parameters()]
    agent.train(batch(), None)
    for s, old, fast in zip(
        agent.ac.slow_critic.parameters(), slow, agent.ac.critic.parameters(), strict=True
    ):
        torch.testing.assert_close(s, 0.98 * old + 0.02 * fast.detach())


def losses_of(agent, data):
    """Agent.loss's total and output, and the world model's unreduced terms it summed."""
    terms = {}
    original = agent.wm.loss

    def recording(*args):
        out = original(*args)
        terms.update(out.losses)
        return out

    agent.wm.loss = recording
    try:
        total, out = agent.loss(data, None)
    finally:
        del agent.wm.loss
    return total, out, terms


def test_loss_sums_every_scaled_term_once():
    """The total is the sum of each term's mean times its scale, over exactly the configured terms."""
    agent = make()
    data = agent.to_device(batch())
    total, out, wm_terms = losses_of(agent, data)
    assert set(agent.scales) == {"rec", "rew", "con", "dyn", "rep", "policy", "value", "repval"}
    expected = sum(agent.scales[k] * v.mean() for k, v in wm_terms.items()).detach()
    expected = expected + sum(
        agent.scales[k] * out.metrics[f"loss/{k}"] for k in ("policy", "value", "repval")
    )
    torch.testing.assert_close(total.detach(), expected)
    assert out.metrics["loss/total"] == total.detach()
    assert out.carry is None and out.replay["context/deter"].shape == (B, T - 1, 32)


def test_behavior_losses_leave_the_world_model_alone_except_repval():
    for repval_grad in (False, True):
        agent = make(overrides={"actor_critic": {"repval_grad": repval_grad}})
        data = agent.to_device(batch())
        wm = agent.wm.loss(data, None)
        start = agent.wm.starts(wm.states, grad=False)
        with torch.no_grad():
            feat, action = agent.wm.imagine(start, sampler(agent), 5)
            reward, cont = agent.wm.reward(feat).mean(), agent.wm.cont(feat).mean()
        traj = Imagination(feat, action, agent.ac.actor.net(feat), reward, cont)
        imag = agent.ac.imag_loss(traj, agent.ac.retnorm.update)
        assert imag.losses["policy"].shape == imag.losses["value"].shape == (B * T, 5)
        (imag.losses["policy"].mean() + imag.losses["value"].mean()).backward(retain_graph=True)
        assert all(p.grad is None for p in agent.wm.parameters())
        agent.ac.actor.zero_grad(set_to_none=True)
        repl = agent.wm.feat(wm.states)
        repl = repl if repval_grad else repl.detach()
        boot = imag.ret[:, 0].reshape(B, T)
        repval, _ = agent.ac.repval_loss(repl, data["reward"], data["is_last"], data["is_terminal"], boot)
        assert repval.shape == (B, T - 1)
        repval.mean().backward()
        wm_grads = [p.grad for p in agent.wm.rssm.parameters() if p.grad is not None]
        assert bool(wm_grads) == repval_grad
        assert all(p.grad is None for p in agent.ac.actor.parameters())


def test_v1_dynamics_backprop_reaches_the_actor_through_the_frozen_world_model():
    agent = make(("debug", "v1"), overrides={"actor_critic": {"entropy": 0.0}}, act_space=CONTINUOUS)
    # The reward and value heads start at exactly 0 (zero output layers), which has no gradient to
    # follow; give the reward head an output that depends on the state.
    with torch.no_grad():
        agent.wm.reward.mlp.net[-1].weight.normal_(0.0, 0.1)
    data = agent.to_device(batch(CONTINUOUS))
    agent.scales.update(value=0.0)  # the policy term alone
    for key in ("rec", "rew", "con", "dyn", "rep"):
        agent.scales[key] = 0.0
    total, out = agent.loss(data, None)
    assert "loss/repval" not in out.metrics
    total.backward()
    # The world-model and value terms are scaled by 0: a gradient there would come from the policy term.
    assert all(
        p.grad is None or not p.grad.any() for p in [*agent.wm.parameters(), *agent.ac.critic.parameters()]
    )
    # The only path from the actor's output to this loss is through the imagined dynamics.
    assert agent.ac.actor.net.net[-1].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("presets, kind", [(("debug",), "prob"), (("debug", "v1"), "mode")])
def test_imagined_continuation_per_variant(monkeypatch, presets, kind):
    """v2: the continue head's probability; v1 (2023 code): its mode, with 1 - is_terminal of each
    replayed start (B*T starts in (b t) order) at the first imagined step."""
    seen = []

    def spy(dist, is_terminal, cont_kind):
        seen.append((imag_cont(dist, is_terminal, cont_kind), cont_kind, dist.mean().detach()))
        return seen[-1][0]

    monkeypatch.setattr(agent_module, "imag_cont", spy)
    agent, data = make(presets, act_space=CONTINUOUS), batch(CONTINUOUS)
    agent.loss(agent.to_device(data), None)
    ((cont, cont_kind, prob),) = seen
    trained = T - agent.context  # v2 starts from a context step, v1 from the carry
    assert cont_kind == kind and cont.shape == (B * trained, agent.ac_config.imag_horizon + 1)
    if kind == "prob":
        torch.testing.assert_close(cont, prob)
        return
    assert torch.equal(cont[:, 1:], (prob[:, 1:] > 0.5).float())
    first = 1.0 - torch.as_tensor(data["is_terminal"]).flatten().float()
    assert first[1 * T + 3] == 0 and torch.equal(cont[:, 0], first)


def test_state_dict_round_trip_through_weights_only_load():
    agent = make(overrides={"optim": {"warmup": 0}})
    state, _, _ = train(agent, batch(), None)
    agent.train(batch(seed=1), state)
    buf = io.BytesIO()
    torch.save(agent.state_dict(), buf)
    buf.seek(0)
    other = make(seed=1)
    other.load_state_dict(torch.load(buf, weights_only=True))
    assert steps(other) == 2
    theirs = params(other)
    assert all(torch.equal(theirs[k], v) for k, v in params(agent).items())
    assert other.ac.retnorm.hi.item() == agent.ac.retnorm.hi.item() != 0.0
    # The next update is identical too (same seed for the samples).
    for a in (agent, other):
        torch.manual_seed(5)
        a.train(batch(seed=2), None)
    theirs = params(other)
    assert all(torch.equal(theirs[k], v) for k, v in params(agent).items())


def test_policy_batched_over_envs_with_resets():
    agent = make()
    data = batch()
    obs = {k: v[:, 0] for k, v in data.items()}
    action, state = agent.policy(obs, None)
    assert action.shape == (B, 2) and action.dtype == np.float32
    assert np.array_equal(action.sum(-1), np.ones(B)) and set(np.unique(action)) <= {0.0, 1.0}
    obs = {k: v[:, 1] for k, v in data.items()}
    obs["is_first"] = np.array([False, True, False])
    _, state2 = agent.policy(obs, state, sample=False)
    # The deterministic state after a reset depends on nothing before it: equal to a fresh start's.
    _, fresh = agent.policy({k: v[1:2] for k, v in obs.items()}, None, sample=False)
    torch.testing.assert_close(state2.latent.deter[1], fresh.latent.deter[0])
    # Envs that did not reset kept their own history.
    _, fresh_all = agent.policy({**obs, "is_first": np.ones(B, bool)}, None, sample=False)
    for i in (0, 2):
        assert not torch.allclose(state2.latent.deter[i], fresh_all.latent.deter[i])


def fix_policy(agent, probs):
    """Make the actor's output layer ignore the features: logits log(probs) in every state."""
    out = agent.ac.actor.net.net[-1]
    with torch.no_grad():
        out.weight.zero_()
        out.bias.copy_(torch.log(torch.tensor(probs)))


def test_policy_samples_unless_asked_for_the_mode():
    agent = make()
    fix_policy(agent, [0.8, 0.2])
    N = 4000
    obs = {k: np.zeros((N, *s.shape), s.dtype) for k, s in OBS.items()} | {"is_first": np.ones(N, bool)}
    action, _ = agent.policy(obs, None)
    # The policy's probabilities with the 1% uniform mix: 0.99 * 0.8 + 0.01 * 0.5 = 0.797.
    expected = 0.99 * 0.8 + 0.005
    assert abs(action[:, 0].mean() - expected) < 4 * (expected * (1 - expected) / N) ** 0.5
    mode, _ = agent.policy(obs, None, sample=False)
    assert (mode[:, 0] == 1).all()


def test_continuous_policy_mode_is_taken_at_the_new_latent():
    agent = make(act_space=CONTINUOUS)
    obs = {k: v[:, 0] for k, v in batch(CONTINUOUS).items()}
    action, state = agent.policy(obs, None)
    assert action.shape == (B, 2) and np.abs(action).max() <= 1.0
    action, state = agent.policy(obs, None, sample=False)
    with torch.no_grad():
        mode = agent.ac.actor(agent.wm.feat(state.latent)).mode()
    np.testing.assert_array_equal(action, mode.clamp(-1, 1).numpy())


@pytest.mark.parametrize(
    "presets,act_space",
    [
        (("debug", "v1"), CONTINUOUS),
        (("debug", "v1"), DISCRETE),
        (("debug",), ActionSpace("multidiscrete", 5, (2, 3))),
    ],
    ids=["v1-continuous-dynamics", "v1-discrete", "v2-multidiscrete"],
)
def test_variants_train(presets, act_space):
    agent = make(presets, act_space=act_space)
    state = None
    for seed in range(2):
        state, _, metrics = train(agent, batch(act_space, seed), state)
    assert metrics["nonfinite"] == 0.0 and all(np.isfinite(v) for v in metrics.values())
    if "v1" in presets:
        assert "loss/repval" not in metrics and set(agent.optim.optimizers) == {"model", "actor", "critic"}


def test_bfloat16_autocast_trains_and_acts():
    agent = make(overrides={"run": {"precision": "bfloat16"}})
    state, _, metrics = train(agent, batch(), None)
    assert metrics["nonfinite"] == 0.0 and np.isfinite(metrics["loss/total"])
    action, pstate = agent.policy({k: v[:, 0] for k, v in batch().items()}, None)
    assert pstate.latent.deter.dtype == torch.float32 and action.shape == (B, 2)


def test_report_openloop_video_and_errors():
    agent = make()
    out = agent.report(batch())
    assert out["openloop/image"].shape == (T, 3 * 16, B * 16, 3) and out["openloop/image"].dtype == np.uint8
    assert out["openloop/image_mse"].shape == (T,) and out["openloop/vector_mse"].shape == (T,)
    # The top row is the data itself.
    np.testing.assert_array_equal(out["openloop/image"][:, :16, :16], batch()["image"][0])
    vector_only = make(obs_space={"vector": OBS["vector"]})
    out = vector_only.report(batch(obs_space={"vector": OBS["vector"]}))
    assert set(out) == {"openloop/vector_mse", "openloop/vector_mse_imagined"}
    mse = out["openloop/vector_mse"]
    assert np.all(np.isfinite(mse)) and out["openloop/vector_mse_imagined"].shape == ()
    np.testing.assert_allclose(out["openloop/vector_mse_imagined"], mse[5:].mean(), rtol=1e-6)


def test_config_errors():
    with pytest.raises(ValueError, match="run.precision must be one of"):
        make(overrides={"run": {"precision": "float16"}})
    with pytest.raises(ValueError, match="run.device"):
        resolve_device("tpu")
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.slow
def test_a_compiled_update_gives_the_updates_of_an_eager_one(monkeypatch):
    """run.compile: the same losses and weights as the eager agent over a few updates (float32 rounding),
    with the heads and the recurrent steps compiled. Compiled code draws its own random numbers unless
    told to take torch's (`fallback_random`), as it is here to compare the same samples."""
    import torch._inductor.config

    monkeypatch.setattr(torch._inductor.config, "fallback_random", True)
    eager, compiled = make(), make(overrides={"run": {"compile": True}})
    compiled.load_state_dict(eager.state_dict())
    assert (
        compiled.ac.critic.net._compiled_call_impl is not None
        and eager.ac.critic.net._compiled_call_impl is None
    )
    rssm = compiled.wm.rssm
    assert "_obs_step" in vars(rssm) and "img_step" in vars(rssm) and "img_step" not in vars(eager.wm.rssm)
    assert compiled.state_dict()["actor_critic"].keys() == eager.state_dict()["actor_critic"].keys()
    for step in range(3):
        torch.manual_seed(step)
        _, _, expected = train(eager, batch(seed=step))
        torch.manual_seed(step)
        _, _, got = train(compiled, batch(seed=step))
        for key in ("loss/rec", "loss/dyn", "loss/policy", "loss/value", "loss/total"):
            assert got[key] == pytest.approx(expected[key], rel=1e-4, abs=1e-5), key
    for module in ("wm", "ac"):
        pairs = zip(
            getattr(eager, module).named_parameters(), getattr(compiled, module).parameters(), strict=True
        )
        for (name, a), b in pairs:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=f"{module}.{name}")


def imagine_from_a_batch(agent, act_space, grad):
    wm = agent.wm.loss(agent.to_device(batch(act_space)), None)
    start = agent.wm.starts(wm.states, grad)
    feat, action = agent.wm.imagine(start, sampler(agent), 5)
    return start, feat, action


def test_dynamics_backprop_keeps_dense_imagined_features():
    """The gradient reaches the latents through the dynamics, so they stay dense."""
    agent = make(overrides={"actor_critic": {"grad": "dynamics"}}, act_space=CONTINUOUS)
    _, feat, _ = imagine_from_a_batch(agent, CONTINUOUS, grad=True)
    assert isinstance(feat, torch.Tensor) and feat.requires_grad


def test_reinforce_imagines_one_hot_features_with_the_dense_losses_and_gradients():
    """REINFORCE imagines categorical features as one-hot indices, which every head's first layer reads
    with a gather; the losses and gradients are those of the dense features (float32 rounding)."""
    agent = make()
    with torch.no_grad():
        start, feat, action = imagine_from_a_batch(agent, DISCRETE, grad=False)
    assert isinstance(feat, Features)
    dense = feat.to_dense()
    torch.testing.assert_close(dense[:, 0], torch.cat([start.deter, start.stoch.to_dense()], -1))

    def losses_and_grads(f):
        agent.ac.zero_grad(set_to_none=True)
        with torch.no_grad():
            reward, cont = agent.wm.reward(f).mean(), agent.wm.cont(f).mean()
        traj = Imagination(f, action, agent.ac.actor.net(f), reward, cont)
        out = agent.ac.imag_loss(traj, agent.ac.retnorm.update)
        sum(v.mean() for v in out.losses.values()).backward()
        grads = {n: p.grad.clone() for n, p in agent.ac.named_parameters() if p.grad is not None}
        return {k: v.detach() for k, v in out.losses.items()}, grads

    one_hot, one_hot_grads = losses_and_grads(feat)
    again, again_grads = losses_and_grads(dense)
    torch.testing.assert_close(one_hot, again)
    assert one_hot_grads.keys() == again_grads.keys() and len(one_hot_grads) > 0
    for name in one_hot_grads:
        torch.testing.assert_close(one_hot_grads[name], again_grads[name])


def test_a_window_starts_from_the_latent_stored_at_its_context_step():
    """With replay context the first trained step's h_1 = f(h_0, z_0, a_0) comes from the latent the replay
    stored at the context step and the real action taken there, not from the carry or the zero state."""
    agent = make()
    data = agent.to_device(batch())
    with torch.no_grad():
        _, out = agent.loss(data, agent.wm.initial(B))  # a carry given with context is not used
        stored = RSSMState(data["context/deter"][:, 0], data["context/stoch"][:, 0])
        expected = agent.wm.rssm._dynamics(stored, data["action"][:, 0])
        from_zero = agent.wm.rssm._dynamics(agent.wm.initial(B), torch.zeros_like(data["action"][:, 0]))
    assert not data["is_first"][:, 1].any()
    torch.testing.assert_close(out.replay["context/deter"][:, 0], expected, rtol=0, atol=1e-6)
    assert (out.replay["context/deter"][:, 0] - from_zero).abs().max() > 0.01
    with pytest.raises(KeyError, match="context/deter"):
        agent.loss({k: v for k, v in data.items() if k != "context/deter"}, None)


def test_compiling_leaves_compilation_errors_loud(monkeypatch):
    """run.compile must not turn on dynamo's process-wide `suppress_errors`: a failure would then run the
    module eagerly, at a speed other than the one asked for, with only a log line to say so."""
    import torch._dynamo

    monkeypatch.setattr(torch._dynamo.config, "suppress_errors", False)  # restored after the test
    make(overrides={"run": {"compile": True}})
    assert torch._dynamo.config.suppress_errors is False
    # ...unless the run asks for the fall back.
    make(overrides={"run": {"compile": True, "compile_fallback": True}})
    assert torch._dynamo.config.suppress_errors is True


def test_bounds_of_a_training_batch_start_where_its_loss_does():
    agent, data = make(), batch()
    K = 8
    torch.manual_seed(0)
    bounds = agent.bounds(data, None, K)
    assert set(bounds) == {f"bound/{n}" for n in ("elbo", "iw", "smc", "iw_gap", "smc_gap")}
    # The same draws from the window after the context step, started from the latent stored there:
    # per step over the B x (T - 1) trained steps.
    window, start, prev_action = agent.window_start(agent.to_device(data), None)
    torch.manual_seed(0)
    iw = agent.wm.log_likelihood_bound(window, K, start, prev_action)
    smc = agent.wm.particle_bound(window, K, state=start, prev_action=prev_action)
    assert bounds["bound/iw"] == pytest.approx(float(iw.iwae.sum()) / (B * (T - 1)))
    assert bounds["bound/smc"] == pytest.approx(float(smc.smc.sum()) / (B * (T - 1)))
    assert bounds["bound/smc_gap"] == pytest.approx(bounds["bound/smc"] - bounds["bound/elbo"])
    assert bounds["bound/iw_gap"] > 0 and bounds["bound/smc_gap"] > 0  # K = 8 beats the ELBO here
    # Another stored latent is another start: other bounds.
    moved = {**data, "context/deter": data["context/deter"] + 0.5}
    torch.manual_seed(0)
    assert agent.bounds(moved, None, K)["bound/elbo"] != pytest.approx(bounds["bound/elbo"])
