"""Tier adapters: the bottom of the pipeline, one per replica."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from router.call import Call
from tiermesh.config import TierSettings
from tiermesh.v1 import mesh_pb2


class TierAdapter(Protocol):
    name: str
    address: str

    def generate(self, call: Call) -> AsyncIterator[mesh_pb2.GenerateResponse]: ...

    def health(self) -> AsyncIterator[bool]:
        """Serving or not, each time it is (re)learned; runs until cancelled."""
        ...

    async def close(self) -> None: ...


def adapter(tier: str, address: str, settings: TierSettings) -> TierAdapter:
    if settings.protocol == "triton":
        from router.backends.triton import TritonTier

        return TritonTier(tier, address, settings.triton_model, settings.health_retry_s)
    from router.backends.tier_grpc import GrpcTier

    return GrpcTier(tier, address, settings.health_service, settings.health_retry_s)
