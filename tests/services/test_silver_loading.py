"""Silver's readiness: listening at once, NOT_SERVING and UNAVAILABLE until loaded."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.silver.engine import SilverEngine
from services.silver.server import start_silver
from services.silver.settings import SilverSettings
from tiermesh.tier.v1 import tier_pb2, tier_pb2_grpc
from tiermesh.tls import TlsSettings

pytestmark = pytest.mark.asyncio(loop_scope="session")


class GatedEngine(SilverEngine):
    """TEST DOUBLE: a SilverEngine whose loading finishes when the test says so."""

    def __init__(self) -> None:
        super().__init__(SilverSettings())
        self.release = asyncio.Event()

    async def start(self) -> None:
        await self.release.wait()
        self._llm = object()  # loaded, as far as readiness goes

    def shutdown(self) -> None:
        self._llm = None


async def test_not_serving_and_unavailable_until_the_engine_is_loaded() -> None:
    engine = GatedEngine()
    silver = await start_silver(SilverSettings(listen="127.0.0.1:0"), TlsSettings(), engine)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{silver.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            service = health_pb2.HealthCheckRequest(service="tiermesh.tier.v1.TierService")
            loading = await health.Check(service)
            assert loading.status == health_pb2.HealthCheckResponse.NOT_SERVING

            request = tier_pb2.GenerateRequest(
                request_id="r1",
                messages=[tier_pb2.ChatMessage(role=tier_pb2.ROLE_USER, content="hi")],
                max_tokens=4,
            )
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await tier_pb2_grpc.TierServiceStub(channel).Generate(request).read()
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "loading" in (caught.value.details() or "")

            engine.release.set()
            await asyncio.wait_for(silver.loading, 2.0)
            ready = await health.Check(service)
            assert ready.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await silver.close(None)
