"""The router over real gRPC, in front of a scripted tier (see tests/doubles.py)."""

from __future__ import annotations

import asyncio
import re
import time
from typing import TYPE_CHECKING

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from router.app import Router, start_router
from tests.doubles import Script, ScriptedTier
from tests.fakes import request
from tests.router.conftest import router_settings
from tests.tools import grpcurl
from tiermesh.tier.v1 import tier_pb2
from tiermesh.v1 import mesh_pb2, mesh_pb2_grpc

if TYPE_CHECKING:
    from tiermesh.v1.mesh_pb2_grpc import MeshAsyncStub as Stub

pytestmark = pytest.mark.asyncio(loop_scope="session")
# gRPC sends timeouts in coarse units, rounded up: a few ms of slack on the far side.
GRPC_TIMEOUT_ROUNDING = 0.05


async def generate(
    stub: Stub, req: mesh_pb2.GenerateRequest | None = None, deadline_s: float = 5.0
) -> list[mesh_pb2.GenerateResponse]:
    return [r async for r in stub.Generate(req or request(), timeout=deadline_s)]


async def answer(stub: Stub) -> str:
    """The default script's text, however many messages carried it (coalescing merges
    tokens that arrive together)."""
    return "".join(r.text for r in await generate(stub))


async def status_of(
    stub: Stub, req: mesh_pb2.GenerateRequest, deadline_s: float = 5.0
) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await generate(stub, req, deadline_s)
    return caught.value


async def test_tokens_stream_through_in_order_with_index_tier_and_usage(
    stub: Stub, silver: ScriptedTier
) -> None:
    # Tokens 10 ms apart, like an engine's: each is written before the next arrives, so
    # coalescing (on by default) has nothing to merge and each token is one message.
    # Back to back, two tokens can share a message when a write is slow, and this
    # expected 6 messages only when the machine was fast enough.
    silver.reset(Script(delay=0.01))
    responses = await generate(stub)
    assert "".join(r.text for r in responses) == "Halt! Who goes there?"
    assert [r.index for r in responses] == list(range(6))
    assert {r.tier for r in responses} == {mesh_pb2.TIER_SILVER}
    last = responses[-1]
    assert last.finish_reason == mesh_pb2.FINISH_REASON_STOP
    assert last.usage.completion_tokens == 6
    assert last.usage.time_to_first_token.ToNanoseconds() > 0
    assert all(not r.finish_reason for r in responses[:-1])


async def test_tier_gets_persona_prompt_defaults_and_the_remaining_deadline(
    stub: Stub, silver: ScriptedTier
) -> None:
    await generate(stub, deadline_s=3.0)
    [seen] = silver.seen
    roles = [m.role for m in seen.request.messages]
    assert roles == [tier_pb2.ROLE_SYSTEM, tier_pb2.ROLE_USER]
    assert seen.request.messages[0].content == "You are Brom, the north gate guard."
    assert seen.request.messages[1].content == "Who goes there?"
    assert seen.request.max_tokens == 64  # dialogue's default
    assert seen.request.task == mesh_pb2.TASK_DIALOGUE
    assert seen.request.npc_id == "guard-1"  # tiers key cached content by NPC
    assert seen.request.request_id
    # The caller's budget, less what the router already spent: never more.
    assert seen.time_remaining is not None
    assert 2.0 < seen.time_remaining <= 3.0 + GRPC_TIMEOUT_ROUNDING


async def test_without_a_deadline_the_tier_gets_the_task_budget(stub: Stub, silver: ScriptedTier) -> None:
    [r async for r in stub.Generate(request(task=mesh_pb2.TASK_BARK))]
    assert silver.seen[0].time_remaining is not None
    assert 4.0 < silver.seen[0].time_remaining <= 5.0 + GRPC_TIMEOUT_ROUNDING  # bark's budget


async def test_bad_input_is_rejected_and_the_router_keeps_serving(stub: Stub, silver: ScriptedTier) -> None:
    for bad in (request(prompt=""), request(task=mesh_pb2.TASK_UNSPECIFIED), request(npc_id="a b")):
        error = await status_of(stub, bad)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert silver.seen == []  # nothing reached the tier
    assert await answer(stub) == "Halt! Who goes there?"


async def test_oversized_request_is_resource_exhausted(stub: Stub, silver: ScriptedTier) -> None:
    error = await status_of(stub, request(persona="x" * 100_000))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert await answer(stub) == "Halt! Who goes there?"


async def test_tier_fault_before_first_token_is_unavailable_naming_the_tier(
    stub: Stub, silver: ScriptedTier
) -> None:
    silver.reset(Script(fail_at=0, fail_code=grpc.StatusCode.INTERNAL))
    error = await status_of(stub, request())
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "silver tier" in (error.details() or "")
    assert "before the first token" in (error.details() or "")


@pytest.mark.parametrize("code", [grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.INVALID_ARGUMENT])
async def test_caller_faults_found_by_the_tier_pass_through(
    stub: Stub, silver: ScriptedTier, code: grpc.StatusCode
) -> None:
    silver.reset(Script(fail_at=0, fail_code=code, fail_message="prompt is 3000 tokens"))
    error = await status_of(stub, request())
    assert error.code() == code
    assert error.details() == "prompt is 3000 tokens"


async def test_tier_failing_mid_stream_ends_the_stream_with_unavailable(
    stub: Stub, silver: ScriptedTier
) -> None:
    silver.reset(Script(fail_at=3))
    received: list[str] = []

    async def consume() -> None:
        async for response in stub.Generate(request(), timeout=5.0):
            received.append(response.text)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await consume()
    # Tokens the client had not read yet may arrive merged (router/coalesce.py): the text
    # is what must survive, not its split into messages.
    assert "".join(received) == "Halt! Who"
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    # Counted as the tier client took them, which may also be merged.
    assert re.search(r"failed after [123] messages", caught.value.details() or "")


async def test_hanging_tier_meets_the_deadline_and_is_cancelled(stub: Stub, silver: ScriptedTier) -> None:
    silver.reset(Script(hang=True))
    started = time.monotonic()
    error = await status_of(stub, request(), deadline_s=0.3)
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 2.0
    await asyncio.wait_for(silver.cancelled_event.wait(), 2.0)


async def test_client_cancel_reaches_the_tier(stub: Stub, silver: ScriptedTier) -> None:
    silver.reset(Script(tokens=["tok"] * 200, delay=0.02))
    call = stub.Generate(request(), timeout=10.0)
    async for _ in call:
        break
    call.cancel()
    await asyncio.wait_for(silver.cancelled_event.wait(), 2.0)
    assert silver.cancelled == 1


async def test_client_cancel_before_the_first_token_reaches_the_tier(
    stub: Stub, silver: ScriptedTier
) -> None:
    silver.reset(Script(hang=True))
    call = stub.Generate(request(), timeout=10.0)
    reader = asyncio.ensure_future(call.read())
    await silver.wait_for_streams(1)
    call.cancel()
    await asyncio.gather(reader, return_exceptions=True)
    await asyncio.wait_for(silver.cancelled_event.wait(), 2.0)


async def test_tier_down_is_unavailable_fast() -> None:
    # Nothing listens on this port: connection refused.
    router = await start_router(router_settings("127.0.0.1:1").router_config())
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{router.port}") as channel:
            started = time.monotonic()
            error = await status_of(mesh_pb2_grpc.MeshStub(channel), request(), deadline_s=5.0)
            assert error.code() == grpc.StatusCode.UNAVAILABLE
            assert "silver" in (error.details() or "")
            assert time.monotonic() - started < 2.0
    finally:
        await router.close(None)


async def test_outcomes_are_counted_by_task_tier_and_code(stub: Stub, silver: ScriptedTier) -> None:
    def count(code: str, tier: str) -> float:
        labels = {"task": "bark", "tier": tier, "code": code}
        return REGISTRY.get_sample_value("tiermesh_router_requests_total", labels) or 0.0

    ok, bad = count("OK", "silver"), count("INVALID_ARGUMENT", "none")
    # The task label is known even when validation rejects the call.
    await generate(stub, request(task=mesh_pb2.TASK_BARK))
    await status_of(stub, request(task=mesh_pb2.TASK_BARK, max_tokens=999))
    assert count("OK", "silver") == ok + 1
    assert count("INVALID_ARGUMENT", "none") == bad + 1  # tier "none": rejected at the edge


async def test_the_router_exports_its_loops_lag(router: Router) -> None:
    # Its heartbeat (router/heartbeat.py) runs from start to close.
    def beats() -> float:
        return REGISTRY.get_sample_value("tiermesh_router_loop_lag_seconds_count") or 0.0

    assert router.heartbeat is not None
    before = beats()
    await asyncio.sleep(0.1)
    assert beats() > before
    settings = router_settings("127.0.0.1:1")
    settings.router.data_path.loop_heartbeat_s = 0
    quiet = await start_router(settings.router_config())
    await quiet.close(None)
    assert quiet.heartbeat is None


async def test_health_is_serving(router: Router) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{router.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "tiermesh.v1.Mesh"):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_grpcurl_lists_services_by_reflection(router: Router) -> None:
    out = await grpcurl("-plaintext", f"127.0.0.1:{router.port}", "list")
    assert set(out.split()) >= {"tiermesh.v1.Mesh", "grpc.health.v1.Health"}


async def test_jobs_without_a_bronze_tier_are_unimplemented(stub: Stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetJob(mesh_pb2.GetJobRequest(job_id="j1"), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "Bronze" in (caught.value.details() or "")
