"""Driver: callbacks per step and per episode, policy state threading, resets, random policy."""

from __future__ import annotations

import dataclasses

import gymnasium as gym
import numpy as np
import pytest

from configs.loader import load_config
from envs import ActionSpace, make_vec_env
from run.driver import Driver, random_policy


class RewardEnv(gym.Env):
    """Episodes of `length` steps; the reward of step t is t times the chosen action index + 1."""

    def __init__(self, length=3):
        self.length = length
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)
        self.action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.t += 1
        return (
            np.full(1, self.t, np.float32),
            float(self.t * (int(action) + 1)),
            self.t == self.length,
            False,
            {},
        )


gym.register("TestReward-v0", entry_point=RewardEnv)


def vec_env(num_envs=2, **kwargs):
    config = dataclasses.replace(load_config(["debug"]).env, id="TestReward-v0", kwargs=kwargs)
    return make_vec_env(config, seed=0, num_envs=num_envs)


def constant_policy(index):
    def policy(obs, state):
        state = 0 if state is None else state + 1
        n = len(obs["is_first"])
        return np.eye(2, dtype=np.float32)[[index] * n], state

    return policy


def test_steps_carry_the_action_taken_at_them_and_episodes_report_return_and_length():
    driver = Driver(vec_env(length=3))
    steps, episodes = [], []
    driver.on_step(lambda step: steps.append({k: v.copy() for k, v in step.items()}))
    driver.on_episode(episodes.append)
    driver(constant_policy(1), 8)
    assert len(steps) == 8 and all(s["action"].shape == (2, 2) for s in steps)
    assert all(s["action"][:, 1].all() for s in steps)
    # Episodes of 3 steps with action index 1: rewards 2, 4, 6 -> return 12, length 3, in each env.
    assert [s["is_first"][0] for s in steps] == [True, False, False, False, True, False, False, False]
    assert episodes == [
        {"return": 12.0, "length": 3, "env": 0},
        {"return": 12.0, "length": 3, "env": 1},
        {"return": 12.0, "length": 3, "env": 0},
        {"return": 12.0, "length": 3, "env": 1},
    ]
    assert sum(float(s["reward"][0]) for s in steps[:4]) == 12.0


def test_state_and_observation_persist_between_calls_and_reset_clears_them():
    driver = Driver(vec_env(length=5))
    seen = []
    driver.on_step(lambda step: seen.append(float(step["vector"][0, 0])))
    states = []

    def policy(obs, state):
        states.append(state)
        return constant_policy(0)(obs, state)

    driver(policy, 2)
    driver(policy, 2)
    assert states == [None, 0, 1, 2] and seen == [0.0, 1.0, 2.0, 3.0]
    driver.reset()
    driver(policy, 1)
    assert states[-1] is None and seen[-1] == 0.0


def test_episode_spanning_calls_and_reset_discards_partial_returns():
    driver = Driver(vec_env(num_envs=1, length=4))
    episodes = []
    driver.on_episode(episodes.append)
    driver(constant_policy(0), 3)
    driver(constant_policy(0), 2)
    assert episodes == [{"return": 1.0 + 2 + 3 + 4, "length": 4, "env": 0}]
    driver(constant_policy(0), 2)
    driver.reset()
    driver(constant_policy(0), 5)
    assert episodes[-1] == {"return": 10.0, "length": 4, "env": 0} and len(episodes) == 2


def test_wrong_action_shape_is_a_clear_error():
    driver = Driver(vec_env())
    with pytest.raises(ValueError, match=r"shape \(2,\); expected \(2, 2\)"):
        driver(lambda obs, state: (np.zeros(2, np.float32), state), 1)


@pytest.mark.parametrize(
    "space",
    [ActionSpace("discrete", 3, (3,)), ActionSpace("multidiscrete", 5, (2, 3)), ActionSpace("continuous", 2)],
)
def test_random_policy_gives_valid_uniform_actions(space):
    policy = random_policy(space, 4, np.random.default_rng(0))
    actions = np.concatenate([policy({}, None)[0] for _ in range(3000)])
    assert actions.shape == (12000, space.dim) and actions.dtype == np.float32
    if space.kind == "continuous":
        assert actions.min() >= -1 and actions.max() <= 1
        np.testing.assert_allclose(actions.mean(0), 0, atol=0.03)
        np.testing.assert_allclose(actions.var(0), 1 / 3, atol=0.02)  # uniform on [-1, 1]
        return
    start = 0
    for n in space.nvec:
        part = actions[:, start : start + n]
        assert set(np.unique(part)) == {0.0, 1.0} and (part.sum(1) == 1).all()
        np.testing.assert_allclose(part.mean(0), 1 / n, atol=0.02)
        start += n


def test_random_policy_is_reproducible_from_its_generator():
    space = ActionSpace("discrete", 4, (4,))
    a = random_policy(space, 2, np.random.default_rng(7))
    b = random_policy(space, 2, np.random.default_rng(7))
    for _ in range(5):
        np.testing.assert_array_equal(a({}, None)[0], b({}, None)[0])
