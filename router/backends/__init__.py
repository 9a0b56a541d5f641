"""Tier adapters: the bottom of the pipeline, one per replica."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Literal, Protocol

import grpc
from opentelemetry.trace import Span, SpanKind

from router.call import Call
from router.settings import TierSettings
from tiermesh import tracing
from tiermesh.errors import StatusError
from tiermesh.tls import TlsSettings
from tiermesh.v1 import mesh_pb2

if TYPE_CHECKING:
    from router.backends.intent_encoder import IntentLabeller


class TierAdapter(Protocol):
    name: str
    address: str

    def generate(self, call: Call) -> AsyncIterator[mesh_pb2.GenerateResponse]: ...

    def health(self) -> AsyncIterator[bool]:
        """Serving or not, each time it is (re)learned; runs until cancelled."""
        ...

    async def close(self) -> None: ...


def tier_failed(tier: str, address: str, sent: int, detail: str) -> StatusError:
    """A replica's fault, as the caller sees it: UNAVAILABLE, naming the tier, the
    replica and whether any token had been sent (which decides retry vs resume)."""
    where = f"after {sent} messages" if sent else "before the first token"
    return StatusError(grpc.StatusCode.UNAVAILABLE, f"{tier} tier at {address} failed {where}: {detail}")


def attempt_span(tier: str, address: str, call: Call) -> Span:
    """The span of one attempt at one replica, child of the call's edge span."""
    return tracing.start_span(
        f"{tier} attempt", call.trace, SpanKind.CLIENT, tier=tier, **{"net.peer.name": address}
    )


def adapter(
    tier: str,
    address: str,
    settings: TierSettings,
    tls: TlsSettings | None = None,
    transport: Literal["grpc", "native"] = "grpc",
    merge: bool = False,
    labeller: IntentLabeller | None = None,
) -> TierAdapter:
    """The replica's adapter: TierService replicas over grpc.aio or, with `transport`
    native, over nghttp2 (merging messages that arrived together when `merge`); Triton's
    client stays tritonclient's."""
    if settings.protocol == "triton":
        from router.backends.triton import TritonTier

        return TritonTier(
            tier, address, settings.triton_model, settings.health_retry_s, tls, labeller,
            settings.intent_encoder,
        )  # fmt: skip
    if transport == "native":
        from router.backends.tier_native import NativeTier  # loads the C part

        return NativeTier(tier, address, settings.health_service, settings.health_retry_s, tls, merge)
    from router.backends.tier_grpc import GrpcTier

    return GrpcTier(tier, address, settings.health_service, settings.health_retry_s, tls)
