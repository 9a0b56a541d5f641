"""What the router expects of each tier for each task: how long to the first token, and
how long each token after it takes. Observed per (tier, task), since a Gold intent (one
label, scored) and a Gold bark (tokens streamed) are different work; until a task has
samples, the tier's configured priors (expected_ttft_s, expected_token_s) stand in.

The planner reads them to choose where a call can still be answered whole before its
deadline; hedging reads the time to first token."""

from __future__ import annotations

import time
from collections.abc import Mapping

from router.stats import Clock, Window, nearest_rank
from tiermesh.config import TaskName

# Samples older than these are forgotten. Answers tell a tier's speed for a while; that a
# tier was given up on is short-lived evidence unless renewed: a tier passed over because
# of it is tried again once it goes (a cold start recovers at once; a tier that no longer
# answers costs one attempt per 5 s).
MAX_AGE_S, GIVEN_UP_MAX_AGE_S = 30.0, 5.0


class TaskEstimate:
    """One tier's record for one task."""

    def __init__(self, ttft_s: float, token_s: float, size: int = 200, clock: Clock = time.monotonic) -> None:
        self.ttft_prior = ttft_s
        self.token_prior = token_s
        self._probe_until = 0.0
        self._first = Window(size, MAX_AGE_S, clock)
        self._given_up = Window(size, GIVEN_UP_MAX_AGE_S, clock)  # censored: at least this long
        self._per_token = Window(size, MAX_AGE_S, clock)

    @property
    def samples(self) -> int:
        return len(self._first) + len(self._given_up)

    def observe_first(self, seconds: float) -> None:
        """Time from the attempt's start to its first message, less any wait for a stream
        slot (the planner adds the queue's wait for each call itself)."""
        self._first.observe(seconds)

    def observe_given_up(self, seconds: float) -> None:
        """A tier given up on after `seconds` without a first message: at least this
        slow. Such samples count only while they outnumber real answers: one slow call (a
        cold cache) must not keep the tier out, a tier that no longer answers must."""
        self._given_up.observe(seconds)

    def observe_rest(self, tokens: int, seconds: float) -> None:
        """`tokens` tokens in all, the last `seconds` after the first one."""
        if tokens > 1:
            self._per_token.observe(seconds / (tokens - 1))

    def start_probe(self, now: float, until: float) -> bool:
        """Whether a call may try this tier although its record says it is too slow (a
        probe): one at a time, until `until` at the latest. A record is renewed only by
        calls that try the tier, so a tier passed over on samples taken under a burst
        would stay passed over, idle, until they age out; a probe renews it."""
        if self._probe_until > now:
            return False
        self._probe_until = until
        return True

    def end_probe(self) -> None:
        self._probe_until = 0.0

    def ttft(self, q: float) -> float:
        if len(self._given_up) > len(self._first):
            return nearest_rank(sorted([*self._first.values(), *self._given_up.values()]), q)
        observed = self._first.quantile(q)
        return self.ttft_prior if observed is None else observed

    def token_s(self, q: float) -> float:
        observed = self._per_token.quantile(q)
        return self.token_prior if observed is None else observed


class TierEstimates:
    """A tier's estimates, one per task, made on first use; `ttft_by_task` overrides the
    time-to-first-token prior for some tasks (Gold's encoder labels an intent far sooner
    than its LLM starts a bark)."""

    def __init__(
        self, ttft_s: float, token_s: float, ttft_by_task: Mapping[TaskName, float] | None = None
    ) -> None:
        self.ttft_s, self.token_s = ttft_s, token_s
        self._ttft_by_task: dict[str, float] = {task: s for task, s in (ttft_by_task or {}).items()}
        self._tasks: dict[str, TaskEstimate] = {}

    def task(self, task: str) -> TaskEstimate:
        estimate = self._tasks.get(task)
        if estimate is None:
            prior = self._ttft_by_task.get(task, self.ttft_s)
            estimate = self._tasks[task] = TaskEstimate(prior, self.token_s)
        return estimate
