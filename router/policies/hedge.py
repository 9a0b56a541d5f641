"""Hedged requests: a second attempt when the first token is late; first token wins.

gRPC's hedging policy, which gRPC Python does not implement: the hedge starts after
the tier's observed p95 time to first token, on another replica (the balancer avoids
replicas the call already uses), and the losing attempt is cancelled at its tier.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from router import metrics
from router.call import Call
from router.pipeline import Backend
from router.stats import RetryBudget
from router.streams import Attempt, first_ready
from tiermesh.errors import StatusError
from tiermesh.v1 import mesh_pb2


class Hedge:
    def __init__(
        self,
        inner: Backend,
        tier: str,
        delay_s: Callable[[Call], float | None],
        budget: RetryBudget,
    ) -> None:
        self._inner = inner
        self._tier = tier
        self._delay_s = delay_s
        self._budget = budget

    async def generate(self, call: Call) -> AsyncIterator[mesh_pb2.GenerateResponse]:
        delay = self._delay_s(call)
        if delay is None or delay >= call.first_token_remaining():
            # No basis for a delay yet, or no time for a hedge to help.
            async for response in self._inner.generate(call):
                yield response
            return
        attempts = [Attempt(self._inner.generate(call))]
        winner = await first_ready(attempts, within_s=delay)
        if winner is None:
            if self._budget.try_withdraw():
                metrics.HEDGES.labels(self._tier, "started").inc()
                attempts.append(Attempt(self._inner.generate(call)))
            else:
                metrics.BUDGET_EXHAUSTED.labels(self._tier, "hedge").inc()
        try:
            winner = await self._first_success(attempts)
            if len(attempts) > 1:
                outcome = "hedge_won" if winner is attempts[1] else "primary_won"
                metrics.HEDGES.labels(self._tier, outcome).inc()
            for loser in attempts:
                if loser is not winner:
                    await loser.cancel()
            yield winner.first.result()
            async for response in winner.stream:
                yield response
        finally:
            for attempt in attempts:
                await attempt.cancel()

    @staticmethod
    async def _first_success(
        attempts: list[Attempt[mesh_pb2.GenerateResponse]],
    ) -> Attempt[mesh_pb2.GenerateResponse]:
        """The first attempt to produce a message; if all fail, the last failure."""
        remaining = list(attempts)
        while True:
            ready = await first_ready(remaining, within_s=None)
            assert ready is not None
            error = ready.first.exception()
            if error is None:
                return ready
            remaining.remove(ready)
            if not remaining or not isinstance(error, StatusError):
                raise error
