"""Tier choice: which tiers may still answer this call in time, and by when.

The task's route (configuration) lists tiers best first; a tier whose answers are
shorter than the call's max_tokens (Gold) is left out. Each tier but the last
gets a first-token budget that leaves the next tier twice its p95 time to first
token, so falling back can still meet the caller's deadline. A tier whose median
time to first token no longer fits its budget is skipped up front, when something
else can answer.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from router.call import Call
from router.stats import TierLatency
from tiermesh.config import TaskName, TierName

# Headroom kept for the next tier: a multiple of its observed p95 time to first token.
RESERVE_FACTOR = 2.0


@dataclass(frozen=True)
class Step:
    tier: TierName
    # Absolute time.monotonic() by which this tier's first token must arrive.
    first_token_by: float

    def has_whole_deadline(self, call: Call) -> bool:
        """Whether this tier's first token may take all the caller's time (the last step)."""
        return self.first_token_by >= call.deadline


class TierPlanner:
    def __init__(
        self,
        routes: Mapping[TaskName, Sequence[TierName]],
        latency: Mapping[TierName, TierLatency],
        max_tokens: Mapping[TierName, int] | None = None,
    ) -> None:
        self._routes = routes
        self._latency = latency
        self._max_tokens = max_tokens or {}

    def chain(self, call: Call) -> list[TierName]:
        """The configured tiers for the call's task, best first, that the router knows
        and that produce answers as long as the call asks for (Gold answers short)."""
        return [
            tier
            for tier in self._routes.get(call.task, ())
            if tier in self._latency and call.max_tokens <= (self._max_tokens.get(tier) or call.max_tokens)
        ]

    def plan(self, call: Call, has_last_resort: bool = False) -> tuple[list[Step], list[TierName]]:
        """(steps to try in order, tiers skipped because they cannot make it)."""
        chain = self.chain(call)
        now = time.monotonic()
        steps: list[Step] = []
        skipped: list[TierName] = []
        for i, tier in enumerate(chain):
            later = chain[i + 1 :]
            reserve = RESERVE_FACTOR * self._latency[later[0]].quantile(0.95) if later else 0.0
            first_token_by = call.deadline - reserve
            something_after = bool(later) or has_last_resort
            if something_after and self._latency[tier].quantile(0.5) > first_token_by - now:
                skipped.append(tier)
                continue
            steps.append(Step(tier, first_token_by))
        return steps, skipped
