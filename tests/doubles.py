"""TEST DOUBLES. Nothing here stands in for a feature: these exist to drive the
router's own logic (status mapping, deadlines, cancellation) over real gRPC with
latency and faults a real engine cannot be made to produce on demand."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import grpc

from tiermesh.serving import Serving, start_grpc_server
from tiermesh.tier.v1 import tier_pb2, tier_pb2_grpc
from tiermesh.tls import TlsSettings
from tiermesh.v1 import mesh_pb2

TierContext = grpc.aio.ServicerContext[tier_pb2.GenerateRequest, tier_pb2.GenerateResponse]


@dataclass
class HandlerContext:
    """The two things a tier's handler asks of grpc's servicer context, for calling the
    handler directly; `remaining_s`: the call's time left (None: no deadline)."""

    remaining_s: float | None = None

    def invocation_metadata(self) -> tuple[object, ...]:
        return ()

    def time_remaining(self) -> float | None:
        return self.remaining_s


@dataclass
class Seen:
    request: tier_pb2.GenerateRequest
    time_remaining: float | None
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass
class Script:
    tokens: list[str] = field(default_factory=lambda: ["Halt", "!", " Who", " goes", " there", "?"])
    # Seconds before each token.
    delay: float = 0.0
    # Abort with `fail_code` before yielding token number `fail_at` (0: before any).
    fail_at: int | None = None
    fail_code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    fail_message: str = "scripted failure"
    # Never answer (until cancelled).
    hang: bool = False


class ScriptedTier(tier_pb2_grpc.TierServiceServicer):
    """TEST DOUBLE: a TierService that streams `script.tokens` as Silver would."""

    def __init__(self, tier: mesh_pb2.Tier.ValueType = mesh_pb2.TIER_SILVER) -> None:
        self.tier = tier
        self.script = Script()
        self.seen: list[Seen] = []
        self.cancelled = 0
        self.cancelled_event = asyncio.Event()
        # The highest token index any stream has yielded: how far the furthest stream got.
        self.furthest = -1
        self._progress = asyncio.Condition()

    def reset(self, script: Script | None = None) -> None:
        self.script = script or Script()
        self.seen.clear()
        self.cancelled = 0
        self.cancelled_event.clear()
        self.furthest = -1

    async def wait_for_streams(self, count: int, within_s: float = 5.0) -> None:
        """Until `count` streams have reached this tier: a call is surely in flight, on a
        machine of any speed (a fixed sleep races a slow one)."""
        await self._wait_until(lambda: len(self.seen) >= count, within_s)

    async def wait_for_token(self, index: int, within_s: float = 5.0) -> None:
        """Until some stream has yielded token `index`."""
        await self._wait_until(lambda: self.furthest >= index, within_s)

    async def _wait_until(self, check: Callable[[], bool], within_s: float) -> None:
        async with asyncio.timeout(within_s), self._progress:
            await self._progress.wait_for(check)

    async def _progressed(self) -> None:
        async with self._progress:
            self._progress.notify_all()

    async def Generate(
        self, request: tier_pb2.GenerateRequest, context: TierContext
    ) -> AsyncIterator[tier_pb2.GenerateResponse]:
        metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        self.seen.append(Seen(request, context.time_remaining(), metadata))
        await self._progressed()
        script = self.script
        try:
            if script.hang:
                await asyncio.Event().wait()
            for index, token in enumerate(script.tokens):
                if script.fail_at == index:
                    await context.abort(script.fail_code, script.fail_message)
                if script.delay:
                    await asyncio.sleep(script.delay)
                response = tier_pb2.GenerateResponse(text=token, index=index, tier=self.tier)
                if index == len(script.tokens) - 1:
                    response.finish_reason = mesh_pb2.FINISH_REASON_STOP
                    response.usage.prompt_tokens = 11
                    response.usage.completion_tokens = len(script.tokens)
                self.furthest = max(self.furthest, index)
                await self._progressed()
                yield response
        except asyncio.CancelledError:
            self.cancelled += 1
            self.cancelled_event.set()
            raise


async def start_scripted_tier(
    tier: ScriptedTier,
    listen: str = "127.0.0.1:0",
    tls: TlsSettings | None = None,
    min_ping_interval_ms: int = 15_000,
) -> Serving:
    return await start_grpc_server(
        listen,
        lambda server: tier_pb2_grpc.add_TierServiceServicer_to_server(tier, server),
        ["tiermesh.tier.v1.TierService"],
        tls=tls,
        min_ping_interval_ms=min_ping_interval_ms,
    )
