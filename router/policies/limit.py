"""Per-tier stream limit with deadline-aware queueing: never queue past the deadline.

A call that finds the tier full waits for a slot only while the expected wait fits
its first-token budget and leaves time for the stream to finish; otherwise it is
shed at once with RESOURCE_EXHAUSTED (and a retry delay), so fallback can try the
next tier or the caller can back off, instead of timing out in a queue.
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
        self._taken = 0  # slots held, including ones just handed to a waiter
        self._started: dict[int, float] = {}  # running streams' start times
        self._waiters: deque[asyncio.Future[None]] = deque()
        # How long a stream holds its slot (peak-EWMA: pessimistic under change).
        self._hold = PeakEwma(expected_s)

    def wait_estimate(self) -> float:
        """What a call arriving now would wait for a slot (0 while one is free): the
        planner adds it to the tier's time to an answer."""
        return 0.0 if self._taken < self._max and not self._waiters else self.expected_wait()

    def expected_wait(self) -> float:
        # Streams already running longer than the estimate prove it low: use their age.
        now = time.monotonic()
        oldest = max((now - started for started in self._started.values()), default=0.0)
        ahead = len(self._waiters) + 1
        return ahead * max(self._hold.value, oldest) / self._max

    async def generate(self, call: Call) -> AsyncIterator[mesh_pb2.GenerateResponse]:
        await self._acquire(call)
        key = id(call)
        self._started[key] = started = time.monotonic()
        try:
            async for response in self._inner.generate(call):
                yield response
        finally:
            del self._started[key]
            self._hold.observe(time.monotonic() - started)
            self._release()

    async def _acquire(self, call: Call) -> None:
        if self._taken < self._max and not self._waiters:
            self._taken += 1
            return
        # The gRPC deadline covers the whole stream: a slot is worth waiting for only
        # if the stream can still finish in time, and its first token meet the tier's
        # budget. Give up a little early, so the caller hears "full, retry in…" (or
        # fallback moves on) rather than DEADLINE_EXCEEDED.
        left = min(call.first_token_remaining(), call.remaining() - self._hold.value)
        budget = left - min(0.05, 0.1 * max(left, 0.0))
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
                self._release()  # granted, but the caller left: pass the slot on
            raise
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)
            metrics.QUEUE_DEPTH.labels(self._tier).set(len(self._waiters))

    def _release(self) -> None:
        # Hand the slot straight to the next waiter (it stays taken), or free it.
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._taken -= 1

    def _shed(self, message: str) -> None:
        metrics.SHED.labels(self._tier).inc()
        raise StatusError(grpc.StatusCode.RESOURCE_EXHAUSTED, message, retry_after_s=self._hold.value)
