"""The training run: loop schedule, resume (exact, after SIGKILL), signals, faults, the real entry point.

Loop-level tests use a stub env and agent with the real replay (fast); end-to-end tests run the real
parts on the `debug` preset.
"""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import train
from agent.agent import TrainOutput
from configs.loader import load_config
from envs.spaces import ActionSpace, ArraySpec
from run.checkpoint import Checkpointer, load
from run.loop import NonFiniteError
from run.stop import StopFlag
from world_model.rssm import RSSMState

ROOT = Path(__file__).resolve().parents[1]
QUIET = {"logger": {"terminal": False, "wandb": {"mode": "disabled"}}}


def merge(*trees: dict) -> dict:
    out: dict = {}
    for tree in trees:
        for key, value in tree.items():
            out[key] = merge(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def config_for(logdir, **run) -> object:
    """The debug config, quiet, train ratio 16 (0.5 updates per step), with the given run.* overrides."""
    return load_config(["debug"], merge(QUIET, {"logdir": str(logdir), "run": {"train_ratio": 16, **run}}))


def rows(logdir) -> list[dict]:
    return [json.loads(line) for line in (Path(logdir) / "metrics.jsonl").read_text().splitlines()]


# --- stubs ------------------------------------------------------------------------------------------


class StubEnv:
    """N envs with a 2-vector observation (and an 8x8 image when `image`), episodes of `length` steps,
    reward 1 per step; auto-resets like VecEnv (the step after `is_last` is an `is_first`)."""

    def __init__(self, num_envs=1, length=10, image=False):
        self.num_envs, self.length, self.image = num_envs, length, image
        self.obs_space = {"vector": ArraySpec((2,), np.float32)}
        if image:
            self.obs_space["image"] = ArraySpec((8, 8, 3), np.uint8)
        self.act_space = ActionSpace("discrete", 2, (2,))
        self.t = np.zeros(num_envs, int)
        self.closed = False

    def _obs(self, first):
        N = self.num_envs
        step = {
            "vector": np.stack([self.t, -self.t], -1).astype(np.float32),
            "reward": np.where(first, 0.0, 1.0).astype(np.float32),
            "is_first": first,
            "is_last": self.t >= self.length,
            "is_terminal": np.zeros(N, bool),
        }
        if self.image:
            step["image"] = np.full((N, 8, 8, 3), self.t[:, None, None, None] * 10, np.uint8)
        return step

    def reset(self):
        self.t[:] = 0
        return self._obs(np.ones(self.num_envs, bool))

    def step(self, action):
        last = self.t >= self.length
        self.t = np.where(last, 0, self.t + 1)
        return self._obs(last)

    def close(self):
        self.closed = True


class StubAgent:
    """A linear 'model' trained by SGD on the replayed vector; `nonfinite_from` makes updates non-finite."""

    def __init__(self, nonfinite_from=None, video=False):
        self.device = torch.device("cpu")
        self.w = torch.zeros(2, requires_grad=True)
        self.optim = torch.optim.SGD([self.w], lr=0.01)
        self.nonfinite_from, self.video, self.calls = nonfinite_from, video, 0

    def initial_policy_state(self, num_envs):
        return torch.zeros(num_envs)

    def policy(self, obs, state, sample=True):
        action = np.zeros((len(obs["is_first"]), 2), np.float32)
        action[:, 0] = 1
        return action, state + 1

    def train(self, batch, state):
        self.calls += 1
        loss = ((batch["vector"] @ self.w - batch["reward"]) ** 2).mean()
        if self.nonfinite_from is not None and self.calls >= self.nonfinite_from:
            return TrainOutput(state, {}, {"loss/total": float("nan"), "nonfinite": 1.0})
        self.optim.zero_grad()
        loss.backward()
        self.optim.step()
        metrics = {"loss/total": loss.item(), "elbo": -loss.item(), "rate": 0.1, "distortion": 1.0}
        return TrainOutput(state, {}, metrics)

    @staticmethod
    def latent_arrays(state):
        return {}  # the replay stores the initial (zero) latent

    def report(self, batch):
        out = {"openloop/vector_mse": np.float32(0.5)}
        if self.video:
            out["openloop/image"] = np.zeros((4, 8, 8, 3), np.uint8)
        return out

    @staticmethod
    def carry_state(carry):
        return carry

    @staticmethod
    def load_carry(state):
        return state

    def state_dict(self):
        return {"w": self.w.detach().clone(), "optim": self.optim.state_dict()}

    def load_state_dict(self, state):
        with torch.no_grad():
            self.w.copy_(state["w"])
        self.optim.load_state_dict(state["optim"])


def stub_factories(agent=None, image=False):
    return train.Factories(
        make_env=lambda config, seed, num_envs=None: StubEnv(num_envs or 1, image=image),
        make_agent=lambda config, obs_space, act_space: agent or StubAgent(),
    )


# --- the loop with stubs ----------------------------------------------------------------------------


def test_loop_counts_steps_updates_frames_and_follows_the_ratio(tmp_path):
    # debug: B x T = 4 x 8 = 32, prefill 64; ratio 16 -> 0.5 updates per policy step after prefill.
    changes = {"logdir": str(tmp_path), "env": {"action_repeat": 2}, "run": {"steps": 100, "train_ratio": 16}}
    config = load_config(["debug"], merge(QUIET, changes))
    agent = StubAgent()
    loop = train.build(config, stub_factories(agent=agent))
    counters = loop.run(StopFlag())
    assert counters.step == 100 and counters.updates == agent.calls == (100 - 64) // 2
    assert counters.episodes == 100 // 11  # 10 transitions + the first step per episode
    last = rows(tmp_path)[-1]
    assert last["step"] == 100 and last["frames"] == 200 and last["updates"] == 18
    keys = set().union(*rows(tmp_path))
    assert {"train/loss/total", "train/elbo", "train/rate", "train/distortion"} <= keys
    assert Checkpointer(tmp_path / "checkpoints").latest().name == "ckpt-000000100.pt"


def test_bound_metrics_every_n_updates_on_the_updates_batch_and_carry(tmp_path):
    changes = {"logdir": str(tmp_path), "run": {"steps": 100, "train_ratio": 16, "bound_every": 4}}
    config = load_config(["debug"], merge(QUIET, changes, {"run": {"bound_particles": 5}}))
    agent, calls = StubAgent(), []
    train_batches = []
    update = agent.train
    # The carry after update n is n, so update n starts from carry n - 1.
    agent.train = lambda batch, state: (
        train_batches.append(batch) or update(batch, state)._replace(carry=len(train_batches))
    )
    agent.bounds = lambda batch, carry, k: calls.append((batch, carry, k)) or {"bound/smc": -1.5}
    loop = train.build(config, stub_factories(agent=agent))
    counters = loop.run(StopFlag())
    assert counters.updates == 18 and len(calls) == 18 // 4
    for i, (batch, carry, k) in enumerate(calls):  # updates 4, 8, 12, 16: their batches and carries
        assert batch is train_batches[4 * i + 3] and carry == 4 * i + 3 and k == 5
    logged = [r["train/bound/smc"] for r in rows(tmp_path) if "train/bound/smc" in r]
    assert logged and all(v == -1.5 for v in logged)
    assert config.run.bound_every and load_config(["debug"], {}).run.bound_every == 0  # off by default


def test_eval_and_videos_with_an_image_env(tmp_path):
    config = config_for(tmp_path, steps=100, prefill=20, eval_every=50, eval_episodes=3, video_every=20)
    loop = train.build(config, stub_factories(agent=StubAgent(video=True), image=True))
    loop.run(StopFlag())
    evals = [r for r in rows(tmp_path) if "eval/return" in r]
    assert [r["step"] for r in evals] == [50, 100]
    assert all(r["eval/return"] == 10.0 and r["eval/length"] == 10.0 for r in evals)
    # Equal returns: zero spread and a confidence interval that collapses onto the mean.
    assert all(r["eval/return_std"] == 0.0 and r["eval/return_ci95_low"] == 10.0 for r in evals)
    videos = sorted(p.name for p in (tmp_path / "videos").iterdir())
    assert any(n.startswith("eval_policy_") for n in videos), videos
    assert any(n.startswith("report_openloop_image_") and n.endswith(".mp4") for n in videos)
    assert any(n.startswith("policy_episode_") for n in videos)
    assert any("report/openloop/vector_mse" in r for r in rows(tmp_path))


@pytest.mark.parametrize("prefill", [0, 64])
def test_training_starts_as_the_reference_or_after_a_random_prefill(tmp_path, prefill):
    # debug: B x T = 4 x 8; the replay is ready with 32 windows of 1 + 8 steps (a context step first):
    # after 40 steps of one env.
    agent = StubAgent()  # its policy always takes action 0; the random prefill takes both
    loop = train.build(config_for(tmp_path, steps=100, prefill=prefill), stub_factories(agent=agent))
    acted, updated = [], []
    policy, update = agent.policy, agent.train
    agent.policy = lambda obs, state, sample=True: acted.append(loop.counters.step) or policy(obs, state)
    agent.train = lambda batch, state: updated.append(loop.counters.step) or update(batch, state)
    loop.run(StopFlag())
    actions = loop.parts.replay.stream_data(0)["action"][:, 0]  # the action taken at each step
    if prefill == 0:  # the untrained policy acts from the first step; the first update once ready
        assert acted == list(range(100)) and (actions == 1).all()
        assert updated[0] == 40 and len(updated) == 1 + (100 - 40) // 2
    else:  # random actions for 64 steps, then the policy; the first update at once
        assert acted == list(range(64, 100)) and 0 < actions[:64].mean() < 1 and (actions[64:] == 1).all()
        assert updated[0] == 65 and len(updated) == 1 + (100 - 65) // 2


class RecordingEnv(StubEnv):
    """A StubEnv that keeps the actions it is given: [N, A] per step."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.actions = []

    def step(self, action):
        self.actions.append(np.array(action))
        return super().step(action)


@pytest.mark.parametrize("eval_policy", ["sample", "mode"])
def test_evaluation_samples_actions_unless_configured_to_take_the_mode(tmp_path, eval_policy):
    config = config_for(tmp_path, steps=0, eval_every=1000, eval_episodes=40, eval_policy=eval_policy)
    make_env = lambda config, seed, num_envs=None: RecordingEnv(num_envs or 1)  # noqa: E731
    loop = train.build(config, train.Factories(make_env=make_env))
    head = loop.agent.ac.actor.net.net[-1]  # the real agent's policy, made to ignore the state
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.log(torch.tensor([0.7, 0.3])))
    loop.evaluate()
    actions = np.concatenate(loop.parts.eval_env.actions)  # 40 episodes of 11 steps
    assert len(actions) == 440
    if eval_policy == "mode":
        assert (actions[:, 0] == 1).all()
    else:  # frequencies of samples: 0.99 * 0.7 + 0.01 * 0.5, within 4 standard errors
        expected = 0.99 * 0.7 + 0.005
        assert abs(actions[:, 0].mean() - expected) < 4 * (expected * (1 - expected) / 440) ** 0.5


def test_nonfinite_updates_are_skipped_then_stop_the_run(tmp_path):
    config = config_for(tmp_path, steps=300, max_nonfinite=5, save_every_steps=80)
    agent = StubAgent(nonfinite_from=40)  # updates start after 64 prefill steps, 1 per 2 steps
    loop = train.build(config, stub_factories(agent=agent))
    with pytest.raises(NonFiniteError) as info:
        loop.run(StopFlag())
    message = str(info.value)
    assert "5 updates in a row with a non-finite loss" in message and "run.max_nonfinite = 5" in message
    assert "ckpt-000000080.pt" in message
    assert loop.counters.updates == 39 and loop.counters.nonfinite == 5
    assert [p.name for p in loop.parts.checkpointer.paths()] == ["ckpt-000000080.pt"]


def test_a_diverged_run_flushes_its_metrics_and_keeps_the_last_good_checkpoint(tmp_path):
    config = config_for(tmp_path, steps=300, max_nonfinite=3, save_every_steps=70, log_every=1e9)
    with pytest.raises(NonFiniteError):
        train.train(config, stub_factories(agent=StubAgent(nonfinite_from=10)))
    last = rows(tmp_path)[-1]
    assert last["nonfinite"] == 3 and last["updates"] == 9 and np.isnan(last["train/loss/total"])
    assert load(tmp_path)["step"] == 70


def test_a_nonfinite_update_resets_the_count_when_followed_by_finite_ones(tmp_path):
    config = config_for(tmp_path, steps=120, max_nonfinite=2)
    agent = StubAgent()
    flags = iter([0, 1, 0, 1, 0] + [0] * 1000)
    real_train = agent.train

    def train_sometimes_nan(batch, state):
        out = real_train(batch, state)
        return out._replace(metrics={**out.metrics, "nonfinite": float(next(flags))})

    agent.train = train_sometimes_nan
    loop = train.build(config, stub_factories(agent=agent))
    counters = loop.run(StopFlag())
    assert counters.step == 120 and counters.nonfinite == 2 and counters.nonfinite_run == 0


def test_stop_request_saves_a_final_checkpoint(tmp_path):
    config = config_for(tmp_path, steps=10_000, save_every_steps=0, save_every=1e9)
    loop = train.build(config, stub_factories())
    stop = StopFlag()
    original = loop.parts.replay.add

    def add_then_stop(step):
        original(step)
        if len(loop.parts.replay) == 77:
            stop.signum = signal.SIGTERM

    loop.parts.replay.add = add_then_stop
    loop.run(stop)
    assert loop.counters.step == 77
    assert load(tmp_path)["step"] == 77


def test_stop_flag_handles_signals_and_restores_handlers():
    before = signal.getsignal(signal.SIGTERM)
    with StopFlag() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.exit_status() == 0
        stop.signum = None
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.exit_status() == 130
        with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C interrupts at once
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) == before


def test_resume_with_stubs_continues_counters_replay_and_schedules(tmp_path):
    first = train.build(config_for(tmp_path, steps=100), stub_factories())
    first.run(StopFlag())
    agent = StubAgent()
    second = train.build(config_for(tmp_path, steps=150), stub_factories(agent=agent))
    assert second.counters.step == 100 and len(second.parts.replay) == 100
    assert torch.equal(agent.w, first.agent.w)
    second.run(StopFlag())
    assert second.counters.step == 150 and second.counters.updates == (150 - 64) // 2
    assert [r["step"] for r in rows(tmp_path)][-1] == 150


def test_allocator_setting_applies_to_cpu_runs_only_and_is_announced(monkeypatch, capsys):
    import run.host

    applied = []
    monkeypatch.setattr(run.host, "keep_freed_memory", lambda: applied.append(True) or True)

    def setup(**changes):
        train.setup_host(load_config(["debug"], {"run": {"threads": 0, **changes}}))

    setup(device="cpu")
    assert applied == [True] and capsys.readouterr().out == train.KEEP_FREED_MEMORY_NOTE + "\n"
    setup(device="cpu", keep_freed_memory=False)
    monkeypatch.setattr("agent.resolve_device", lambda name: torch.device("cuda"))
    setup(device="cuda")
    assert applied == [True] and capsys.readouterr().out == ""


def test_unwritable_logdir_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    status = train.main(["--configs", "debug", "--logdir", str(tmp_path / "file" / "run")])
    assert status == 1
    assert "train.py: error: cannot write to logdir" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--replay.capacity", "10"], "replay.chunk_size=64 exceeds the 10 steps each stream holds"),
        (["--run.device", "cuda"], "run.device is 'cuda' but CUDA is not available"),
        (["--env.id", "NoSuchEnv-v0"], "unknown env id 'NoSuchEnv-v0'"),
    ],
)
def test_values_the_schema_cannot_check_exit_2_before_anything_is_written(
    tmp_path, capsys, monkeypatch, args, message
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    status = train.main(["--configs", "debug", "--logdir", str(tmp_path / "run"), *args])
    err = capsys.readouterr().err
    assert status == 2 and err.startswith("train.py: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_an_io_error_mid_run_ends_in_one_line_after_a_final_checkpoint(tmp_path):
    """The replay's disk fills at step 100: the run ends with RunIOError (main: one line, exit 1) and a
    checkpoint of that step, though the replay cannot be flushed."""

    def failing_replay(config, env, logdir, rank=0, world_size=1):
        replay = train.make_replay(config, env, logdir, rank, world_size)
        add = replay.add

        def add_until_full(step):
            if len(replay) >= 100:
                raise OSError(28, "No space left on device", str(logdir / "replay"))
            add(step)

        replay.add = add_until_full
        return replay

    config = config_for(tmp_path, steps=300)
    with pytest.raises(train.RunIOError, match="No space left on device.*final checkpoint at step 100"):
        train.train(config, stub_factories()._replace(make_replay=failing_replay))
    assert Checkpointer(tmp_path / "checkpoints").latest().name == "ckpt-000000100.pt"
    assert not (tmp_path / ".lock").read_text()  # the lock is released


NAN_ENV = """
import gymnasium as gym
import numpy as np


class NanAt(gym.Env):
    observation_space = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(3, np.float32), {}

    def step(self, action):
        self.t += 1
        obs = np.full(3, np.nan if self.t == 40 else 0.0, np.float32)
        return obs, 0.0, False, self.t >= 50, {}


gym.register("NanAt40-v0", entry_point=NanAt)
"""


def test_a_nonfinite_observation_stops_the_run_in_one_line_naming_env_key_and_step(
    tmp_path, capsys, monkeypatch
):
    """Before: the NaN was stored and the run stopped 10 updates later on a non-finite loss, naming
    neither the env nor the key."""
    (tmp_path / "nan_env.py").write_text(NAN_ENV)
    monkeypatch.syspath_prepend(str(tmp_path))
    args = ["--configs", "debug", "--env.id", "nan_env:NanAt40-v0", "--logdir", str(tmp_path / "run"), *FAST]
    args += ["--logger.terminal", "false"]
    status = train.main(args)
    err = capsys.readouterr().err
    assert status == 1 and err.count("\n") == 1, err
    assert "nan_env:NanAt40-v0" in err and "'vector'" in err and "at step 40" in err and "not stored" in err


# --- the real parts on the debug preset -------------------------------------------------------------

FAST = ["--run.train_ratio", "16", "--logger.wandb.mode", "disabled"]


SUBPROCESS_ENV = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"}


def train_command(logdir, *args):
    return [
        sys.executable,
        str(ROOT / "train.py"),
        "--configs",
        "debug",
        "--logdir",
        str(logdir),
        *FAST,
        *args,
    ]


def run_train(logdir, *args, timeout=120):
    command = train_command(logdir, *args)
    return subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=SUBPROCESS_ENV
    )


def test_entry_point_on_debug_writes_config_metrics_checkpoint_video_and_plots(tmp_path):
    logdir = tmp_path / "run"
    pixels = ["--env.obs", "pixels", "--run.video_every", "60", "--logger.video_format", "gif"]
    result = run_train(logdir, "--run.steps", "120", *pixels)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (logdir / "config.yaml").exists()
    keys = set().union(*rows(logdir))
    assert {"train/loss/total", "train/elbo", "train/rate", "train/distortion", "frames", "updates"} <= keys
    assert Checkpointer(logdir / "checkpoints").latest().name == "ckpt-000000120.pt"
    assert list((logdir / "videos").glob("report_openloop_image_*.gif"))
    assert (logdir / "plots" / "elbo.png").exists()
    assert f"run folder: {logdir}" in result.stdout and "plots: " in result.stdout
    assert train.KEEP_FREED_MEMORY_NOTE in result.stdout.splitlines()  # a CPU run says it tunes glibc


def test_second_invocation_resumes_counters_replay_and_optimizer(tmp_path):
    logdir = tmp_path / "run"
    assert train.main(train_command(logdir, "--logger.terminal", "false", "--run.steps", "100")[2:]) == 0
    saved = load(logdir)
    config = load_config(base=logdir / "config.yaml")  # how the same command on the logdir starts
    loop = train.build(dataclasses.replace(config, run=dataclasses.replace(config.run, steps=140)))
    assert loop.counters == type(loop.counters)(**saved["loop"]["counters"]) and loop.counters.step == 100
    assert len(loop.parts.replay) == 100
    optim = loop.agent.state_dict()["optim"]
    assert_same(optim, saved["agent"]["optim"])
    # Every update the loop counted is one optimizer step the restored optimizer has taken.
    assert loop.counters.updates == saved["loop"]["counters"]["updates"] > 0
    assert optimizer_steps(optim) == {loop.counters.updates}
    loop.run(StopFlag())
    loop.parts.logger.close()
    assert loop.counters.step == 140 and [r["step"] for r in rows(logdir)][-1] == 140


def optimizer_steps(optim_state: dict) -> set[int]:
    """The step counts the agent's optimizer states hold (LaProp counts per group, Adam per parameter)."""
    steps = set()
    for part in optim_state.values():
        steps |= {int(group["count"]) for group in part["param_groups"] if "count" in group}
        steps |= {int(state["step"]) for state in part["state"].values() if "step" in state}
    return steps


def assert_same(a, b):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    else:
        assert a == b


def test_the_next_batch_is_gathered_while_an_update_runs_and_only_within_one_call(tmp_path):
    loop = train.build(config_for(tmp_path, steps=96))
    loop.run(StopFlag())
    events = []

    def recorded(name, fn):
        return lambda *args, **kwargs: events.append(name) or fn(*args, **kwargs)

    loop.replay.sample_torch = recorded("sample", loop.replay.sample_torch)
    loop.replay.update = recorded("write back", loop.replay.update)
    loop.agent.train = recorded("update", loop.agent.train)
    loop.train_updates(3)
    # Batch k+1 is sampled before update k's latents are written back; the last update prefetches nothing.
    assert events == ["sample"] + ["update", "sample", "write back"] * 2 + ["update", "write back"]


def test_resumed_run_continues_bit_identically(tmp_path):
    config = config_for(tmp_path, steps=96)
    uninterrupted = train.build(config)
    uninterrupted.run(StopFlag())
    expected = uninterrupted.train_updates(4)
    resumed = train.build(config)
    got = resumed.train_updates(4)
    assert [m["loss/total"] for m in got] == [m["loss/total"] for m in expected]
    assert got == expected
    for a, b in zip(uninterrupted.agent.wm.parameters(), resumed.agent.wm.parameters(), strict=True):
        assert torch.equal(a, b)


def on_meta(config, obs_space, act_space):
    """The real agent on the "meta" device, a stand-in accelerator: meta tensors carry shapes only, and
    mixing them with CPU tensors raises the device errors CUDA raises."""
    from agent import make_agent

    # Autocast has no meta backend: float32 whatever `auto` chose for the CPU.
    run = dataclasses.replace(config.run, device="meta", precision="float32")
    return make_agent(dataclasses.replace(config, run=run), obs_space, act_space)


@pytest.mark.filterwarnings("ignore:for .*copying from a non-meta parameter:UserWarning")
def test_a_cpu_checkpoint_resumes_with_the_carry_on_the_agents_device(tmp_path):
    # Without replay context (v1) the training carry goes from one batch to the next.
    config = load_config(["debug"], merge(QUIET, {"logdir": str(tmp_path), "replay": {"context": 0}}))
    config = dataclasses.replace(config, run=dataclasses.replace(config.run, steps=96, train_ratio=16))
    train.build(config).run(StopFlag())
    assert load(tmp_path)["loop"]["train_state"] is not None  # the run trained: there is a carry
    loop = train.build(config, train.Factories(make_agent=on_meta))
    agent, carry = loop.agent, loop.train_state
    assert {x.device.type for x in carry} == {"meta"}
    # The first update runs from the restored carry (through `RSSM._reset`'s torch.where).
    data = agent.to_device(loop.parts.replay.sample_torch(agent.device))
    out = agent.train(data, carry)
    assert out.metrics["loss/total"].device.type == "meta" and {x.device.type for x in out.carry} == {"meta"}
    # A carry left on the CPU, as the loop restored it before `Agent.load_carry`, fails there.
    cpu_carry = type(carry)(*(torch.zeros(x.shape) for x in carry))
    with pytest.raises(RuntimeError, match="device"):
        agent.loss(data, cpu_carry)


def test_incompatible_config_is_refused_naming_the_keys(tmp_path, capsys):
    logdir = tmp_path / "run"
    train.build(config_for(logdir, steps=70)).run(StopFlag())
    status = train.main(["--configs", "debug", "--logdir", str(logdir), *FAST, "--world_model.deter", "64"])
    assert status == 1
    err = capsys.readouterr().err
    assert "incompatible config" in err and "world_model.deter (checkpoint 32, config 64)" in err


def test_from_checkpoint_initializes_weights_only(tmp_path):
    source = tmp_path / "source"
    train.build(config_for(source, steps=80)).run(StopFlag())
    config = config_for(tmp_path / "new", steps=80, from_checkpoint=str(source))
    loop = train.build(config)
    assert loop.counters.step == 0 and len(loop.parts.replay) == 0
    assert_same(loop.agent.state_dict(), load(source)["agent"])


def floating_dtypes(state) -> set[torch.dtype]:
    """The dtypes of the floating-point tensors in a nested state dict."""
    if isinstance(state, torch.Tensor):
        return {state.dtype} if state.is_floating_point() else set()
    values = state.values() if isinstance(state, dict) else state if isinstance(state, (list, tuple)) else ()
    return set().union(*map(floating_dtypes, values))


@pytest.mark.parametrize(
    "flags, expected, reason",
    [
        ({"avx2"}, "float32", "this CPU has no native bfloat16 (no amx_bf16 / avx512_bf16 in /proc/cpuinfo)"),
        ({"avx2", "amx_bf16"}, "bfloat16", "this CPU computes bfloat16 natively (amx_bf16 in /proc/cpuinfo)"),
    ],
)
def test_auto_precision_is_said_once_and_saved(tmp_path, monkeypatch, capsys, flags, expected, reason):
    monkeypatch.setattr("agent.precision.cpu_flags", lambda: frozenset(flags))
    config = config_for(tmp_path, device="cpu", precision="auto")  # the debug preset pins float32
    loop = train.build(config)
    out = capsys.readouterr().out
    assert out.count("run.precision") == 1 and f"run.precision auto -> {expected}: {reason}\n" in out
    assert loop.agent.precision == expected
    assert load_config(base=tmp_path / "config.yaml").run.precision == expected


def test_a_bfloat16_run_resumes_in_float32_and_back(tmp_path):
    train.build(config_for(tmp_path, steps=70, precision="bfloat16")).run(StopFlag())
    saved = load(tmp_path)
    # Weights and optimizer states are float32 whatever the autocast dtype: the checkpoint has no precision.
    # (The optimizer's update count is a float64 scalar, for exact bias corrections.)
    assert floating_dtypes({k: v for k, v in saved["agent"].items() if k != "optim"}) == {torch.float32}
    assert floating_dtypes(saved["agent"]["optim"]["all"]["state"]) == {torch.float32}
    assert saved["agent"]["optim"]["all"]["param_groups"][0]["count"].dtype == torch.float64
    fp32 = train.build(config_for(tmp_path, steps=80, precision="float32"))
    assert fp32.agent.precision == "float32" and fp32.counters.step == 70
    assert_same(fp32.agent.state_dict(), saved["agent"])
    fp32.run(StopFlag())
    assert load_config(base=tmp_path / "config.yaml").run.precision == "float32"
    back = train.build(config_for(tmp_path, steps=90, precision="bfloat16"))
    assert back.agent.precision == "bfloat16" and back.counters.step == 80
    updates = back.counters.updates
    back.run(StopFlag())
    assert back.counters.step == 90 and back.counters.updates > updates > 0
    losses = [r["train/loss/total"] for r in rows(tmp_path) if "train/loss/total" in r and r["step"] > 80]
    assert len(losses) >= 3 and np.all(np.isfinite(losses))


def test_corrupt_latest_checkpoint_falls_back_to_the_previous(tmp_path, capsys):
    train.build(config_for(tmp_path, steps=100, save_every_steps=50)).run(StopFlag())
    newest = Checkpointer(tmp_path / "checkpoints").latest()
    newest.write_bytes(newest.read_bytes()[:1000])
    loop = train.build(config_for(tmp_path, steps=100))
    assert loop.counters.step == 50
    assert "ckpt-000000100.pt is corrupt" in capsys.readouterr().err


def wait_for(predicate, timeout, process):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.1)
    return False


def start_train(logdir, *args):
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    return subprocess.Popen(train_command(logdir, *args), cwd=ROOT, env=SUBPROCESS_ENV, **pipes)


def test_sigkill_then_resume_loses_at_most_the_steps_since_the_checkpoint(tmp_path, capsys):
    logdir = tmp_path / "run"
    args = ["--run.steps", "100000", "--run.save_every_steps", "40", "--logger.terminal", "false"]
    process = start_train(logdir, *args)
    found = wait_for(lambda: len(list((logdir / "checkpoints").glob("ckpt-*.pt"))) >= 2, 120, process)
    process.kill()
    process.wait()
    assert found, process.stderr.read()[-2000:]
    checkpoints = Checkpointer(logdir / "checkpoints")
    last = load(checkpoints.latest())
    assert last["step"] >= 80 and last["loop"]["counters"]["updates"] > 0
    metrics = logdir / "metrics.jsonl"
    complete = metrics.read_text().split("\n")[:-1]  # the last piece is "" or a line cut by the kill
    kept = [row for row in map(json.loads, complete) if row["step"] <= last["step"]]
    with open(metrics, "a") as f:  # for sure: a row after the checkpoint, then one cut short mid-write
        f.write("\n" + json.dumps({"step": last["step"] + 1, "superseded": 1}) + '\n{"step": 1')
    status = train.main(train_command(logdir, "--run.steps", str(last["step"] + 20), *args[2:])[2:])
    assert status == 0
    assert f"at step {last['step']} " in capsys.readouterr().out
    assert load(checkpoints.latest())["step"] == last["step"] + 20
    # The metrics continue from the checkpoint's step: each step once, the resumed run's first row kept.
    steps = [row["step"] for row in rows(logdir)]
    assert rows(logdir)[: len(kept)] == kept and steps == sorted(set(steps))
    assert steps[len(kept) :] == list(range(last["step"] + 1, last["step"] + 21))
    assert "superseded" not in rows(logdir)[len(kept)]


def test_sigterm_writes_a_final_checkpoint_and_exits_cleanly(tmp_path, capsys):
    config = config_for(tmp_path, steps=10**9, save_every_steps=0, save_every=1e9)
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    status = train.train(config, stub_factories())
    timer.join()
    assert status == 0
    assert "stopped by signal 15 at" in capsys.readouterr().out
    step = load(tmp_path)["step"]
    assert step > 0 and rows(tmp_path)[-1]["step"] == step


@pytest.mark.slow
def test_wandb_offline_run_appears_and_a_resume_continues_it(tmp_path):
    changes = merge(QUIET, {"logdir": str(tmp_path), "logger": {"wandb": {"mode": "offline"}}})
    first = load_config(["debug"], merge(changes, {"run": {"steps": 70}}))
    assert train.train(first, stub_factories()) == 0
    run_id = (tmp_path / "wandb_id.txt").read_text()
    second = load_config(["debug"], merge(changes, {"run": {"steps": 90}}))
    assert train.train(second, stub_factories()) == 0
    runs = sorted((tmp_path / "wandb").glob("offline-run-*"))
    assert runs and all(r.name.endswith(f"-{run_id}") for r in runs)


def test_replay_capacity_never_exceeds_what_the_run_collects():
    from configs.loader import load_config

    config = load_config(["debug"], {"run": {"steps": 300}, "replay": {"capacity": 10**6, "chunk_size": 64}})
    assert train.replay_capacity(config, num_envs=4) == 300 * 4
    # A chunk must fit in each stream; the configured capacity stays the upper bound.
    short = load_config(["debug"], {"run": {"steps": 10}, "replay": {"chunk_size": 64, "capacity": 100}})
    assert train.replay_capacity(short, num_envs=1) == 64
    assert train.replay_capacity(short, num_envs=2) == 100


def test_each_policy_step_is_stored_with_the_latent_the_policy_reached_there(tmp_path):
    """replay.context: a random prefill step stores the zero (initial) latent; a policy step its posterior,
    so that the next step's deterministic state follows from it and the action taken: h_t = f(s_{t-1},
    a_{t-1})."""
    config = config_for(tmp_path, steps=60, prefill=20, train_ratio=0, save_every_steps=0)
    loop = train.build(config)
    loop.run(StopFlag())
    data = {k: torch.as_tensor(v) for k, v in loop.parts.replay.stream_data(0).items()}
    deter, stoch = data["context/deter"], data["context/stoch"]
    assert not deter[:20].any() and not stoch[:20].any()
    assert deter[20:].abs().amax() > 0.01 and (stoch[20:].sum(-1) - 1).abs().max() < 1e-6  # one-hot
    t = torch.arange(21, 60)
    t = t[~data["is_first"][t]]  # the policy state resets at an episode's first step
    with torch.no_grad():
        prev = RSSMState(deter[t - 1], stoch[t - 1])
        expected = loop.agent.wm.rssm._dynamics(prev, data["action"][t - 1])
    torch.testing.assert_close(deter[t], expected, rtol=0, atol=1e-6)
