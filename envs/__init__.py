"""Environments as the agent sees them: step dicts of numpy arrays, agent-format actions.

    envs = make_vec_env(cfg.env, seed)       # N envs: reset() / step(action [N, A]) -> dict of [N, ...]
    evals = make_vec_env(cfg.env, seed + 10_000, num_envs=cfg.env.eval_num_envs)   # evaluation envs

Gymnasium stops here: the world model and the agent see `obs_space` (dict of ArraySpec),
`act_space` (ActionSpace) and step dicts with `reward`, `is_first`, `is_last`, `is_terminal`.
"""

from envs.errors import EnvError
from envs.make import check_image_size, make_gym_env, make_vec_env
from envs.spaces import ActionSpace, ArraySpec
from envs.vec_env import VecEnv

__all__ = [
    "ActionSpace",
    "ArraySpec",
    "EnvError",
    "VecEnv",
    "check_image_size",
    "make_gym_env",
    "make_vec_env",
]
