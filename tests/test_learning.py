"""The main job learns: the `small` preset on CartPole-v1 reaches a mean return of 150, seeded, on a CPU.

It takes about 15-25 minutes on 2 cores, so it is marked slow: `pytest -m slow tests/test_learning.py`.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
BUDGET = 3000  # env steps (a prefill, when configured, counts in them)
TARGET = 150.0  # mean return of the last episodes (CartPole-v1 caps at 500)
LAST = 5


def episode_returns(logdir: Path) -> list[float]:
    rows = [json.loads(line) for line in (logdir / "metrics.jsonl").read_text().splitlines() if line]
    return [row["episode/return"] for row in rows if "episode/return" in row]


@pytest.mark.slow
def test_small_preset_learns_cartpole(tmp_path):
    args = ["--configs", "cartpole", "small", "--seed", "0", "--run.steps", str(BUDGET)]
    args += ["--logdir", str(tmp_path), "--logger.wandb.mode", "disabled", "--run.log_every", "5"]
    proc = subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    returns = episode_returns(tmp_path)
    assert returns[0] < 60, "a random policy should not start near the target"
    assert np.mean(returns[-LAST:]) >= TARGET, returns[-20:]
