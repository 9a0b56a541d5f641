"""Retry before the first token, on another replica, within a retry budget."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from router import metrics
from router.call import Call
from router.pipeline import Backend
from router.stats import RetryBudget
from tiermesh.errors import StatusError
from tiermesh.v1 import mesh_pb2


class Retry:
    """Once a token has been sent a retry would repeat it, so only failures before
    the first token are retried; only UNAVAILABLE (the tier's fault); never past the
    deadline; and only while the budget allows, so an outage is not amplified."""

    def __init__(self, inner: Backend, tier: str, budget: RetryBudget, max_attempts: int) -> None:
        self._inner = inner
        self._tier = tier
        self._budget = budget
        self._max_attempts = max_attempts

    async def generate(self, call: Call) -> AsyncIterator[mesh_pb2.GenerateResponse]:
        self._budget.deposit()
        attempt = 1
        while True:
            sent = False
            try:
                async for response in self._inner.generate(call):
                    sent = True
                    yield response
                return
            except StatusError as e:
                if (
                    sent
                    or e.code != grpc.StatusCode.UNAVAILABLE
                    or attempt >= self._max_attempts
                    or call.first_token_remaining() <= 0
                ):
                    raise
                if not self._budget.try_withdraw():
                    metrics.BUDGET_EXHAUSTED.labels(self._tier, "retry").inc()
                    raise
                attempt += 1
                metrics.RETRIES.labels(self._tier).inc()
