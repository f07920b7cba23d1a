"""Atari games through ale-py: `atari_<game>`, e.g. `atari_pong`, `atari_ms_pacman`.

Needs the `atari` extra (`pip install -e '.[atari]'`; ale-py ships the ROMs). The Atari 100k protocol
of the reference: ALE v5 with no sticky actions (`repeat_action_probability=0`), the full 18-action
set, no no-op starts, frame skip 4 with a max-pool over the last two frames, screens resized to the
configured size (64 x 64), and episodes capped at 108,000 frames (27,000 agent steps; a truncation).

The frame skip IS the action repeat: `env.action_repeat` (4 in the `atari100k` preset) is given to
Gymnasium's AtariPreprocessing as `frame_skip`, and the generic stack does not repeat again.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
from gymnasium.wrappers import AtariPreprocessing

from envs.errors import EnvError

EXTRA = "pip install -e '.[atari]'"
# Frames per episode at most (30 minutes of play at 60 frames/s), as in the reference.
MAX_FRAMES = 108_000


def game_id(name: str) -> str:
    """'atari_pong' -> 'ALE/Pong-v5'; 'atari_ms_pacman' -> 'ALE/MsPacman-v5'."""
    game = name.removeprefix("atari_")
    return "ALE/" + "".join(part.capitalize() for part in game.split("_")) + "-v5"


def make_atari(name: str, size, grayscale: bool, frame_skip: int, **kwargs: Any) -> gym.Env:
    """The game `name` with the Atari 100k settings; kwargs go to `gym.make` (they may override them)."""
    try:
        import ale_py
    except ImportError:
        raise EnvError(f"env '{name}' needs ale-py, which is not installed; run: {EXTRA}") from None
    gym.register_envs(ale_py)
    env_id = game_id(name)
    if env_id not in gym.registry:
        games = sorted(k[4:-3].lower() for k in gym.registry if k.startswith("ALE/") and k.endswith("-v5"))
        raise EnvError(
            f"unknown Atari game '{name}' ({env_id}); e.g. atari_{', atari_'.join(games[:6])}, ..."
        )
    settings = dict(
        frameskip=1,
        repeat_action_probability=0.0,
        full_action_space=True,
        max_num_frames_per_episode=MAX_FRAMES,
    )
    env = gym.make(env_id, **{**settings, **kwargs})
    height, width = (int(s) for s in size)
    return AtariPreprocessing(
        env,
        noop_max=0,
        frame_skip=frame_skip,
        screen_size=(width, height),
        terminal_on_life_loss=False,
        grayscale_obs=grayscale,
        grayscale_newaxis=True,
    )
