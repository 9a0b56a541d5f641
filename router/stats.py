"""Small latency statistics the policies share. All take an injectable clock."""

from __future__ import annotations

import bisect
import math
import time
from collections import deque
from collections.abc import Callable, Sequence

Clock = Callable[[], float]


def nearest_rank(ordered: Sequence[float], q: float) -> float:
    """The q-quantile of sorted, non-empty `ordered` by nearest rank: a value that was
    observed, never an interpolation."""
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class PeakEwma:
    """Latency estimate that jumps up at once and decays slowly (Finagle/Linkerd):
    a replica that just turned slow is avoided immediately, forgiven gradually."""

    def __init__(self, initial_s: float, decay_s: float = 10.0, clock: Clock = time.monotonic):
        self._value = initial_s
        self._decay_s = decay_s
        self._clock = clock
        self._stamp = clock()
        self.samples = 0

    def observe(self, latency_s: float) -> None:
        now = self._clock()
        if latency_s > self._value:
            self._value = latency_s
        else:
            weight = math.exp(-(now - self._stamp) / self._decay_s)
            self._value = self._value * weight + latency_s * (1 - weight)
        self._stamp = now
        self.samples += 1

    @property
    def value(self) -> float:
        return self._value


class Window:
    """The last `size` observations, for percentiles (time to first token per tier), none
    older than `max_age_s` when given: a tier judged slow and so no longer tried would
    otherwise keep that verdict for good."""

    def __init__(
        self, size: int = 200, max_age_s: float | None = None, clock: Clock = time.monotonic
    ) -> None:
        self._values: deque[tuple[float, float]] = deque(maxlen=size)  # (when, value), oldest first
        self._max_age_s = max_age_s
        self._clock = clock
        # The same values, kept sorted as they come and go: the planner asks for
        # quantiles on every call, and nearly every call also observes, so sorting on
        # demand sorted the whole window once a call.
        self._ordered: list[float] = []

    def observe(self, value: float) -> None:
        if not math.isfinite(value):
            return  # a NaN has no place in an order
        if len(self._values) == self._values.maxlen:
            self._forget(self._values[0][1])
        self._values.append((self._clock() if self._max_age_s is not None else 0.0, value))
        bisect.insort(self._ordered, value)

    def _forget(self, value: float) -> None:
        del self._ordered[bisect.bisect_left(self._ordered, value)]

    def _expire(self) -> None:
        if self._max_age_s is None:
            return
        oldest = self._clock() - self._max_age_s
        while self._values and self._values[0][0] < oldest:
            self._forget(self._values.popleft()[1])

    def __len__(self) -> int:
        self._expire()
        return len(self._values)

    def values(self) -> list[float]:
        self._expire()
        return [value for _, value in self._values]

    def quantile(self, q: float) -> float | None:
        self._expire()
        if not self._ordered:
            return None
        return nearest_rank(self._ordered, q)


class RetryBudget:
    """Retries (and hedges) may add at most `ratio` of live traffic, plus a small
    floor of `min_per_s` so a quiet service can still retry (Finagle's RetryBudget).
    An outage therefore cannot multiply the load on what is still up."""

    def __init__(self, ratio: float = 0.2, min_per_s: float = 5.0, clock: Clock = time.monotonic) -> None:
        self._ratio = ratio
        self._min_per_s = min_per_s
        self._clock = clock
        self._earned = 0.0
        self._floor = min_per_s
        self._stamp = clock()

    def deposit(self) -> None:
        """One live request earns `ratio` of a retry (capped: no hoarding for a storm)."""
        self._earned = min(self._earned + self._ratio, max(10.0, 100 * self._ratio))

    def try_withdraw(self) -> bool:
        now = self._clock()
        self._floor = min(self._min_per_s, self._floor + (now - self._stamp) * self._min_per_s)
        self._stamp = now
        # Tolerance: ten deposits of 0.2 sum to 1.999…, which is two retries.
        if self._earned >= 1.0 - 1e-9:
            self._earned -= 1.0
            return True
        if self._floor >= 1.0 - 1e-9:
            self._floor -= 1.0
            return True
        return False


class Breaker:
    """Per-replica circuit breaker with exponential ejection and a half-open trial.

    closed: calls flow. After `failures_to_open` consecutive tier faults (or an
    explicit `eject`, e.g. latency outlier) it opens for base × 2^n seconds (capped);
    then one trial call is let through: success closes it, failure reopens it longer.
    """

    def __init__(
        self,
        failures_to_open: int = 5,
        base_ejection_s: float = 1.0,
        max_ejection_s: float = 30.0,
        clock: Clock = time.monotonic,
    ) -> None:
        self._failures_to_open = failures_to_open
        self._base = base_ejection_s
        self._max = max_ejection_s
        self._clock = clock
        self.consecutive_failures = 0
        self.ejections = 0
        self._open_until: float | None = None
        self._trial_in_flight = False

    @property
    def state(self) -> str:
        if self._open_until is None:
            return "closed"
        return "open" if self._clock() < self._open_until else "half_open"

    def allows(self) -> bool:
        state = self.state
        return state == "closed" or (state == "half_open" and not self._trial_in_flight)

    def on_pick(self) -> None:
        if self.state == "half_open":
            self._trial_in_flight = True

    def success(self) -> None:
        self.consecutive_failures = 0
        self.ejections = 0
        self._open_until = None
        self._trial_in_flight = False

    def failure(self) -> bool:
        """Count a tier fault; True when this opened (or reopened) the breaker."""
        self.consecutive_failures += 1
        if self.state == "half_open" or self.consecutive_failures >= self._failures_to_open:
            self.eject()
            return True
        return False

    def release_trial(self) -> None:
        """A trial call that ended without a verdict (the caller left): allow another."""
        self._trial_in_flight = False

    def eject(self) -> None:
        self._open_until = self._clock() + min(self._max, self._base * 2**self.ejections)
        self.ejections += 1
        self._trial_in_flight = False
