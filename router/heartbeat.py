"""The event loop's heartbeat: a timer that wakes the router's loop every few
milliseconds, and the loop's lag that each wake-up observes.

The router keeps its deadlines with loop timers (a tier given up on, the cut-off, the
canned answer). On a virtual machine, a loop that sleeps long wakes late and runs slow:
a timer fires late by a share of its length, and the first Python after the wake-up
runs slower than warm, so an idle router's canned answer at a 1 s cut-off could reach
its caller past the deadline. A loop woken every `period_s` never sleeps long, so its
timers keep time (bench/results/loop-heartbeat.md measures with and without). The cost
is one callback per period.

Each wake-up's lateness is the loop's lag (Node's monitorEventLoopDelay, Envoy's
watchdog): how long a callback that was due waited, for a core or behind other
callbacks. It is exported as tiermesh_router_loop_lag_seconds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Heartbeat:
    """Wakes the running loop every `period_s` and hands `observe` each wake-up's lag."""

    def __init__(self, period_s: float, observe: Callable[[float], None]) -> None:
        if period_s <= 0:
            raise ValueError("a heartbeat needs a period above 0")
        self._period_s = period_s
        self._observe = observe
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0

    def start(self) -> None:
        """Start on the running loop (a callback chain, no task: nothing to await)."""
        self._loop = asyncio.get_running_loop()
        self._schedule(self._loop.time())

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _schedule(self, now: float) -> None:
        assert self._loop is not None
        # From now, not from when it was due: a loop that stalled gets one late beat,
        # not a burst of catch-up ones.
        self._due = now + self._period_s
        self._handle = self._loop.call_at(self._due, self._beat)

    def _beat(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        self._observe(max(0.0, now - self._due))
        self._schedule(now)
