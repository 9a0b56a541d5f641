"""The event loop's heartbeat (router/heartbeat.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from router.heartbeat import Heartbeat


class ManualLoop:
    """The two things a Heartbeat asks of its loop, with a clock the test moves."""

    def __init__(self) -> None:
        self.now = 100.0
        self.timers: list[tuple[float, Callable[[], object]]] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], object]) -> asyncio.TimerHandle:
        self.timers.append((when, callback))
        return asyncio.TimerHandle(when, callback, (), asyncio.get_running_loop())

    def run_due(self) -> None:
        due, self.timers = self.timers, []
        for _, callback in due:
            callback()


def on(loop: ManualLoop, period_s: float) -> tuple[Heartbeat, list[float]]:
    lags: list[float] = []
    heartbeat = Heartbeat(period_s, lags.append)
    manual: Any = loop
    heartbeat._loop = manual
    heartbeat._schedule(loop.now)
    return heartbeat, lags


async def test_each_beat_observes_how_late_it_ran() -> None:
    loop = ManualLoop()
    _, lags = on(loop, 0.01)
    assert [when for when, _ in loop.timers] == [pytest.approx(100.01)]
    loop.now = 100.013
    loop.run_due()
    assert lags == [pytest.approx(0.003)]


async def test_a_stalled_loop_gets_one_late_beat_not_a_burst() -> None:
    loop = ManualLoop()
    _, lags = on(loop, 0.01)
    loop.now = 100.5  # the loop was held for half a second
    loop.run_due()
    assert lags == [pytest.approx(0.49)]
    # The next beat is a period from now, not at once to catch up.
    assert [when for when, _ in loop.timers] == [pytest.approx(100.51)]


async def test_the_heartbeat_sees_a_blocked_loop_and_stops_when_told() -> None:
    lags: list[float] = []
    heartbeat = Heartbeat(0.005, lags.append)
    heartbeat.start()
    await asyncio.sleep(0.02)
    time.sleep(0.06)  # noqa: ASYNC251  (blocks the loop on purpose, as a slow callback would)
    await asyncio.sleep(0.01)
    heartbeat.stop()
    assert max(lags) >= 0.05
    seen = len(lags)
    await asyncio.sleep(0.03)
    assert len(lags) == seen


def test_a_heartbeat_needs_a_period() -> None:
    with pytest.raises(ValueError, match="period"):
        Heartbeat(0.0, lambda lag: None)
