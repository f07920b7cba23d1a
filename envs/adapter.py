"""The one adapter from Gymnasium's flags to the agent's: `terminated` / `truncated` / reset become
`is_terminal` / `is_last` / `is_first`.

A terminated step is both `is_last` and `is_terminal` (no bootstrapping past it); a truncated step is
only `is_last` (the value bootstraps). Works on `[N]` arrays (a vector env) and on scalars.
A first step comes from a reset, which has no reward and no termination: Gymnasium's next-step
auto-reset gives reward 0 and both flags False there, and so do `VecEnv.reset` and `RestartOnError`.
"""

from __future__ import annotations

import numpy as np


def to_step(obs: dict[str, np.ndarray], reward, terminated, truncated, is_first) -> dict[str, np.ndarray]:
    """obs: agent observation arrays; reward, terminated, truncated, is_first: scalars or [N].

    Returns the step dict: the observation keys plus `reward` (float32), `is_first`, `is_last`,
    `is_terminal` (bool), each an array of the flags' shape.
    """
    terminated = np.asarray(terminated, bool)
    step = dict(obs)
    step["reward"] = np.asarray(reward, np.float32)
    step["is_first"] = np.asarray(is_first, bool)
    step["is_last"] = np.asarray(terminated | truncated)
    step["is_terminal"] = terminated
    return step
