"""Per-tier stream limit with deadline-aware, class-aware queueing.

A call that finds the tier full waits for a slot only while the expected wait fits its
first-token budget and leaves time for the stream to finish; otherwise it is shed at
once with RESOURCE_EXHAUSTED (and a retry delay), so fallback can try the next tier or
its canned answer, or the caller can back off, instead of timing out in a queue.

Waiting calls are served by traffic class and, within a class, fairly across tenants by
tokens (router/scheduling.py). Lower classes may not take the last slots (headroom), so
a critical call arriving finds one free. When the queue is full, or a higher class
arriving pushes a lower one past its deadline, the lower one is displaced: it has not
started, so nothing it sent is lost, and it hears at once instead of at its deadline.
A stream that has started is never displaced.

A tenant may have a share of the slots reserved (traffic.tenants.*.reserved_share): the
others never take those, so its calls find a slot at once up to its reservation however
hard another tenant floods, at the price of slots left idle while it is quiet.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Mapping

import grpc

from router import metrics
from router.call import Call
from router.pipeline import Backend
from router.scheduling import FairQueue, Waiter
from router.settings import TrafficSettings
from router.stats import PeakEwma
from tiermesh.config import PRIORITIES, TaskName
from tiermesh.errors import StatusError
from tiermesh.v1 import mesh_pb2

BAND = {name: band for band, name in enumerate(PRIORITIES)}


class StreamLimit:
    def __init__(
        self,
        inner: Backend,
        tier: str,
        max_streams: int,
        expected_s: float,
        traffic: TrafficSettings | None = None,
    ) -> None:
        traffic = traffic or TrafficSettings()
        self._inner = inner
        self._tier = tier
        self._classes = traffic.classes
        # The slots each class may fill: all but its headroom, and at least one.
        self._limit = [
            max(1, max_streams - math.ceil(traffic.headroom.get(name, 0.0) * max_streams))
            if self._classes
            else max_streams
            for name in PRIORITIES
        ]
        self._max_queue = max(1, math.ceil(traffic.queue_per_slot * max_streams))
        self._queue = FairQueue(
            len(PRIORITIES),
            traffic.aging_s if self._classes else math.inf,
            traffic.quantum_tokens,
            lambda tenant: traffic.tenant(tenant).weight,
        )
        self._max_streams = max_streams
        # Slots only their tenant may take (classes on only: off, there are no tenants).
        reserved = {name: math.floor(t.reserved_share * max_streams) for name, t in traffic.tenants.items()}
        self._reserved = {name: slots for name, slots in reserved.items() if slots} if self._classes else {}
        self._reserved_total = sum(self._reserved.values())
        self._held: dict[str, int] = {}  # slots held by each tenant with a reservation
        self._taken = 0  # slots held, including ones just handed to a waiter
        self._depth_reported = 0  # this queue's share of the tier's depth gauge
        self._started: dict[int, float] = {}  # running streams' start times
        # How long a stream holds its slot (peak-EWMA: pessimistic under change).
        self._hold = PeakEwma(expected_s)

    def _band(self, call: Call) -> int:
        return BAND[call.priority] if self._classes else 0

    def _tenant(self, client_id: str) -> str:
        return client_id if self._classes else ""

    def wait_estimate(self, call: Call) -> float:
        """What `call` would wait for a slot if it arrived now (0 while one is free for
        its class): the planner adds it to the tier's time to an answer."""
        band, tenant = self._band(call), self._tenant(call.client_id)
        return 0.0 if self._free(tenant, band) else self.expected_wait(tenant, band)

    def expected_wait(self, tenant: str, band: int) -> float:
        """Behind the waiters the fair queue would serve first: a tenant's own backlog
        makes its next call wait, another tenant's only by its turns."""
        tenant = self._tenant(tenant)
        return self._wait_behind(self._queue.ahead_of(tenant, band), band, tenant)

    def _wait_behind(self, ahead: float, band: int, tenant: str) -> float:
        """The wait for a slot of `band` behind `ahead` waiters, over the slots `tenant` may
        use (others' reservations are not). Streams already running longer than the
        estimate prove it low: their age is used instead."""
        now = time.monotonic()
        oldest = max((now - started for started in self._started.values()), default=0.0)
        usable = self._max_streams - self._reserved_total + self._reserved.get(tenant, 0)
        slots = max(1, min(self._limit[band], usable))
        return (ahead + 1) * max(self._hold.value, oldest) / slots

    def _band_fits(self, band: int) -> bool:
        return self._taken < self._limit[band]

    def _owns(self, tenant: str) -> bool:
        """A slot of `tenant`'s reservation is free: it takes it whatever its class's
        headroom (the free slots always cover every unused reservation)."""
        return self._held.get(tenant, 0) < self._reserved.get(tenant, 0)

    def _tenant_fits(self, tenant: str) -> bool:
        """Whether `tenant` may take a free slot and still leave every other tenant's
        unused reservation free."""
        if not self._reserved:
            return True
        owed = sum(
            max(0, slots - self._held.get(name, 0))
            for name, slots in self._reserved.items()
            if name != tenant
        )
        return self._taken + 1 + owed <= self._max_streams

    def _free(self, tenant: str, band: int) -> bool:
        """A slot this call may take, with nobody of its class or higher waiting who could
        take it instead."""
        return self._owns(tenant) or (
            self._band_fits(band)
            and self._tenant_fits(tenant)
            and not self._queue.could_take(band, self._band_fits, self._tenant_fits, self._owns)
        )

    def _take(self, tenant: str) -> None:
        self._taken += 1
        if tenant in self._reserved:
            self._held[tenant] = self._held.get(tenant, 0) + 1

    async def generate(self, call: Call) -> AsyncIterator[mesh_pb2.GenerateResponse]:
        waiter = await self._acquire(call)
        tenant = self._tenant(call.client_id)
        key = id(call)
        self._started[key] = started = time.monotonic()
        held = True
        try:
            async for response in self._inner.generate(call):
                if response.finish_reason and held:
                    if waiter is not None and response.HasField("usage"):
                        # Served by the fair queue: its tenant is charged what it really
                        # used. A tier that does not count the prompt leaves the estimate.
                        prompt = response.usage.prompt_tokens or call.prompt_tokens_estimate()
                        self._queue.charge(waiter, prompt + response.usage.completion_tokens)
                    # The tier is done with the call: its slot is free before the final
                    # message goes out, as the caller's trailers follow it at once
                    # (streams.run_out) and its next call must find the slot free.
                    self._done(key, started, tenant)
                    held = False
                yield response
        finally:
            if held:
                self._done(key, started, tenant)

    def _done(self, key: int, started: float, tenant: str) -> None:
        """The call's slot given back, and how long it was held observed."""
        del self._started[key]
        self._hold.observe(time.monotonic() - started)
        self._release(tenant)

    async def _acquire(self, call: Call) -> Waiter | None:
        """Take a slot, at once (None) or after waiting (the waiter that was served)."""
        band, tenant = self._band(call), self._tenant(call.client_id)
        if self._free(tenant, band):
            self._take(tenant)
            call.slot_waits[self._tier] = 0.0
            metrics.series(metrics.QUEUE_WAIT, self._tier, call.priority).observe(0.0)
            return None
        # The gRPC deadline covers the whole stream: a slot is worth waiting for only
        # if the stream can still finish in time, and its first token meet the tier's
        # budget. Give up a little early, so the caller hears "full, retry in…" (or
        # fallback moves on) rather than DEADLINE_EXCEEDED.
        left = min(call.first_token_remaining(), call.remaining() - self._hold.value)
        budget = left - min(0.05, 0.1 * max(left, 0.0))
        wait = self.expected_wait(tenant, band)
        if wait >= budget:
            self._shed(call.priority, "deadline", f"{self._tier} is full: expected wait {wait:.3f}s")
        if len(self._queue) >= self._max_queue:
            self._make_room(tenant, band, call.priority)
        now = time.monotonic()
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        cost = call.prompt_tokens_estimate() + call.max_tokens
        waiter = Waiter(tenant, band, cost, now, now + budget, granted, call.priority)
        self._queue.push(waiter)
        call.slot_waits[self._tier] = None
        self._displace_late(band)
        self._depth()
        try:
            await asyncio.wait_for(asyncio.shield(granted), timeout=budget)
        except TimeoutError:
            if not granted.done():
                self._queue.remove(waiter)
                self._shed(
                    call.priority, "deadline", f"{self._tier} is full: no stream slot within the deadline"
                )
            granted.result()  # granted just as the wait ended: keep the slot (displaced: raise)
        except BaseException:
            left = self._queue.remove(waiter)
            if not left and granted.done() and not granted.cancelled() and granted.exception() is None:
                self._release(tenant)  # granted, but the caller left: pass the slot on
            raise
        finally:
            self._depth()
        waited = time.monotonic() - now
        call.slot_waits[self._tier] = waited
        metrics.series(metrics.QUEUE_WAIT, self._tier, call.priority).observe(waited)
        return waiter

    def _make_room(self, tenant: str, band: int, priority: str) -> None:
        """A full queue takes a newcomer only in place of a call of a lower class, or of
        the same class from a tenant with more calls waiting than the newcomer's."""
        lowest = self._queue.lowest()
        if lowest is not None:
            lower, waiting, victim = lowest
            if lower > band:
                self._displace(victim, "displaced", "a call of a higher class took its place")
                return
            if lower == band and victim.tenant != tenant and waiting > self._queue.waiting(tenant, band) + 1:
                self._displace(victim, "displaced", "its client has more calls waiting than another's")
                return
        self._shed(priority, "full", f"{self._tier} is full: {len(self._queue)} calls wait")

    def _displace_late(self, band: int) -> None:
        """A higher class just queued ahead of the lower ones: those that can no longer
        get a slot before they must give up hear it now, while fallback still has time."""
        now = time.monotonic()
        for lower, waiter in self._queue.below(band):
            # Only the higher classes counted ahead of it: displace only the certain.
            wait = self._wait_behind(self._queue.ahead(lower - 1), lower, waiter.tenant)
            if now + wait >= waiter.give_up_at:
                self._displace(waiter, "displaced", "higher-class calls queued ahead of it")

    def _displace(self, waiter: Waiter, reason: str, why: str) -> None:
        self._queue.remove(waiter)
        if not waiter.granted.done():
            waiter.granted.set_exception(
                self._shed_error(waiter.priority, reason, f"{self._tier} is full: {why}")
            )

    def _release(self, tenant: str) -> None:
        self._taken -= 1
        if tenant in self._held:
            self._held[tenant] -= 1
        # Hand free slots to waiters, highest class first (it stays taken).
        while (waiter := self._queue.pop(self._band_fits, self._tenant_fits, self._owns)) is not None:
            if not waiter.granted.done():
                self._take(waiter.tenant)
                waiter.granted.set_result(None)

    def _depth(self) -> None:
        # Added, not set: a tier may have several queues (StreamLimits).
        depth = len(self._queue)
        metrics.QUEUE_DEPTH.labels(self._tier).inc(depth - self._depth_reported)
        self._depth_reported = depth

    def _shed(self, priority: str, reason: str, message: str) -> None:
        raise self._shed_error(priority, reason, message)

    def _shed_error(self, priority: str, reason: str, message: str) -> StatusError:
        metrics.SHED.labels(self._tier).inc()
        metrics.CLASS_SHED.labels(self._tier, priority, reason).inc()
        return StatusError(grpc.StatusCode.RESOURCE_EXHAUSTED, message, retry_after_s=self._hold.value)


class StreamLimits:
    """A tier's stream limits when some tasks have slots of their own.

    A task whose answers come from capacity of its own gets its own limit and queue: Gold
    labels intents with an encoder model beside its LLM, so an intent waiting behind
    barks for one of the LLM's slots waits for work it would not share. The other tasks
    share the tier's limit (none: they pass unlimited).
    """

    def __init__(
        self, inner: Backend, shared: StreamLimit | None, own: Mapping[TaskName, StreamLimit]
    ) -> None:
        self._inner = inner
        self._shared = shared
        self._own = own

    def _limit(self, call: Call) -> StreamLimit | None:
        return self._own.get(call.task, self._shared)

    def wait_estimate(self, call: Call) -> float:
        limit = self._limit(call)
        return limit.wait_estimate(call) if limit is not None else 0.0

    async def generate(self, call: Call) -> AsyncIterator[mesh_pb2.GenerateResponse]:
        limit = self._limit(call)
        async for response in (limit or self._inner).generate(call):
            yield response
