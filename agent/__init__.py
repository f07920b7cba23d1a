"""The agent: world model + actor-critic learned in imagination, and the optimizers that train them."""

from __future__ import annotations

import torch

from agent.agent import Agent
from agent.precision import resolve_precision
from configs.schema import Config
from envs.spaces import ActionSpace, ArraySpec

__all__ = ["Agent", "make_agent", "resolve_device"]


def resolve_device(name: str) -> torch.device:
    """`run.device`: "auto" picks CUDA when available, else the CPU; anything else is taken as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"run.device must be 'auto', 'cpu', 'cuda' or 'cuda:<n>', got {name!r}") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"run.device is {name!r} but CUDA is not available; use 'cpu' or 'auto'")
    return device


def make_agent(config: Config, obs_space: dict[str, ArraySpec], act_space: ActionSpace) -> Agent:
    """Build the Agent from the root config (the one place in agent/ that sees it).

    The continuation discount 1 - 1/actor_critic.discount_horizon is computed inside the Agent;
    `run.precision: auto` is resolved here for the device (train.py has resolved it already, so that
    its config.yaml holds the value used).
    """
    device = resolve_device(config.run.device)
    return Agent(
        config.world_model,
        config.actor_critic,
        config.optim,
        obs_space,
        act_space,
        device,
        resolve_precision(config.run.precision, device),
        config.run.compile_mode if config.run.compile else None,
        config.replay.context,
        config.run.compile_fallback,
    )
