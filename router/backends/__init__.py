"""Tier adapters: the bottom of the pipeline, one per replica."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

import grpc
from opentelemetry.trace import Span, SpanKind

from router.call import Call
from tiermesh import tracing
from tiermesh.config import DataPathSettings, TierSettings, TlsSettings
from tiermesh.errors import StatusError
from tiermesh.v1 import mesh_pb2


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
    data_path: DataPathSettings | None = None,
) -> TierAdapter:
    """The replica's adapter. `data_path.tier_client: native` calls TierService replicas
    over nghttp2; Triton's client stays tritonclient's."""
    if settings.protocol == "triton":
        from router.backends.triton import TritonTier

        return TritonTier(tier, address, settings.triton_model, settings.health_retry_s, tls)
    if data_path is not None and data_path.tier_client == "native":
        from router.native.tier import NativeTier  # builds the C part on first use

        merge = data_path.coalesce
        return NativeTier(tier, address, settings.health_service, settings.health_retry_s, tls, merge)
    from router.backends.tier_grpc import GrpcTier

    return GrpcTier(tier, address, settings.health_service, settings.health_retry_s, tls)
