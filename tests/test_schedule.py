"""Schedules: Every fires on crossing multiples, Clock on elapsed time, Ratio accumulates fractions."""

import pytest

from run.schedule import Clock, Every, Ratio, updates_per_step


def test_every_fires_once_per_crossed_multiple():
    every = Every(10)
    fired = [step for step in range(0, 51) if every(step)]
    assert fired == [10, 20, 30, 40, 50]


def test_every_with_large_increments_fires_once_per_call():
    every = Every(10)
    assert [every(s) for s in (4, 8, 12, 35, 36, 40)] == [False, False, True, True, False, True]


@pytest.mark.parametrize("n", [0, -5])
def test_every_nonpositive_never_fires(n):
    every = Every(n)
    assert not any(every(step) for step in range(100))


def test_every_state_round_trip_continues_at_the_same_steps():
    a = Every(7)
    for step in range(20):
        a(step)
    b = Every(7)
    b.load_state_dict(a.state_dict())
    rest = range(20, 60)
    assert [a(s) for s in rest] == [b(s) for s in rest]


def test_clock_fires_after_the_interval():
    now = [0.0]
    clock = Clock(5.0, clock=lambda: now[0])
    results = []
    for t in (1.0, 4.9, 5.0, 6.0, 9.9, 10.0):
        now[0] = t
        results.append(clock())
    assert results == [False, False, True, False, False, True]


def test_clock_zero_fires_always_negative_never():
    assert all(Clock(0.0)() for _ in range(5))
    assert not any(Clock(-1.0)() for _ in range(5))


@pytest.mark.parametrize("ratio", [0.25, 1 / 3, 2.0, 0.7, 512 / 1024])
def test_ratio_total_updates_are_one_plus_floor_of_later_steps_times_ratio(ratio):
    schedule = Ratio(ratio)
    total = 0
    for steps in range(1, 2001):
        total += schedule(1)
        assert total == 1 + int((steps - 1) * ratio)


def reference_ratio(ratio):
    """The reference's `elements.when.Ratio`, called with the step counter after each step."""
    prev = None

    def due(step):
        nonlocal prev
        if prev is None:
            prev = step
            return 1
        repeats = int((step - prev) * ratio)
        prev += repeats / ratio
        return repeats

    return due


@pytest.mark.parametrize("ratio", [0.25, 2.0, 0.5, 1 / 32])
def test_ratio_gives_the_references_updates_step_by_step(ratio):
    ours, theirs = Ratio(ratio), reference_ratio(ratio)
    assert [ours(1) for _ in range(500)] == [theirs(step) for step in range(1, 501)]


def test_ratio_fractional_quarter_starts_at_once_then_every_fourth_step():
    schedule = Ratio(0.25)
    assert [schedule(1) for _ in range(9)] == [1, 0, 0, 0, 1, 0, 0, 0, 1]


def test_ratio_zero_never_trains():
    schedule = Ratio(0.0)
    assert sum(schedule(4) for _ in range(100)) == 0


def test_ratio_with_several_envs_and_state_round_trip():
    a = Ratio(1.5)
    # 4 steps: 1 + floor(3 * 1.5); then 6 per 4 steps.
    assert [a(4) for _ in range(3)] == [5, 6, 6]
    a(1)
    b = Ratio(1.5)
    b.load_state_dict(a.state_dict())
    assert [a(1) for _ in range(5)] == [b(1) for _ in range(5)]


def test_ratio_rejects_negative():
    with pytest.raises(ValueError, match="train ratio must be >= 0"):
        Ratio(-1)


def test_updates_per_step_is_ratio_over_batch_steps():
    assert updates_per_step(512, 16, 64) == 0.5
    assert updates_per_step(32, 16, 64) == 1 / 32
