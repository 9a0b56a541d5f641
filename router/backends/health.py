"""A replica's health as grpc.health.v1 Watch tells it, on a grpc.aio channel: the piece
every TierService adapter composes (router/backends/tier_grpc.py, tier_native.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


class GrpcHealth:
    def __init__(self, channel: grpc.aio.Channel, service: str = "", retry_s: float = 1.0) -> None:
        self._channel = channel
        self._service = service
        self._retry_s = retry_s

    async def watch(self) -> AsyncIterator[bool]:
        """Serving or not, each time it is (re)learned; reconnects forever."""
        stub = health_pb2_grpc.HealthStub(self._channel)
        request = health_pb2.HealthCheckRequest(service=self._service)
        while True:
            try:
                async for update in stub.Watch(request):
                    yield update.status == health_pb2.HealthCheckResponse.SERVING
            except grpc.aio.AioRpcError as e:
                # Unreachable: not serving. No health service: let the breaker judge.
                yield e.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
            await asyncio.sleep(self._retry_s)
