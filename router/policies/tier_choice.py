"""Tier choice: the task's configured tier chain decides which tier serves a call."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence

import grpc

from router.call import Call
from router.pipeline import Backend
from tiermesh.config import TaskName, TierName
from tiermesh.errors import StatusError
from tiermesh.v1 import mesh_pb2


class TierChoice:
    """Send each call to the first tier of its task's chain that is configured."""

    def __init__(
        self, routes: Mapping[TaskName, Sequence[TierName]], tiers: Mapping[TierName, Backend]
    ) -> None:
        self._routes = routes
        self._tiers = tiers

    def plan(self, task: TaskName) -> list[TierName]:
        """The tiers that may serve `task`, best first."""
        return [tier for tier in self._routes.get(task, ()) if tier in self._tiers]

    async def generate(self, call: Call) -> AsyncIterator[mesh_pb2.GenerateResponse]:
        plan = self.plan(call.task)
        if not plan:
            raise StatusError(grpc.StatusCode.UNAVAILABLE, f"no tier serves {call.task} requests")
        async for response in self._tiers[plan[0]].generate(call):
            yield response
