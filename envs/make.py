"""Build environments from the `env` config: the wrapper stack and the vector envs around it.

`make_gym_env` writes the per-env wrapper stack out once, in order. `make_vec_env` puts the agent's
interface (step dicts, agent-format actions) around N of them; a single env is `num_envs=1`.
A Gymnasium env that can render `rgb_array` is always made with that render mode (unless
`env.kwargs.render_mode` says otherwise), so policy videos can show it; with `env.obs state` it renders
only when a video asks for a frame (`VecEnv.render`).

Evaluation envs: callers build them with `make_vec_env(cfg.env, seed=seed + 10_000,
num_envs=cfg.env.eval_num_envs)`, so their episodes never repeat the training envs' seeds.
"""

from __future__ import annotations

import difflib
import importlib
import os
from functools import partial
from typing import NamedTuple

import gymnasium as gym
from gymnasium import spaces
from gymnasium.envs.registration import load_env_creator
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv
from gymnasium.wrappers import AddRenderObservation, RepeatAction, TimeLimit

from configs.schema import OBS_KINDS, EnvConfig
from envs.codec import is_image_space
from envs.errors import EnvError
from envs.vec_env import VecEnv
from envs.wrappers import GrayscaleImages, ResizeImages, RestartOnError

# Frames are only rendered off-screen (rgb_array): on a machine without a display, SDL (behind the
# pygame-drawn envs: classic control, Box2D) would print an error line while it looked for one.
if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")

SUITES = "dmc_<domain>_<task> (DeepMind Control), atari_<game> (Atari)"
# The conv encoder halves images down to 4 x 4 (world_model.encoder.minres in the reference).
MINRES = 4


class BaseEnv(NamedTuple):
    """The innermost env and what it already does itself."""

    env: gym.Env
    # It already repeats each action `action_repeat` times (Atari's frame skip with max-pooling).
    repeats: bool = False
    # Its own observation is already the image the agent sees (the Atari screen).
    pixels: bool = False


def check_image_size(size, minres: int = MINRES) -> tuple[int, int]:
    """(H, W) when the conv encoder can halve it down to `minres` rows: H = minres * 2**k, and W a
    multiple of 2**k no smaller than H (the rule of `world_model.encoder.conv_stages`)."""
    try:
        height, width = (int(s) for s in size)
    except (TypeError, ValueError):
        raise EnvError(f"env.size must be [height, width], got {size!r}") from None
    stages = max(height // minres, 1).bit_length() - 1
    if height != minres * 2**stages or width % 2**stages or width < height:
        heights = ", ".join(str(minres * 2**k) for k in range(1, 7))
        raise EnvError(
            f"env.size {[height, width]} cannot be halved down to {minres} rows by the encoder: the height "
            f"must be {minres} x 2^k ({heights}, ...) and the width a multiple of 2^k, at least the height"
        )
    return height, width


def check_config(config: EnvConfig) -> None:
    """Raise an EnvError naming the first bad value of the env config."""
    if config.obs not in OBS_KINDS:
        raise EnvError(f"env.obs '{config.obs}' is not one of {', '.join(OBS_KINDS)}")
    for key in ("action_repeat", "num_envs", "eval_num_envs"):
        if getattr(config, key) < 1:
            raise EnvError(f"env.{key} must be >= 1, got {getattr(config, key)}")
    if config.time_limit < 0:
        raise EnvError(f"env.time_limit must be >= 0 (0 keeps the env's own limit), got {config.time_limit}")


def make_base_env(config: EnvConfig) -> BaseEnv:
    """The innermost env: a suite task or any Gymnasium id (`module:EnvId` imports `module` first),
    rendering rgb_array when pixels are wanted."""
    if ":" in config.id:
        return BaseEnv(_make_gymnasium(config))
    if config.id.startswith("dmc_"):
        from envs.dmc import make_dmc

        return BaseEnv(make_dmc(config.id, config.size, **dict(config.kwargs)))
    if config.id.startswith("atari_"):
        from envs.atari import make_atari

        if config.obs == "both":
            raise EnvError(
                f"env.obs 'both' is not available for {config.id}: its observation is the screen "
                "image; use obs 'state' or 'pixels'"
            )
        env = make_atari(
            config.id, config.size, config.grayscale, config.action_repeat, **dict(config.kwargs)
        )
        return BaseEnv(env, repeats=True, pixels=True)
    return BaseEnv(_make_gymnasium(config))


def gymnasium_spec(env_id: str) -> gym.envs.registration.EnvSpec:
    """The registered spec of a Gymnasium id; `module:EnvId` first imports `module`, which registers it
    (Gymnasium's own form, as `gym.make` reads it), so a user's env needs no change to this project."""
    module, _, name = env_id.rpartition(":")
    if module:
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise EnvError(
                f"env id '{env_id}': cannot import module '{module}' ({e}); it must be importable from "
                "the current folder or PYTHONPATH"
            ) from None
    try:
        return gym.spec(name)
    except gym.error.Error:
        close = difflib.get_close_matches(name, list(gym.registry), n=3, cutoff=0.6)
        hint = f"; close: {', '.join(close)}" if close else ""
        where = f"registered by module '{module}'" if module else "a registered Gymnasium id"
        raise EnvError(
            f"unknown env id '{env_id}': '{name}' is not {where} nor a suite task ({SUITES}){hint}"
        ) from None


def _make_gymnasium(config: EnvConfig) -> gym.Env:
    spec = gymnasium_spec(config.id)
    kwargs = dict(config.kwargs)
    if config.time_limit:
        kwargs["max_episode_steps"] = -1  # the agent-step cap replaces the registered limit
    creator = spec.entry_point if callable(spec.entry_point) else load_env_creator(spec.entry_point)
    metadata = getattr(creator, "metadata", None) or {}
    if config.obs == "state":
        return _make_state_env(config.id, kwargs, metadata)
    _check_renders(metadata, config.id)
    kwargs["render_mode"] = "rgb_array"
    if str(spec.entry_point).startswith("gymnasium.envs.mujoco"):
        # Render natively at the agent's size: far cheaper than rendering large, then resizing.
        kwargs.setdefault("height", config.size[0])
        kwargs.setdefault("width", config.size[1])
    env = gym.make(config.id, **kwargs)
    _check_renders(env.metadata, config.id)
    model = getattr(env.unwrapped, "model", None)
    if model is not None and type(model).__module__.startswith("mujoco"):
        from envs.mujoco_render import fast_rendering

        fast_rendering(model)
    return env


def _make_state_env(env_id: str, kwargs: dict, metadata: dict) -> gym.Env:
    """An env whose own observation is the agent's, made with render mode `rgb_array` when it has one, for
    policy videos (it renders only when a video asks for a frame); without it when `env.kwargs` sets a
    render mode or its constructor takes none (then it has no rendered videos)."""
    if "render_mode" in kwargs or "rgb_array" not in metadata.get("render_modes", []):
        return gym.make(env_id, **kwargs)
    try:
        return gym.make(env_id, render_mode="rgb_array", **kwargs)
    except TypeError as e:
        if "render_mode" not in str(e):
            raise
    return gym.make(env_id, **kwargs)


def _check_renders(metadata: dict, name: str) -> None:
    modes = metadata.get("render_modes", [])
    if "rgb_array" not in modes:
        raise EnvError(
            f"env '{name}' cannot give pixel observations: it does not render 'rgb_array' "
            f"(render modes: {modes}); use env.obs 'state'"
        )


def _wrap(config: EnvConfig) -> gym.Env:
    """The wrapper stack, innermost first."""
    base = make_base_env(config)
    env = base.env
    if config.action_repeat > 1 and not base.repeats:
        env = RepeatAction(env, config.action_repeat)  # rewards summed, stops at the episode's end
    if config.time_limit:
        env = TimeLimit(env, config.time_limit)  # counted in agent steps: outside the repeat
    if config.obs != "state" and not base.pixels:
        # Rendered once per agent step, after the repeat; the state (if kept) is named `vector`.
        env = AddRenderObservation(
            env, render_only=config.obs == "pixels", render_key="image", obs_key="vector"
        )
    if _has_image(env.observation_space):
        check_image_size(config.size)
        env = _if_active(ResizeImages(env, config.size))  # cv2 INTER_AREA, to env.size
        if config.grayscale:
            env = _if_active(GrayscaleImages(env))
    return env


def make_gym_env(config: EnvConfig, index: int = 0) -> gym.Env:
    """One Gymnasium env with the whole per-env stack; with `restart_on_error`, rebuilt when it raises."""
    if config.restart_on_error:
        return RestartOnError(partial(_wrap, config), config.id, index)
    return _wrap(config)


def make_vec_env(
    config: EnvConfig, seed: int, num_envs: int | None = None, parallel: bool | None = None
) -> VecEnv:
    """`num_envs` envs (default `config.num_envs`) stepped together; env i is seeded with `seed + i`.

    parallel (default `config.parallel`): each env in its own subprocess (AsyncVectorEnv, shared
    memory) instead of in this process (SyncVectorEnv). Both auto-reset on the next step.
    """
    check_config(config)
    num_envs = config.num_envs if num_envs is None else num_envs
    if num_envs < 1:
        raise EnvError(f"num_envs must be >= 1, got {num_envs}")
    parallel = config.parallel if parallel is None else parallel
    fns = [partial(make_gym_env, config, i) for i in range(num_envs)]
    # copy=False: the codec copies every observation into fresh arrays anyway.
    if parallel:
        vec = AsyncVectorEnv(fns, shared_memory=True, copy=False, autoreset_mode=AutoresetMode.NEXT_STEP)
    else:
        vec = SyncVectorEnv(fns, copy=False, autoreset_mode=AutoresetMode.NEXT_STEP)
    return VecEnv(vec, seed, config.id)


def _has_image(space: spaces.Space) -> bool:
    if isinstance(space, spaces.Dict):
        return any(is_image_space(s) for s in space.spaces.values())
    return is_image_space(space)


def _if_active(wrapper: gym.Wrapper) -> gym.Env:
    """The wrapper, or the env it wraps when it would change nothing."""
    return wrapper if wrapper.active else wrapper.env
