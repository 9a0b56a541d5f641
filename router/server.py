"""The router's edge: `tiermesh.v1.Mesh` over the policy pipeline."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc

from router import metrics
from router.backends.tier_grpc import GrpcTier
from router.pipeline import Backend
from router.policies.tier_choice import TierChoice
from router.validation import TASK_NAMES, resolve
from tiermesh.config import Settings, TierName
from tiermesh.errors import StatusError
from tiermesh.serving import Serving, start_grpc_server, start_metrics, wait_for_signal
from tiermesh.v1 import mesh_pb2, mesh_pb2_grpc

log = logging.getLogger(__name__)

MESH_SERVICE = mesh_pb2.DESCRIPTOR.services_by_name["Mesh"].full_name
TIER_LABELS = {value: name.removeprefix("TIER_").lower() for name, value in mesh_pb2.Tier.items()}


class MeshServicer(mesh_pb2_grpc.MeshServicer):
    def __init__(self, settings: Settings, pipeline: Backend) -> None:
        self._settings = settings
        self._pipeline = pipeline

    async def Generate(
        self,
        request: mesh_pb2.GenerateRequest,
        context: grpc.aio.ServicerContext[mesh_pb2.GenerateRequest, mesh_pb2.GenerateResponse],
    ) -> AsyncIterator[mesh_pb2.GenerateResponse]:
        received = time.monotonic()
        task = TASK_NAMES.get(request.task, "unknown")
        tier = "none"
        code = grpc.StatusCode.OK
        index = 0
        ttft = 0.0
        try:
            call = resolve(request, self._settings, context.time_remaining(), received)
            async for response in self._pipeline.generate(call):
                if index == 0:
                    tier = TIER_LABELS[response.tier]
                    ttft = time.monotonic() - received
                    metrics.TIME_TO_FIRST_TOKEN.labels(task, tier).observe(ttft)
                response.index = index
                if response.finish_reason:
                    response.usage.time_to_first_token.FromNanoseconds(int(ttft * 1e9))
                index += 1
                yield response
        except StatusError as e:
            code = e.code
            await context.abort(e.code, e.message)
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED  # the caller left or its deadline passed
            raise
        except Exception:
            log.exception("router pipeline failed")
            code = grpc.StatusCode.INTERNAL
            await context.abort(code, "internal router error")
        finally:
            metrics.REQUESTS.labels(task, tier, code.name).inc()
            metrics.STREAM_MESSAGES.labels(task, tier).inc(index)


def build_tiers(settings: Settings) -> dict[TierName, GrpcTier]:
    # One replica per tier for now: balancing across endpoints is its own policy.
    return {name: GrpcTier(name, tier.endpoints[0]) for name, tier in settings.router.tiers.items()}


def build_pipeline(settings: Settings, tiers: dict[TierName, GrpcTier]) -> Backend:
    routes = {task: policy.tiers for task, policy in settings.router.tasks.items()}
    return TierChoice(routes, tiers)


@dataclass
class Router:
    serving: Serving
    tiers: dict[TierName, GrpcTier]

    @property
    def port(self) -> int:
        return self.serving.port

    async def close(self, grace: float | None = 1.0) -> None:
        await self.serving.set_serving(False)
        await self.serving.server.stop(grace)
        await asyncio.gather(*(tier.close() for tier in self.tiers.values()))


async def start_router(settings: Settings) -> Router:
    tiers = build_tiers(settings)
    pipeline = build_pipeline(settings, tiers)
    serving = await start_grpc_server(
        settings.router.listen,
        lambda server: mesh_pb2_grpc.add_MeshServicer_to_server(
            MeshServicer(settings, pipeline), server
        ),
        [MESH_SERVICE],
        max_message_bytes=settings.router.max_message_bytes,
    )
    return Router(serving, tiers)


async def serve(settings: Settings) -> None:
    start_metrics(settings.router.metrics_port)
    router = await start_router(settings)
    log.info("router listening on port %d", router.port)
    await wait_for_signal()
    await router.close(grace=2.0)
