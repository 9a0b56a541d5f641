"""Tier choice: the best tier that can still answer the call whole before its deadline,
and by when it must have started.

The task's route (configuration) lists tiers best first; a tier whose answers are shorter
than the call's max_tokens (Gold) is left out. The plan is made one step at a time, with
the time left then (a tier that failed fast leaves the next one more):

1. A tier can answer when its expected time to a whole answer fits before the cut-off
   (the deadline less the router's margin): queue wait (its stream limit's estimate) +
   time to first token + the rest of a minimal answer (`min_tokens` tokens for a
   streamed task; an intent is one label). Medians: a tier that cannot finish is never
   handed time.
2. The best tier that can answer is tried. It is given up on (no first token, or for an
   intent no whole label) early enough that the next tier that can answer still finishes
   by its p95 (with some slack), but only when the best tier's own p95, with the same
   slack, fits in what is then left: the best tier is never skipped, nor cut short, to
   keep time for a worse one.
   Without a canned answer, a streamed answer given up on this way keeps running beside
   the next tier's (fallback.py), and answers if it starts while the next one still could.
3. A streamed task's max_tokens is lowered to what the tier's token rate fits before the
   cut-off (never below min_tokens); the answer then ends FINISH_REASON_DEADLINE.
4. When no tier can answer by its record, but the best one could by its configured
   priors with no queue, and the call has a last resort (its canned answer, sent at the
   cut-off whatever happens), that tier is tried anyway as a probe, one call at a time per
   tier and task: a record is renewed only by calls that try the tier, and one taken
   under a burst would otherwise keep an idle tier passed over until it ages out.

docs/router.md works this through for each task.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

from router.call import Call
from router.estimates import TierEstimates
from router.stats import Clock
from tiermesh.config import TaskName, TierName

# Tasks whose answer must arrive whole: an intent is a label, never part of one.
WHOLE = frozenset({"intent"})
# Time kept for the next tier is its p95 need, a quarter more and 5 ms: a timer fires
# late, and the next attempt takes its own time to start. The best tier is given up on
# no sooner than its own p95 with the same slack: a tier whose answers all take about as
# long (a Bronze job) would otherwise be given up on just before half of them land.
RESERVE_SLACK, RESERVE_FLOOR_S = 1.25, 0.005


@dataclass(frozen=True)
class Step:
    tier: TierName
    # Absolute time.monotonic(): the first token (for a whole-answer task, the whole
    # answer) by then, or the next step.
    start_by: float
    # What this attempt may generate: the call's, or fewer to fit the deadline.
    max_tokens: int
    # Tried although its record says it cannot answer in time (rule 4): ended with
    # TierEstimates.task(...).end_probe().
    probe: bool = False
    # start_by keeps time for a later tier (rule 2): this tier may be given up on while
    # it could still answer before the cut-off.
    keeps_reserve: bool = False

    def shortened(self, call: Call) -> bool:
        return self.max_tokens < call.max_tokens


def reserve_for(need: Need) -> float:
    return RESERVE_SLACK * need.p95 + RESERVE_FLOOR_S


@dataclass(frozen=True)
class Need:
    """A tier's expected time to a minimal whole answer, at the median and the p95."""

    p50: float
    p95: float
    ttft: float  # median time to first token, queue included
    token_s: float  # median time per token after the first
    wait: float  # the queue's share

    def full(self, left: float) -> bool:
        """Whether only its queue keeps the tier from answering in `left` seconds."""
        return self.wait > 0 and self.p50 > left >= self.p50 - self.wait


class TierPlanner:
    def __init__(
        self,
        routes: Mapping[TaskName, Sequence[TierName]],
        estimates: Mapping[TierName, TierEstimates],
        max_tokens: Mapping[TierName, int] | None = None,
        min_tokens: Mapping[TaskName, int] | None = None,
        queue_wait: Mapping[TierName, Callable[[Call], float]] | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self._routes = routes
        self._estimates = estimates
        self._max_tokens = max_tokens or {}
        self._min_tokens = min_tokens or {}
        self._queue_wait = queue_wait or {}
        self._clock = clock

    def chain(self, call: Call) -> list[TierName]:
        """The configured tiers for the call's task, best first, that the router knows
        and that produce answers as long as the call asks for (Gold answers short)."""
        return [
            tier
            for tier in self._routes.get(call.task, ())
            if tier in self._estimates and call.max_tokens <= (self._max_tokens.get(tier) or call.max_tokens)
        ]

    def need(self, call: Call, tier: TierName) -> Need:
        estimate = self._estimates[tier].task(call.task)
        wait = self._queue_wait[tier](call) if tier in self._queue_wait else 0.0
        rest = 0 if call.task in WHOLE else max(0, self.min_tokens(call) - 1)
        ttft = wait + estimate.ttft(0.5)
        token_s = estimate.token_s(0.5)
        return Need(
            p50=ttft + rest * token_s,
            p95=wait + estimate.ttft(0.95) + rest * estimate.token_s(0.95),
            ttft=ttft,
            token_s=token_s,
            wait=wait,
        )

    def min_tokens(self, call: Call) -> int:
        return min(call.max_tokens, self._min_tokens.get(call.task, 1))

    def next_step(
        self, call: Call, tried: Collection[TierName], cut_at: float, last_resort: bool = False
    ) -> tuple[Step | None, list[tuple[TierName, Need]]]:
        """The next tier to try with the time left before `cut_at` (None when none can
        answer in it), and the better tiers passed over because they cannot (with what
        they would need: a full one's queue is why). `last_resort`: the call is answered
        at the cut-off whatever the tiers do, so a probe costs it nothing (rule 4)."""
        now = self._clock()
        left = cut_at - now
        candidates = [tier for tier in self.chain(call) if tier not in tried]
        needs = {tier: self.need(call, tier) for tier in candidates}
        able = [tier for tier in candidates if needs[tier].p50 <= left]
        if not able:
            passed = [(tier, needs[tier]) for tier in candidates]
            if last_resort and candidates and not tried and left > 0:
                probe = self._probe(call, candidates[0], needs[candidates[0]], cut_at)
                if probe is not None:
                    return probe, passed[1:]
            return None, passed
        best, *later = able
        passed = [(tier, needs[tier]) for tier in candidates[: candidates.index(best)]]
        need = needs[best]
        # Time kept for the next tier that can still answer, if the best fits beside it.
        reserve = next((reserve_for(needs[t]) for t in later if reserve_for(needs[t]) <= left), 0.0)
        # Kept only when the best tier's p95 (with slack) fits beside it: given its median
        # alone, the best tier would be given up on half the time, for a worse one.
        keeps_reserve = reserve > 0 and reserve_for(need) <= left - reserve
        start_by = cut_at - reserve if keeps_reserve else cut_at
        max_tokens = call.max_tokens
        if call.task not in WHOLE:
            # A streamed answer must start early enough to stream its minimal length.
            start_by = min(start_by, cut_at - (self.min_tokens(call) - 1) * need.token_s)
            max_tokens = self.fitting(call, left - need.ttft, need.token_s)
        return Step(best, start_by, max_tokens, keeps_reserve=keeps_reserve), passed

    def fitting(self, call: Call, streaming_s: float, token_s: float) -> int:
        """The call's max_tokens lowered to what `streaming_s` of streaming at `token_s`
        a token fits (the first token included), never below min_tokens (rule 3)."""
        fits = 1 + math.floor(max(0.0, streaming_s) / max(token_s, 1e-6))
        return max(self.min_tokens(call), min(call.max_tokens, fits))

    def _probe(self, call: Call, tier: TierName, need: Need, cut_at: float) -> Step | None:
        """The best tier, tried although its record says it is too slow, when its
        configured priors say it would answer in time and no queue (current evidence)
        keeps it out; given the time left to start, less what its minimal answer takes at
        the configured rate."""
        estimate = self._estimates[tier].task(call.task)
        now = self._clock()
        left = cut_at - now
        rest = 0 if call.task in WHOLE else self.min_tokens(call) - 1
        if need.wait > 0 or estimate.ttft_prior + rest * estimate.token_prior > left:
            return None
        if not estimate.start_probe(now, cut_at):
            return None
        max_tokens = call.max_tokens
        if call.task not in WHOLE:
            # Shortened as rule 3 would, at the prior rate: the tier ends the answer
            # itself, rather than a timer at the cut-off.
            max_tokens = self.fitting(call, left - estimate.ttft_prior, estimate.token_prior)
        return Step(tier, cut_at - rest * estimate.token_prior, max_tokens, probe=True)

    def left(self, cut_at: float) -> float:
        return cut_at - self._clock()
