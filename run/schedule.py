"""Named schedules for the training loop: every n steps, every n seconds, and a train ratio.

Each schedule is a small callable; the step-based ones keep their position in a `state_dict` so a
resumed run fires at the same steps as the uninterrupted one would.
"""

from __future__ import annotations

import time
from typing import Callable


class Every:
    """Fires when the step counter crosses a multiple of `every` (n <= 0: never).

    Steps may advance by more than one per call (several envs); one call fires at most once even when
    it crosses several multiples.
    """

    def __init__(self, every: int):
        self.every = int(every)
        self.last = 0  # the multiple of `every` at which it last fired

    def __call__(self, step: int) -> bool:
        if self.every <= 0:
            return False
        current = (int(step) // self.every) * self.every
        if current > self.last:
            self.last = current
            return True
        return False

    def state_dict(self) -> dict:
        return {"last": self.last}

    def load_state_dict(self, state: dict) -> None:
        self.last = int(state["last"])


class Clock:
    """Fires when `seconds` have passed since it last fired (0: on every call; < 0: never).

    Wall time does not survive a restart, so a resumed clock starts counting afresh.
    """

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic):
        self.seconds = float(seconds)
        self.clock = clock
        self.last = clock()

    def __call__(self) -> bool:
        if self.seconds < 0:
            return False
        now = self.clock()
        if now - self.last >= self.seconds:
            self.last = now
            return True
        return False


class Ratio:
    """Updates to run for newly collected steps, so that updates / steps tends to `ratio`.

    The first step owes one update, so training starts at once (as the reference's `when.Ratio`); then
    fractional ratios accumulate: with ratio 0.25 every fourth step yields one more. The count owed is
    computed from the integer totals (1 + floor((steps - 1) * ratio) - updates done), so no rounding
    error builds up over a long run.
    """

    def __init__(self, ratio: float):
        if ratio < 0:
            raise ValueError(f"train ratio must be >= 0, got {ratio}")
        self.ratio = float(ratio)
        self.steps = 0
        self.updates = 0

    def __call__(self, new_steps: int) -> int:
        self.steps += int(new_steps)
        owed = 1 + int((self.steps - 1) * self.ratio) if self.ratio > 0 and self.steps > 0 else 0
        due = owed - self.updates
        self.updates += due
        return due

    def state_dict(self) -> dict:
        return {"steps": self.steps, "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.steps = int(state["steps"])
        self.updates = int(state["updates"])


def updates_per_step(train_ratio: float, batch_size: int, batch_length: int) -> float:
    """Updates per policy step: replayed steps per policy step divided by the steps in one batch (B x T)."""
    return train_ratio / (batch_size * batch_length)
