"""The edge's coalescing, alone (router/coalesce.py) and through the router."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc
import pytest

from router import coalesce
from router.app import Router
from router.coalesce import MAX_MERGED_CHARS, coalesced
from tests.doubles import Script, ScriptedTier
from tiermesh.errors import StatusError
from tiermesh.v1 import mesh_pb2, mesh_pb2_grpc

GOLD = mesh_pb2.TIER_GOLD
SILVER = mesh_pb2.TIER_SILVER


def delta(text: str, tier: mesh_pb2.Tier.ValueType = SILVER) -> mesh_pb2.GenerateResponse:
    return mesh_pb2.GenerateResponse(text=text, tier=tier)


def tool(name: str) -> mesh_pb2.GenerateResponse:
    return mesh_pb2.GenerateResponse(tier=SILVER, tool=mesh_pb2.ToolEvent(name=name))


async def burst(*messages: mesh_pb2.GenerateResponse) -> AsyncIterator[mesh_pb2.GenerateResponse]:
    """All messages ready at once, as when the tier outruns the caller."""
    for message in messages:
        yield message


async def test_deltas_waiting_together_leave_as_one_message() -> None:
    last = delta("d")
    last.finish_reason = mesh_pb2.FINISH_REASON_STOP
    last.usage.completion_tokens = 4
    out = [m async for m in coalesced(burst(delta("a"), delta("b"), delta("c"), last))]
    assert [m.text for m in out] == ["abcd"]
    assert out[0].finish_reason == mesh_pb2.FINISH_REASON_STOP
    assert out[0].usage.completion_tokens == 4


async def test_tool_events_and_tier_changes_are_never_merged() -> None:
    stream = burst(delta("a"), delta("b"), tool("look"), delta("c"), delta("d"), delta("e", GOLD))
    out = [m async for m in coalesced(stream)]
    assert [(m.text, m.tool.name, m.tier) for m in out] == [
        ("ab", "", SILVER),
        ("", "look", SILVER),
        ("cd", "", SILVER),
        ("e", "", GOLD),
    ]


async def test_a_lone_delta_is_not_held_back_for_the_next() -> None:
    release = asyncio.Event()

    async def slow_tier() -> AsyncIterator[mesh_pb2.GenerateResponse]:
        yield delta("first")
        await release.wait()
        yield delta("second")

    stream = coalesced(slow_tier())
    first = await asyncio.wait_for(anext(stream), timeout=2)
    assert first.text == "first"
    release.set()
    assert [m.text async for m in stream] == ["second"]


async def test_a_failure_comes_after_the_deltas_before_it() -> None:
    async def failing() -> AsyncIterator[mesh_pb2.GenerateResponse]:
        yield delta("a")
        yield delta("b")
        raise StatusError(grpc.StatusCode.UNAVAILABLE, "tier gone")

    received: list[str] = []

    async def read_all() -> None:
        async for message in coalesced(failing()):
            received.append(message.text)

    with pytest.raises(StatusError) as failure:
        await read_all()
    assert "".join(received) == "ab"
    assert failure.value.code == grpc.StatusCode.UNAVAILABLE


async def test_closing_stops_the_stream_below() -> None:
    closed = asyncio.Event()

    async def endless() -> AsyncIterator[mesh_pb2.GenerateResponse]:
        try:
            while True:
                yield delta("x")
                await asyncio.sleep(0.01)
        finally:
            closed.set()

    async with contextlib.aclosing(coalesced(endless())) as stream:
        await anext(stream)
    assert closed.is_set()


async def test_closing_early_cancels_the_tier_call_rather_than_tearing_its_read() -> None:
    # A tier read in flight as grpc.aio has it: a future that gRPC, not asyncio, completes.
    read: asyncio.Future[mesh_pb2.GenerateResponse] = asyncio.get_running_loop().create_future()

    async def tier() -> AsyncIterator[mesh_pb2.GenerateResponse]:
        yield delta("x")
        yield await read

    def cancel_tier_calls() -> bool:
        read.set_exception(asyncio.CancelledError())  # how gRPC ends a cancelled call's read
        return True

    async with contextlib.aclosing(coalesced(tier(), cancel_tier_calls)) as stream:
        await anext(stream)
        await asyncio.sleep(0)  # the reader now waits on the read
    assert read.done()
    assert not read.cancelled(), "the read ended with its call, not torn by cancelling its task"


async def test_a_reader_that_does_not_end_with_its_tier_calls_is_cancelled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(coalesce, "UNWIND_S", 0.05)
    closed = asyncio.Event()

    async def stuck() -> AsyncIterator[mesh_pb2.GenerateResponse]:
        try:
            yield delta("x")
            await asyncio.Event().wait()  # e.g. a wait that no tier call cancel ends
            yield delta("never")
        finally:
            closed.set()

    async with contextlib.aclosing(coalesced(stuck(), lambda: True)) as stream:
        await anext(stream)
    assert closed.is_set()


async def test_merged_messages_stay_under_the_size_cap() -> None:
    chunk = "x" * (MAX_MERGED_CHARS // 3)
    out = [m async for m in coalesced(burst(*(delta(chunk) for _ in range(7))))]
    assert [len(m.text) for m in out] == [3 * len(chunk), 3 * len(chunk), len(chunk)]


async def test_a_caller_slower_than_the_tier_gets_fewer_messages_and_every_token(
    silver: ScriptedTier, router: Router
) -> None:
    # Big deltas, a slow reader and a fixed HTTP/2 window (no BDP growth): the
    # router's writes wait on the caller and the tier's deltas pile up behind them.
    tokens = [f"<{i}>".ljust(1000, ".") for i in range(300)]
    silver.reset(Script(tokens=tokens))
    request = mesh_pb2.GenerateRequest(npc_id="guard-1", prompt="hi", task=mesh_pb2.TASK_DIALOGUE)
    responses = []
    options = [("grpc.http2.bdp_probe", 0)]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{router.port}", options=options) as channel:
        async for response in mesh_pb2_grpc.MeshStub(channel).Generate(request, timeout=20):
            responses.append(response)
            await asyncio.sleep(0.005)
    assert "".join(r.text for r in responses) == "".join(tokens)
    assert len(responses) < len(tokens)
    assert max(len(r.text) for r in responses) <= MAX_MERGED_CHARS
    assert [r.index for r in responses] == list(range(len(responses)))
    assert responses[-1].finish_reason == mesh_pb2.FINISH_REASON_STOP
    assert responses[-1].usage.completion_tokens == len(tokens)
    assert sum(bool(r.finish_reason) for r in responses) == 1
