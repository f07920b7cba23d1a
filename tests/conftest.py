"""Shared test settings: one torch thread (tests may share the CPU), wandb never online, and the
global random state seeded before every test."""

import os

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("MUJOCO_GL", "egl")

import random  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same global random state, whatever ran before it: a failure
    reproduces alone, and no test passes or fails by the order the suite happens to run in."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
