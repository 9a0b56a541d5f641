"""Traffic classes and tenants through real routers over a scripted tier: token quotas
shared by two routers through a real redis-server (and not shared without it), and the
class metrics a dashboard reads."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio
from redis.asyncio import Redis

from router.settings import StateSettings, TenantSettings, TrafficSettings
from tests.doubles import Script
from tests.router.test_faults import metric, retry_delay
from tests.router.test_sessions import Fleet
from tiermesh.v1 import mesh_pb2, mesh_pb2_grpc

# 40 tokens an answer against 60 output tokens a minute: the second call puts the
# tenant 20 tokens in debt, the third waits 20 s.
ANSWER = [" word"] * 40
TRAFFIC = TrafficSettings(tenants={"studio-a": TenantSettings(output_tokens_per_min=60)})


@pytest_asyncio.fixture
async def routers() -> AsyncIterator[Fleet]:
    fleet = Fleet()
    fleet.silver.reset(Script(tokens=ANSWER))
    yield fleet
    await fleet.close()


async def call(
    stub: mesh_pb2_grpc.MeshAsyncStub,
    client: str,
    priority: mesh_pb2.Priority.ValueType = mesh_pb2.PRIORITY_UNSPECIFIED,
) -> str:
    request = mesh_pb2.GenerateRequest(
        npc_id="guard-1", prompt="Halt!", task=mesh_pb2.TASK_DIALOGUE, priority=priority
    )
    responses = stub.Generate(request, timeout=5, metadata=[("x-client-id", client)])
    return "".join([r.text async for r in responses])


async def test_two_routers_draw_one_tenants_tokens_from_redis(routers: Fleet, redis_server: str) -> None:
    await Redis.from_url(redis_server).flushdb()
    first, second = await routers.start(StateSettings(backend="redis", redis_url=redis_server), 2, TRAFFIC)
    await call(first, "studio-a")
    await call(first, "studio-a")
    await asyncio.sleep(0.2)  # the answers' tokens are charged as their streams end
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(second, "studio-a")  # the other router knows it is spent
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "out of output tokens (60 per minute)" in (caught.value.details() or "")
    assert retry_delay(caught.value) == pytest.approx(20.0, abs=1.0)
    assert await call(second, "studio-b")  # another tenant is unmetered
    assert metric("tiermesh_router_quota_exceeded_total", tenant="studio-a", direction="out") >= 1


async def test_without_redis_each_router_meters_alone(routers: Fleet) -> None:
    first, second = await routers.start(StateSettings(), 2, TRAFFIC)
    await call(first, "studio-a")
    await call(first, "studio-a")
    await asyncio.sleep(0.2)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(first, "studio-a")
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert await call(second, "studio-a")  # its own buckets: still full


async def test_calls_are_counted_by_class_and_configured_tenant(routers: Fleet) -> None:
    [stub] = await routers.start(StateSettings(), 1, TRAFFIC)
    before = metric("tiermesh_router_class_requests_total", priority="critical", tenant="other", code="OK")
    await call(stub, "someone-unconfigured", mesh_pb2.PRIORITY_CRITICAL)
    after = metric("tiermesh_router_class_requests_total", priority="critical", tenant="other", code="OK")
    assert after == before + 1
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(stub, "studio-b", mesh_pb2.Priority.ValueType(9))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
