"""Per-client rate limits: a token bucket per client (its authenticated id, or its
`x-client-id` when authentication is off), RetryInfo when refused. A client may have
a quota of its own (API key or auth.quotas); the others get the default."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping

import grpc

from router import metrics
from router.call import Call
from router.pipeline import Backend
from router.stats import Clock
from tiermesh.errors import StatusError
from tiermesh.v1 import mesh_pb2


class TokenBucket:
    def __init__(self, rate_per_s: float, burst: int, now: float) -> None:
        self.rate = rate_per_s
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = now

    def take(self, now: float) -> float:
        """0 when a token was taken, else the seconds until one will be there."""
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class Admission:
    # Buckets kept for this many recent clients; an evicted client starts full again.
    MAX_CLIENTS = 10_000

    def __init__(
        self,
        inner: Backend,
        rate_per_s: float,
        burst: int,
        clock: Clock = time.monotonic,
        quotas: Mapping[str, tuple[float, int]] | None = None,
    ) -> None:
        self._inner = inner
        self._rate = rate_per_s
        self._burst = burst
        self._clock = clock
        self._quotas = quotas or {}
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def _bucket(self, client: str, now: float) -> TokenBucket:
        bucket = self._buckets.pop(client, None)
        if bucket is None:
            rate, burst = self._quotas.get(client, (self._rate, self._burst))
            bucket = TokenBucket(rate, burst, now)
        self._buckets[client] = bucket  # most recent last
        if len(self._buckets) > self.MAX_CLIENTS:
            self._buckets.popitem(last=False)
        return bucket

    async def generate(self, call: Call) -> AsyncIterator[mesh_pb2.GenerateResponse]:
        now = self._clock()
        bucket = self._bucket(call.client_id, now)
        wait = bucket.take(now)
        if wait:
            metrics.RATE_LIMITED.inc()
            raise StatusError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"client {call.client_id!r} is over its rate limit of {bucket.rate:g} calls/s",
                retry_after_s=wait,
            )
        async for response in self._inner.generate(call):
            yield response
