"""Silver's handler when grpc closes it at a yield: counted as cancelled, engine released now."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence

import pytest

from services.silver.engine import Delta, Sampling, SilverEngine
from services.silver.server import REQUESTS, RUNNING, SilverServicer
from services.silver.settings import SilverSettings
from tests.doubles import HandlerContext
from tiermesh.chat import Message
from tiermesh.tier.v1 import tier_pb2

pytestmark = pytest.mark.asyncio(loop_scope="session")


class EndlessEngine(SilverEngine):
    """TEST DOUBLE: a SilverEngine that streams one word after another until closed,
    and says when its stream was closed (where the real engine aborts the request)."""

    def __init__(self) -> None:
        super().__init__(SilverSettings())
        self.closed = asyncio.Event()

    async def generate(
        self, request_id: str, messages: Sequence[Message], sampling: Sampling
    ) -> AsyncGenerator[Delta, None]:
        try:
            n = 0
            while True:
                n += 1
                yield Delta(text="word ", prompt_tokens=3, completion_tokens=n, finish_reason=None)
                await asyncio.sleep(0)
        finally:
            self.closed.set()


def cancelled() -> float:
    return float(REQUESTS.labels("cancelled")._value.get())


async def test_closed_at_a_yield_is_cancelled_and_closes_the_engine_stream() -> None:
    # grpc-aio iterates the handler and awaits each write; a deadline or a reset that lands
    # during that write cancels grpc's task, and the handler is closed where it yielded.
    engine = EndlessEngine()
    servicer = SilverServicer(engine, SilverSettings())
    request = tier_pb2.GenerateRequest(
        request_id="r1",
        messages=[tier_pb2.ChatMessage(role=tier_pb2.ROLE_USER, content="hi")],
        max_tokens=8,
    )
    before, running = cancelled(), RUNNING._value.get()
    handler = servicer.Generate(request, HandlerContext())  # type: ignore[arg-type]
    first = await anext(handler)
    assert first.text == "word "
    await handler.aclose()
    assert cancelled() == before + 1
    assert RUNNING._value.get() == running
    assert engine.closed.is_set(), "the engine's stream outlived the call"
