"""Per-tier stream limit with deadline-aware queueing: never queue past the deadline.

A call that finds the tier full waits for a slot only while the expected wait fits
its first-token budget; otherwise it is shed at once with RESOURCE_EXHAUSTED, so
fallback can try the next tier (or the caller can back off) instead of timing out.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator

import grpc

from router import metrics
from router.call import Call
from router.pipeline import Backend
from router.stats import PeakEwma
from tiermesh.errors import StatusError
from tiermesh.v1 import mesh_pb2


class StreamLimit:
    def __init__(self, inner: Backend, tier: str, max_streams: int, expected_s: float) -> None:
        self._inner = inner
        self._tier = tier
        self._max = max_streams
        self._active = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        # How long a stream holds its slot (peak-EWMA: pessimistic under change).
        self._hold = PeakEwma(expected_s)

    def expected_wait(self) -> float:
        ahead = len(self._waiters) + 1
        return ahead * self._hold.value / self._max

    async def generate(self, call: Call) -> AsyncIterator[mesh_pb2.GenerateResponse]:
        await self._acquire(call)
        started = time.monotonic()
        try:
            async for response in self._inner.generate(call):
                yield response
        finally:
            self._hold.observe(time.monotonic() - started)
            self._release()

    async def _acquire(self, call: Call) -> None:
        if self._active < self._max and not self._waiters:
            self._active += 1
            return
        budget = call.first_token_remaining()
        if self.expected_wait() >= budget:
            self._shed(f"{self._tier} is full: expected wait {self.expected_wait():.3f}s")
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        metrics.QUEUE_DEPTH.labels(self._tier).set(len(self._waiters))
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout=budget)
        except TimeoutError:
            if waiter.done():  # granted just as the wait ended: keep the slot
                return
            self._shed(f"{self._tier} is full: no stream slot within the deadline")
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._release()  # granted, but the caller left: pass it on
            raise
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)
            metrics.QUEUE_DEPTH.labels(self._tier).set(len(self._waiters))

    def _release(self) -> None:
        # Hand the slot straight to the next waiter, or free it.
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._active -= 1

    def _shed(self, message: str) -> None:
        metrics.SHED.labels(self._tier).inc()
        raise StatusError(grpc.StatusCode.RESOURCE_EXHAUSTED, message, retry_after_s=self._hold.value)
