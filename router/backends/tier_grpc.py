"""Adapter for tiers that serve `tiermesh.tier.v1.TierService` (Silver, Bronze)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from router.backends import attempt_span, tier_failed
from router.backends.health import GrpcHealth
from router.call import Call
from router.native.keepalive import TIER_INTERVAL_S
from router.validation import TASK_NAMES
from tiermesh import tracing
from tiermesh.chat import to_tier
from tiermesh.errors import StatusError
from tiermesh.tier.v1 import tier_pb2
from tiermesh.tls import TlsSettings, aio_channel
from tiermesh.v1 import mesh_pb2

GENERATE = "/tiermesh.tier.v1.TierService/Generate"
# The caller's own mistakes (and its clock) pass through; anything else the tier
# does wrong is the tier being unavailable from the caller's point of view.
CALLER_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    }
)
TASK_VALUES = {name: mesh_pb2.Task.ValueType(value) for value, name in TASK_NAMES.items()}
CHANNEL_OPTIONS = [
    ("grpc.enable_retries", 0),  # retries are the router's policy, not the channel's
    # A replica silent this long while calls wait on it is pinged (the native client too).
    ("grpc.keepalive_time_ms", int(TIER_INTERVAL_S * 1000)),
    ("grpc.max_receive_message_length", 4 << 20),
]


def tier_request(call: Call) -> tier_pb2.GenerateRequest:
    return tier_pb2.GenerateRequest(
        request_id=call.request_id,
        messages=to_tier(call.messages),
        max_tokens=call.max_tokens,
        sampling=call.sampling,
        task=TASK_VALUES[call.task],
        intents=call.intents,
        tool_choice=mesh_pb2.ToolChoice.ValueType(call.tool_choice),
        npc_id=call.npc_id,
    )


def tier_status(
    tier: str, address: str, code: grpc.StatusCode | None, detail: str | None, sent: int
) -> StatusError:
    """A failed tier call as the caller sees it: its own mistakes pass through, anything
    else is the replica's fault. `code` None: the stream ended without a status (reset
    or refused; `detail` says which)."""
    if code is not None and code in CALLER_CODES:
        return StatusError(code, detail or code.name)
    why = f"{code.name}: {detail}" if code is not None else str(detail)
    return tier_failed(tier, address, sent, why)


class GrpcTier:
    """One tier replica over one HTTP/2 channel."""

    def __init__(
        self,
        name: str,
        address: str,
        health_service: str = "",
        health_retry_s: float = 1.0,
        tls: TlsSettings | None = None,
    ) -> None:
        self.name = name
        self.address = address
        self.channel = aio_channel(address, tls, CHANNEL_OPTIONS)
        self._health = GrpcHealth(self.channel, health_service, health_retry_s)
        # Tier messages are wire-compatible with the public response: decode them as
        # that type so the router relays them without a field-by-field copy.
        self._generate = self.channel.unary_stream(
            GENERATE,
            request_serializer=tier_pb2.GenerateRequest.SerializeToString,
            response_deserializer=mesh_pb2.GenerateResponse.FromString,
        )

    async def generate(self, call: Call) -> AsyncIterator[mesh_pb2.GenerateResponse]:
        remaining = call.remaining()
        if remaining <= 0:
            raise StatusError(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed before the tier call")
        span = attempt_span(self.name, self.address, call)
        stream = self._generate(tier_request(call), timeout=remaining, metadata=tracing.inject(span))
        call.tier_calls.add(stream.cancel)
        sent = 0
        try:
            async for response in stream:
                sent += 1
                yield response
        except grpc.aio.AioRpcError as e:
            span.set_attribute("rpc.grpc.status_code", e.code().value[0])
            raise tier_status(self.name, self.address, e.code(), e.details(), sent) from None
        finally:
            call.tier_calls.discard(stream.cancel)
            stream.cancel()  # no-op when finished; otherwise the tier aborts its work
            span.set_attribute("messages", sent)
            span.end()

    def health(self) -> AsyncIterator[bool]:
        return self._health.watch()

    async def close(self) -> None:
        await self.channel.close()
