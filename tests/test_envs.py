"""Environments: flags, action mapping, repeat, images, dict observations, vectorized auto-reset,
seeding, restarts, errors, and the optional suites (skipped when their extra is missing)."""

from __future__ import annotations

import dataclasses
import logging
import os
import shlex
import subprocess
import sys
import uuid
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

from configs.loader import load_config
from envs import EnvError, check_image_size, make_vec_env
from envs.codec import ActCodec, ObsCodec

ROOT = Path(__file__).resolve().parents[1]


class CountEnv(gym.Env):
    """obs = [episode, t, draw]: the episode index of this instance, the step in it, and a number
    drawn from the seeded np_random at reset. Reward = t (or the sum of a Box action). Episodes last
    `length` steps (a random 2..5 when length=0) and end by termination or truncation."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init__(self, length=4, terminate=True, action="discrete", render_mode=None, frame=(24, 32)):
        self.length, self.terminate, self.render_mode, self.frame = length, terminate, render_mode, frame
        self.observation_space = spaces.Box(-np.inf, np.inf, (3,), np.float32)
        self.action_space = {
            "discrete": spaces.Discrete(3, start=2),
            "box": spaces.Box(np.array([-2, 0], np.float32), np.array([2, 10], np.float32)),
            "multi": spaces.MultiDiscrete([2, 3]),
        }[action]
        self.episode, self.t, self.actions = -1, 0, []

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.episode += 1
        self.t = 0
        self.draw = float(self.np_random.random())
        self.steps = self.length or int(self.np_random.integers(2, 6))
        return self._obs(), {}

    def step(self, action):
        self.actions.append(np.array(action))
        self.t += 1
        reward = float(np.sum(action)) if isinstance(self.action_space, spaces.Box) else float(self.t)
        end = self.t >= self.steps
        return self._obs(), reward, end and self.terminate, end and not self.terminate, {}

    def render(self):
        frame = np.zeros((*self.frame, 3), np.uint8)
        frame[..., 0] = 10 * self.t
        return frame

    def _obs(self):
        return np.array([self.episode, self.t, self.draw], np.float32)


class ImageDictEnv(gym.Env):
    """Dict observations: a float vector, a uint8 image, a Discrete and a MultiDiscrete."""

    def __init__(self, image=(48, 40, 3), color=(255, 0, 0)):
        self.observation_space = spaces.Dict(
            {
                "pos": spaces.Box(-1.0, 1.0, (2,), np.float64),
                "cam": spaces.Box(0, 255, image, np.uint8),
                "mode": spaces.Discrete(3),
                "grid": spaces.MultiDiscrete([2, 3]),
            }
        )
        self.action_space = spaces.Discrete(2)
        self.color = np.array(color, np.uint8)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self._obs(0), {}

    def step(self, action):
        return self._obs(1), 0.0, False, False, {}

    def _obs(self, t):
        cam = np.broadcast_to(self.color, self.observation_space["cam"].shape).copy()
        return {"pos": np.array([0.5, -t]), "cam": cam, "mode": 2, "grid": np.array([1, t + 1])}


class FlakyEnv(CountEnv):
    """Raises on its 3rd step while `failures` (shared by all instances) is positive."""

    failures = 0

    def step(self, action):
        if self.t == 2 and FlakyEnv.failures > 0:
            FlakyEnv.failures -= 1
            raise RuntimeError("simulator crashed")
        return super().step(action)


gym.register("TestCount-v0", entry_point=CountEnv)
gym.register("TestCountLimited-v0", entry_point=CountEnv, max_episode_steps=3, kwargs={"length": 100})
gym.register("TestImageDict-v0", entry_point=ImageDictEnv)
gym.register("TestFlaky-v0", entry_point=FlakyEnv)


class TupleObsEnv(CountEnv):
    def __init__(self):
        super().__init__()
        self.observation_space = spaces.Tuple([spaces.Discrete(2), spaces.Discrete(3)])


gym.register("TestTupleObs-v0", entry_point=TupleObsEnv)


def env_config(**changes):
    base = load_config(["debug"]).env
    return dataclasses.replace(base, **{"id": "TestCount-v0", "kwargs": {}, **changes})


class OneEnv:
    """A VecEnv of one env seen unbatched: step(action [A]) -> step dict of env 0 (as the tests read it)."""

    def __init__(self, config, seed):
        self.vec = make_vec_env(config, seed, num_envs=1, parallel=False)
        self.obs_space, self.act_space = self.vec.obs_space, self.vec.act_space
        self.gym_env = self.vec.gym_env.envs[0]  # the env inside, wrappers included

    def reset(self):
        return {k: v[0] for k, v in self.vec.reset().items()}

    def step(self, action):
        return {k: v[0] for k, v in self.vec.step(np.asarray(action, np.float32)[None]).items()}


def run_single(env, steps, action=None):
    action = np.eye(env.act_space.dim, dtype=np.float32)[0] if action is None else action
    return [env.reset()] + [env.step(action) for _ in range(steps)]


# --- flags ---------------------------------------------------------------------------------------


def test_termination_sets_last_and_terminal_then_next_step_is_first():
    env = OneEnv(env_config(kwargs={"length": 3}), seed=0)
    steps = run_single(env, 5)
    assert [bool(s["is_first"]) for s in steps] == [True, False, False, False, True, False]
    assert [bool(s["is_last"]) for s in steps] == [False, False, False, True, False, False]
    assert [bool(s["is_terminal"]) for s in steps] == [False, False, False, True, False, False]
    assert [float(s["reward"]) for s in steps] == [0.0, 1.0, 2.0, 3.0, 0.0, 1.0]
    assert steps[4]["vector"][:2].tolist() == [1.0, 0.0]  # a new episode, step 0
    assert steps[0]["reward"].dtype == np.float32 and steps[0]["is_last"].dtype == bool


def test_truncation_sets_last_only():
    env = OneEnv(env_config(kwargs={"length": 3, "terminate": False}), seed=0)
    steps = run_single(env, 4)
    assert [bool(s["is_last"]) for s in steps] == [False, False, False, True, False]
    assert not any(bool(s["is_terminal"]) for s in steps)


def test_time_limit_counts_agent_steps_and_replaces_the_registered_limit():
    registered = OneEnv(env_config(id="TestCountLimited-v0"), seed=0)
    assert [bool(s["is_last"]) for s in run_single(registered, 3)] == [False, False, False, True]
    env = OneEnv(env_config(id="TestCountLimited-v0", time_limit=5, action_repeat=2), seed=0)
    steps = run_single(env, 5)
    assert [bool(s["is_last"]) for s in steps] == [False] * 5 + [True]
    assert not steps[-1]["is_terminal"] and steps[-1]["vector"][1] == 10  # 5 agent steps = 10 env steps


# --- actions -------------------------------------------------------------------------------------


def test_continuous_actions_map_to_bounds_clip_and_round_trip():
    codec = ActCodec(spaces.Box(np.array([-2, 0], np.float32), np.array([2, 10], np.float32)))
    assert codec.space.kind == "continuous" and codec.space.dim == 2
    agent = np.array([[-1, -1], [1, 1], [0, 0.5], [-3, 7]], np.float32)
    native = codec(agent)
    np.testing.assert_allclose(native, [[-2, 0], [2, 10], [0, 7.5], [-2, 10]], atol=1e-6)
    assert native.dtype == np.float32
    inside = np.random.default_rng(0).uniform(-1, 1, (100, 2)).astype(np.float32)
    np.testing.assert_allclose(codec.to_agent(codec(inside)), inside, atol=1e-6)


def test_continuous_action_reaches_the_env_rescaled():
    env = OneEnv(env_config(kwargs={"action": "box"}), seed=0)
    env.reset()
    step = env.step(np.array([0.0, -1.0], np.float32))
    np.testing.assert_allclose(env.gym_env.unwrapped.actions[-1], [0.0, 0.0], atol=1e-6)
    assert float(step["reward"]) == pytest.approx(0.0)
    env.step(np.array([1.0, 0.0], np.float32))
    np.testing.assert_allclose(env.gym_env.unwrapped.actions[-1], [2.0, 5.0], atol=1e-6)


def test_discrete_actions_are_one_hot_with_the_space_start():
    env = OneEnv(env_config(), seed=0)
    assert (env.act_space.kind, env.act_space.dim, env.act_space.nvec) == ("discrete", 3, (3,))
    env.reset()
    env.step(np.array([0, 0, 1], np.float32))
    env.step(np.array([0.2, 0.7, 0.1], np.float32))
    assert [int(a) for a in env.gym_env.unwrapped.actions] == [4, 3]  # Discrete(3, start=2)
    codec = ActCodec(spaces.Discrete(3, start=2))
    np.testing.assert_array_equal(codec.to_agent(np.array([2, 4])), [[1, 0, 0], [0, 0, 1]])


def test_multidiscrete_actions_are_concatenated_one_hots():
    env = OneEnv(env_config(kwargs={"action": "multi"}), seed=0)
    assert (env.act_space.kind, env.act_space.dim, env.act_space.nvec) == ("multidiscrete", 5, (2, 3))
    env.reset()
    env.step(np.array([0, 1, 0, 0, 1], np.float32))
    assert env.gym_env.unwrapped.actions[-1].tolist() == [1, 2]
    codec = ActCodec(spaces.MultiDiscrete([2, 3]))
    native = np.array([[0, 2], [1, 0]])
    np.testing.assert_array_equal(codec(codec.to_agent(native)), native)


def test_action_repeat_sums_rewards_and_stops_at_the_episode_end():
    env = OneEnv(env_config(kwargs={"length": 5}, action_repeat=3), seed=0)
    steps = run_single(env, 2)
    assert [float(s["reward"]) for s in steps] == [0.0, 1 + 2 + 3, 4 + 5]
    assert bool(steps[2]["is_last"]) and steps[2]["vector"][1] == 5
    assert len(env.gym_env.unwrapped.actions) == 5  # stopped early, no step past the end


# --- observations --------------------------------------------------------------------------------


def test_dict_observations_keep_their_keys_with_agent_dtypes():
    env = OneEnv(env_config(id="TestImageDict-v0"), seed=0)
    assert {k: (s.shape, np.dtype(s.dtype)) for k, s in env.obs_space.items()} == {
        "pos": ((2,), np.float32),
        "cam": ((16, 16, 3), np.uint8),
        "mode": ((3,), np.float32),
        "grid": ((5,), np.float32),
    }
    step = env.reset()
    assert step["mode"].tolist() == [0, 0, 1] and step["grid"].tolist() == [0, 1, 0, 1, 0]
    assert step["pos"].dtype == np.float32 and step["pos"].tolist() == [0.5, 0.0]
    assert step["cam"].dtype == np.uint8 and step["cam"].shape == (16, 16, 3)
    assert (step["cam"] == [255, 0, 0]).all()  # area averaging keeps a flat color


def test_image_resize_and_grayscale():
    env = OneEnv(env_config(id="TestImageDict-v0", size=[8, 32], grayscale=True), seed=0)
    step = env.reset()
    assert step["cam"].shape == (8, 32, 1) and step["cam"].dtype == np.uint8
    assert (step["cam"] == 76).all()  # 0.299 * 255, ITU-R 601 luma of pure red


def test_resize_averages_areas():
    env = OneEnv(env_config(obs="pixels", kwargs={"frame": (32, 32)}), seed=0)
    frame = np.arange(32 * 32 * 3, dtype=np.uint8).reshape(32, 32, 3)
    from envs.wrappers import ResizeImages

    wrapper = ResizeImages(env.gym_env, (16, 16))
    expected = frame.reshape(16, 2, 16, 2, 3).astype(np.float64).mean(axis=(1, 3))
    np.testing.assert_allclose(wrapper.frame(frame), expected, atol=0.5)


def test_pixels_from_render_alone_or_with_the_state():
    pixels = OneEnv(env_config(obs="pixels"), seed=0)
    assert list(pixels.obs_space) == ["image"] and pixels.obs_space["image"].shape == (16, 16, 3)
    steps = run_single(pixels, 2)
    assert [int(s["image"][0, 0, 0]) for s in steps] == [0, 10, 20]  # rendered once per agent step
    both = OneEnv(env_config(obs="both", action_repeat=2), seed=0)
    assert set(both.obs_space) == {"vector", "image"}
    step = run_single(both, 1)[-1]
    assert step["vector"][1] == 2 and int(step["image"][0, 0, 0]) == 20


def test_discrete_observation_is_one_hot():
    codec = ObsCodec(spaces.Discrete(4))
    assert codec.spec["vector"].shape == (4,)
    np.testing.assert_array_equal(codec(np.array([3, 0]))["vector"], [[0, 0, 0, 1], [1, 0, 0, 0]])


# --- vectorized collection -----------------------------------------------------------------------


def collect(env, steps, rng):
    out = [env.reset()]
    for _ in range(steps):
        out.append(env.step(np.eye(env.act_space.dim, dtype=np.float32)[rng.integers(0, 3, env.num_envs)]))
    return out


def check_streams(steps, num_envs):
    """Each env's stream is whole episodes in order: is_first at t=0, t counting up, is_last at its end."""
    episodes = [0] * num_envs
    for i in range(num_envs):
        prev = None
        for s in steps:
            episode, t, _ = s["vector"][i]
            if s["is_first"][i]:
                assert t == 0 and s["reward"][i] == 0
                assert prev is None or prev["is_last"][i], "an episode started before the last one ended"
                assert prev is None or episode == prev["vector"][i][0] + 1
                episodes[i] += 1
            else:
                assert not prev["is_last"][i], "a step followed the last step of its episode"
                assert episode == prev["vector"][i][0] and t == prev["vector"][i][1] + 1
                assert s["reward"][i] == t
            assert s["is_last"][i] == s["is_terminal"][i]
            prev = {k: v.copy() for k, v in s.items()}
    return episodes


@pytest.mark.parametrize("parallel", [False, True])
def test_vector_autoreset_keeps_every_transition_in_order(parallel):
    env = make_vec_env(env_config(kwargs={"length": 0}), seed=3, num_envs=3, parallel=parallel)
    steps = collect(env, 40, np.random.default_rng(0))
    env.close()
    episodes = check_streams(steps, 3)
    assert min(episodes) >= 7  # episodes of 2..5 steps: many auto-resets per env
    assert sum(int(s["is_last"].sum()) for s in steps) >= sum(episodes) - 3


def test_returned_arrays_are_not_overwritten_by_later_steps():
    env = make_vec_env(env_config(), seed=0, num_envs=2)
    first = env.reset()
    kept = {k: v.copy() for k, v in first.items()}
    env.step(np.eye(3, dtype=np.float32)[[0, 1]])
    for key in kept:
        np.testing.assert_array_equal(first[key], kept[key])


def test_same_seed_same_episodes_and_env_i_gets_seed_plus_i():
    config = load_config(["debug"]).env  # CartPole-v1
    actions = np.eye(2, dtype=np.float32)[np.random.default_rng(0).integers(0, 2, (60, 2))]

    def run(seed):
        env = make_vec_env(config, seed=seed, num_envs=2)
        out = [env.reset()] + [env.step(a) for a in actions]
        env.close()
        return np.stack([s["vector"] for s in out])

    a, b, c = run(5), run(5), run(6)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a[0], c[0])
    np.testing.assert_array_equal(a[0, 1], c[0, 0])  # env 1 of seed 5 starts like env 0 of seed 6
    single = OneEnv(config, seed=6).reset()["vector"]
    np.testing.assert_array_equal(single, c[0, 0])


# --- restarts ------------------------------------------------------------------------------------


def test_restart_on_error_reports_and_returns_a_first_step(caplog):
    FlakyEnv.failures = 1
    env = make_vec_env(env_config(id="TestFlaky-v0", kwargs={"length": 10}), seed=0, num_envs=2)
    with caplog.at_level(logging.WARNING, logger="envs.wrappers"):
        steps = collect(env, 4, np.random.default_rng(0))
    assert "TestFlaky-v0 (index 0)" in caplog.text and "simulator crashed" in caplog.text
    assert [bool(s["is_first"][0]) for s in steps] == [True, False, False, True, False]
    assert float(steps[3]["reward"][0]) == 0 and steps[3]["vector"][0][1] == 0
    assert [bool(s["is_first"][1]) for s in steps] == [True, False, False, False, False]


def test_without_restart_the_error_propagates():
    FlakyEnv.failures = 1
    env = OneEnv(env_config(id="TestFlaky-v0", restart_on_error=False), seed=0)
    run_single(env, 2)
    with pytest.raises(RuntimeError, match="simulator crashed"):
        env.step(np.eye(3, dtype=np.float32)[0])


# --- errors --------------------------------------------------------------------------------------


def one_line(error):
    message = str(error.value)
    assert "\n" not in message
    return message


def test_unknown_id_is_one_clear_error_with_a_suggestion():
    with pytest.raises(EnvError) as error:
        OneEnv(env_config(id="CartPol-v1"), seed=0)
    message = one_line(error)
    assert "'CartPol-v1'" in message and "CartPole-v1" in message and "dmc_<domain>_<task>" in message


@pytest.mark.parametrize(
    ("space", "words"),
    [
        (spaces.Tuple([spaces.Discrete(2)]), "unsupported observation space Tuple"),
        (
            spaces.Dict({"a": spaces.Dict({"b": spaces.Discrete(2)})}),
            "space Dict('b': Discrete(2)) under key 'a'",
        ),
    ],
)
def test_unsupported_observation_space(space, words):
    with pytest.raises(EnvError) as error:
        ObsCodec(space)
    assert words in one_line(error) and "supported:" in one_line(error)


def test_unsupported_space_through_make_vec_env_names_the_env():
    with pytest.raises(EnvError) as error:
        OneEnv(env_config(id="TestTupleObs-v0"), seed=0)
    assert one_line(error).startswith("env 'TestTupleObs-v0': unsupported observation space Tuple(")


def test_unsupported_action_spaces():
    with pytest.raises(EnvError) as error:
        ActCodec(spaces.Box(-np.inf, np.inf, (2,), np.float32))
    assert "finite bounds" in one_line(error)
    with pytest.raises(EnvError, match="supported: Discrete"):
        ActCodec(spaces.Tuple([spaces.Discrete(2)]))


@pytest.mark.parametrize("size", [[60, 60], [64, 2], [64, 72], [16, 8], [3], "ab"])
def test_image_size_the_encoder_cannot_take(size):
    with pytest.raises(EnvError) as error:
        OneEnv(env_config(obs="pixels", size=size), seed=0)
    assert "env.size" in one_line(error)


@pytest.mark.parametrize("size", [[64, 64], [16, 16], [64, 96], [32, 128], [8, 8]])
def test_image_sizes_the_encoder_takes(size):
    assert check_image_size(size) == tuple(size)


def test_bad_config_values():
    with pytest.raises(EnvError, match="env.obs 'rgb' is not one of state, pixels, both"):
        OneEnv(env_config(obs="rgb"), seed=0)
    with pytest.raises(EnvError, match="env.action_repeat must be >= 1"):
        OneEnv(env_config(action_repeat=0), seed=0)
    with pytest.raises(EnvError, match="num_envs must be >= 1"):
        make_vec_env(env_config(), seed=0, num_envs=0)


def test_wrong_action_shape():
    vec = make_vec_env(env_config(), seed=0, num_envs=2)
    vec.reset()
    with pytest.raises(ValueError, match=r"action has shape \(3,\); expected \(num_envs, dim\) = \(2, 3\)"):
        vec.step(np.zeros(3, np.float32))


def test_pixels_from_an_env_that_cannot_render():
    with pytest.raises(EnvError) as error:
        OneEnv(env_config(id="TestImageDict-v0", obs="pixels"), seed=0)
    assert "does not render 'rgb_array'" in one_line(error)


# --- optional suites -----------------------------------------------------------------------------


def test_dmc_state_and_pixels():
    pytest.importorskip("dm_control", reason="the dmc extra is not installed: pip install -e '.[dmc]'")
    config = env_config(id="dmc_cartpole_swingup", obs="both", action_repeat=2)
    env = OneEnv(config, seed=1)
    assert set(env.obs_space) == {"position", "velocity", "image"}
    assert env.obs_space["image"].shape == (16, 16, 3) and env.act_space.kind == "continuous"
    steps = run_single(env, 3, np.zeros(1, np.float32))
    assert steps[-1]["image"].dtype == np.uint8 and steps[-1]["image"].std() > 0
    again = run_single(OneEnv(config, seed=1), 3, np.zeros(1, np.float32))
    np.testing.assert_array_equal(steps[-1]["position"], again[-1]["position"])
    assert steps[0]["position"].tolist() != run_single(OneEnv(config, seed=2), 0)[0]["position"].tolist()


def test_dmc_unknown_task():
    pytest.importorskip("dm_control", reason="the dmc extra is not installed: pip install -e '.[dmc]'")
    with pytest.raises(EnvError, match="unknown DeepMind Control task 'dmc_walker_fly'"):
        OneEnv(env_config(id="dmc_walker_fly"), seed=0)


def test_atari_frame_skip_is_the_action_repeat():
    pytest.importorskip("ale_py", reason="the atari extra is not installed: pip install -e '.[atari]'")
    env = OneEnv(env_config(id="atari_pong", action_repeat=4, size=[64, 64]), seed=0)
    assert env.obs_space["image"].shape == (64, 64, 3) and env.act_space.dim == 18
    run_single(env, 3)
    assert env.gym_env.unwrapped.ale.getEpisodeFrameNumber() == 12  # 3 agent steps x 4 frames, not 4 x 4
    gray = OneEnv(env_config(id="atari_pong", action_repeat=4, grayscale=True, size=[32, 32]), seed=0)
    assert gray.reset()["image"].shape == (32, 32, 1)


def test_missing_extra_names_the_install_command(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_suites(name, *args, **kwargs):
        if name.startswith(("dm_control", "ale_py")):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_suites)
    with pytest.raises(EnvError, match=r"pip install -e '\.\[dmc\]'"):
        OneEnv(env_config(id="dmc_walker_walk"), seed=0)
    with pytest.raises(EnvError, match=r"pip install -e '\.\[atari\]'"):
        OneEnv(env_config(id="atari_pong"), seed=0)


def test_image_size_check_agrees_with_the_encoder():
    conv_stages = pytest.importorskip("world_model.encoder").conv_stages

    def encoder_takes(h, w):
        try:
            conv_stages(h, w, 4, ["image"])
        except ValueError:
            return False
        return True

    def env_takes(h, w):
        try:
            check_image_size([h, w])
        except EnvError:
            return False
        return True

    sizes = [(h, w) for h in range(1, 70) for w in range(1, 70)]
    assert [encoder_takes(*s) for s in sizes] == [env_takes(*s) for s in sizes]


# --- a user's own env: `module:EnvId` -------------------------------------------------------------

USER_MODULE = """
import gymnasium as gym
import numpy as np


class Flip(gym.Env):
    observation_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        return np.ones(1, np.float32), {}

    def step(self, action):
        return -np.ones(1, np.float32), float(action), False, False, {}


gym.register("{name}-v0", entry_point=Flip, max_episode_steps=5)
"""


def user_module(folder, monkeypatch) -> str:
    """A module in `folder` (put on sys.path) that registers `<Module>-v0`; returns the module's name."""
    name = f"user_env_{uuid.uuid4().hex[:8]}"
    (folder / f"{name}.py").write_text(USER_MODULE.replace("{name}", name.capitalize()))
    monkeypatch.syspath_prepend(str(folder))
    return name


def test_module_colon_env_id_imports_the_module_that_registers_it(tmp_path, monkeypatch):
    # Before: "unknown env id 'module:EnvId'", as the id was looked up before the module was imported.
    name = user_module(tmp_path, monkeypatch)
    env = OneEnv(env_config(id=f"{name}:{name.capitalize()}-v0"), seed=0)
    steps = run_single(env, 5)
    assert [float(s["vector"][0]) for s in steps] == [1, -1, -1, -1, -1, -1]
    assert steps[-1]["is_last"] and not steps[-1]["is_terminal"]  # the registered 5-step limit


def test_module_colon_env_id_errors_are_one_line(tmp_path, monkeypatch):
    with pytest.raises(EnvError) as error:
        OneEnv(env_config(id="no_such_module_x:Flip-v0"), seed=0)
    message = one_line(error)
    assert message.startswith("env id 'no_such_module_x:Flip-v0': cannot import module 'no_such_module_x'")
    name = user_module(tmp_path, monkeypatch)
    with pytest.raises(EnvError) as error:
        OneEnv(env_config(id=f"{name}:Flop-v0"), seed=0)
    assert f"'Flop-v0' is not registered by module '{name}'" in one_line(error)


def readme_example() -> tuple[str, list[list[str]]]:
    """The README's own-environment example: the module's code and the commands (argument lists)."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Your own environment") :]
    section = section[: section.index("\n## ", 1)]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    shell = section.split("```sh\n", 1)[1].split("```", 1)[0]
    return code, [shlex.split(line) for line in shell.splitlines() if line.strip()]


def test_the_readmes_own_environment_example_trains_and_evaluates(tmp_path, monkeypatch, capsys):
    code, commands = readme_example()
    train_args, evaluate_args = commands
    assert train_args[:2] == ["python", "train.py"] and evaluate_args[:2] == ["python", "evaluate.py"]
    module = train_args[train_args.index("--env.id") + 1].split(":")[0]
    (tmp_path / f"{module}.py").write_text(code)
    logdir = tmp_path / "run"
    # The README's command as printed, with a shorter run into a temporary folder.
    command = [sys.executable, str(ROOT / "train.py"), *train_args[2:], "--run.steps", "150"]
    command += ["--logdir", str(logdir), "--logger.terminal", "false"]
    environ = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "OMP_WAIT_POLICY": "PASSIVE",
        "PYTHONPATH": str(tmp_path),
    }
    result = subprocess.run(command, cwd=tmp_path, env=environ, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "finished after 150 steps" in result.stdout
    evaluate = pytest.importorskip("evaluate")
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "eval"
    assert (
        evaluate.main([*evaluate_args[2:], "--logdir", str(logdir), "--episodes", "2", "--out", str(out)])
        == 0
    )
    assert (out / "summary.json").exists() and "policy sample: return" in capsys.readouterr().out


# --- rendering for policy videos --------------------------------------------------------------------


class RenderCounter(CountEnv):
    """CountEnv that counts its render() calls (all instances together)."""

    renders = 0

    def render(self):
        RenderCounter.renders += 1
        return super().render()


class NoRenderModeArgument(CountEnv):
    """Declares rgb_array rendering but its constructor takes no `render_mode`."""

    def __init__(self):
        super().__init__()


gym.register("TestRenderCounter-v0", entry_point=RenderCounter)
gym.register("TestNoRenderModeArgument-v0", entry_point=NoRenderModeArgument)


@pytest.mark.parametrize("parallel", [False, True])
def test_a_state_env_that_renders_renders_only_when_asked(parallel):
    # Before: a state env was made without a render mode, so vector-observation envs had no videos.
    RenderCounter.renders = 0
    env = make_vec_env(env_config(id="TestRenderCounter-v0"), seed=0, num_envs=2, parallel=parallel)
    assert env.renders and list(env.obs_space) == ["vector"]
    last = collect(env, 6, np.random.default_rng(0))[-1]
    assert RenderCounter.renders == 0  # stepping never renders (subprocess envs count in their process)
    frame = env.render(1)
    assert frame.shape == (24, 32, 3) and frame.dtype == np.uint8
    assert int(frame[0, 0, 0]) == 10 * int(last["vector"][1, 1])  # env 1 at its latest step
    assert RenderCounter.renders == (0 if parallel else 1)
    env.close()


def test_render_frames_match_the_latest_step():
    env = make_vec_env(env_config(id="TestRenderCounter-v0"), seed=0, num_envs=1)
    step = env.reset()
    for _ in range(3):
        assert int(env.render(0)[0, 0, 0]) == 10 * int(step["vector"][0, 1])
        step = env.step(np.eye(3, dtype=np.float32)[[0]])


def test_an_env_whose_constructor_takes_no_render_mode_is_made_without_one():
    env = make_vec_env(env_config(id="TestNoRenderModeArgument-v0"), seed=0, num_envs=1)
    assert not env.renders and env.render(0) is None
    assert not make_vec_env(env_config(kwargs={"render_mode": None}), seed=0).renders


def test_policy_frames_come_from_render_else_from_an_image_under_any_key(capsys):
    from run.video import PolicyFrames

    rendering = make_vec_env(env_config(id="TestRenderCounter-v0", kwargs={"frame": (600, 400)}), seed=0)
    frames = PolicyFrames(rendering)
    step = rendering.reset()
    assert frames(step, 0).shape == (256, 171, 3)  # shrunk to fit 256 pixels
    images = make_vec_env(env_config(id="TestImageDict-v0"), seed=0)
    frames = PolicyFrames(images)
    assert not images.renders and frames.image_key == "cam"
    np.testing.assert_array_equal(frames(images.reset(), 0), np.broadcast_to([255, 0, 0], (16, 16, 3)))
    assert not PolicyFrames(make_vec_env(env_config(id="TestNoRenderModeArgument-v0"), seed=0)).available

    def broken(index):
        raise RuntimeError("no OpenGL context")

    rendering.render = broken
    frames = PolicyFrames(rendering)
    assert frames(step, 0) is None and not frames.available
    assert (
        "env.render() failed (RuntimeError: no OpenGL context); no policy videos" in capsys.readouterr().err
    )
