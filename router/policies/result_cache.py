"""Bronze's result cache in front of the tiers: content a job already produced
(quests, lore, backstories pre-warmed by a game) is served at once, marked
TIER_CACHE, for the tasks configured with `result_cache`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

from router import metrics
from router.call import Call
from router.pipeline import Backend
from tiermesh.config import TaskName
from tiermesh.tier.v1 import tier_pb2
from tiermesh.v1 import mesh_pb2

Lookup = Callable[[Call], Awaitable[tier_pb2.LookupResultResponse | None]]


class ResultCache:
    def __init__(self, inner: Backend, lookup: Lookup, tasks: frozenset[TaskName]) -> None:
        self._inner = inner
        self._lookup = lookup
        self._tasks = tasks

    def generate(self, call: Call) -> AsyncIterator[mesh_pb2.GenerateResponse]:
        if call.task not in self._tasks or call.bypass_cache:
            return self._inner.generate(call)  # not cached: not in this call's path
        return self._cached(call)

    async def _cached(self, call: Call) -> AsyncIterator[mesh_pb2.GenerateResponse]:
        found = await self._lookup(call)
        if found is not None:
            metrics.series(metrics.CACHE, "result", "hit").inc()
            hit = mesh_pb2.GenerateResponse(
                text=found.text, tier=mesh_pb2.TIER_CACHE, finish_reason=mesh_pb2.FINISH_REASON_STOP
            )
            hit.usage.CopyFrom(found.usage)
            yield hit
            return
        metrics.series(metrics.CACHE, "result", "miss").inc()
        async for response in self._inner.generate(call):
            yield response
