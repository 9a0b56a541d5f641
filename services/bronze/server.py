"""Bronze's gRPC face: Jobs (for the router's job API) and TierService (long-form
Generate by submitting a job and waiting for it), with health that follows the
endpoint's status checks."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc

from services.bronze.aws import endpoint_status
from services.bronze.bridge import Bridge, to_job
from services.bronze.settings import BronzeSettings
from tiermesh.chat import from_tier
from tiermesh.content import content_key
from tiermesh.errors import StatusError
from tiermesh.serving import Serving, start_grpc_server, start_metrics, status_errors, wait_for_signal
from tiermesh.tier.v1 import tier_pb2, tier_pb2_grpc
from tiermesh.tls import TlsSettings
from tiermesh.v1 import mesh_pb2

log = logging.getLogger("tiermesh.bronze")
Context = grpc.aio.ServicerContext[Any, Any]


class JobsServicer(tier_pb2_grpc.JobsServicer):
    def __init__(self, bridge: Bridge) -> None:
        self._bridge = bridge

    @status_errors
    async def SubmitJob(
        self, request: tier_pb2.SubmitJobRequest, context: Context
    ) -> tier_pb2.SubmitJobResponse:
        return tier_pb2.SubmitJobResponse(job=to_job(await self._bridge.submit(request)))

    @status_errors
    async def GetJob(self, request: tier_pb2.GetJobRequest, context: Context) -> tier_pb2.GetJobResponse:
        return tier_pb2.GetJobResponse(job=to_job(await self._bridge.get(request.job_id)))

    async def WatchJob(
        self, request: tier_pb2.WatchJobRequest, context: Context
    ) -> AsyncIterator[tier_pb2.WatchJobResponse]:
        try:
            async for record in self._bridge.watch(request.job_id):
                yield tier_pb2.WatchJobResponse(job=to_job(record))
        except StatusError as e:
            await context.abort(e.code, e.message)

    @status_errors
    async def CancelJob(
        self, request: tier_pb2.CancelJobRequest, context: Context
    ) -> tier_pb2.CancelJobResponse:
        return tier_pb2.CancelJobResponse(job=to_job(await self._bridge.cancel(request.job_id)))

    @status_errors
    async def LookupResult(
        self, request: tier_pb2.LookupResultRequest, context: Context
    ) -> tier_pb2.LookupResultResponse:
        found = await self._bridge.lookup(request.content_key)
        if found is None:
            return tier_pb2.LookupResultResponse(found=False)
        response = tier_pb2.LookupResultResponse(found=True, text=found["text"])
        response.usage.prompt_tokens = found["usage"].get("prompt_tokens", 0)
        response.usage.completion_tokens = found["usage"].get("completion_tokens", 0)
        return response


class BronzeTier(tier_pb2_grpc.TierServiceServicer):
    """Generate on Bronze: a job, waited for within the caller's deadline."""

    def __init__(self, bridge: Bridge) -> None:
        self._bridge = bridge

    async def Generate(
        self, request: tier_pb2.GenerateRequest, context: Context
    ) -> AsyncIterator[tier_pb2.GenerateResponse]:
        messages = from_tier(request.messages)
        public = mesh_pb2.GenerateRequest(
            npc_id=request.npc_id, prompt=messages[-1].content, task=request.task, sampling=request.sampling
        )
        task = mesh_pb2.Task.Name(request.task).removeprefix("TASK_").lower()
        submit = tier_pb2.SubmitJobRequest(
            messages=request.messages,
            max_tokens=request.max_tokens,
            # The key the router's ResultCache looks up (router/jobs.py): a long-form
            # Generate served here pre-warms the same content.
            content_key=content_key(task, request.npc_id, messages[0].content, messages[-1].content),
        )
        submit.submit.request.CopyFrom(public)
        try:
            submitted = await self._bridge.submit(submit)
            async for record in self._bridge.watch(submitted.job_id):
                if record.finished:
                    break
        except StatusError as e:
            await context.abort(e.code, e.message)
        if record.state != "SUCCEEDED":
            failure = f"bronze job {record.job_id} {record.state}: {record.error}"
            await context.abort(grpc.StatusCode.UNAVAILABLE, failure)
        done = tier_pb2.GenerateResponse(
            text=record.text, tier=mesh_pb2.TIER_BRONZE, finish_reason=mesh_pb2.FINISH_REASON_STOP
        )
        done.usage.prompt_tokens = record.usage.get("prompt_tokens", 0)
        done.usage.completion_tokens = record.usage.get("completion_tokens", 0)
        yield done


async def follow_endpoint(bridge_settings: Any, serving: Serving, every_s: float = 15.0) -> None:
    """Health follows the endpoint checks: NOT_SERVING while the endpoint is not usable."""
    while True:
        status = await asyncio.to_thread(endpoint_status, bridge_settings)
        await serving.set_serving(status.ok)
        if not status.ok:
            log.warning("bronze endpoint checks failed: %s", status.summary())
        await asyncio.sleep(every_s)


def register(server: grpc.aio.Server, bridge: Bridge) -> None:
    tier_pb2_grpc.add_JobsServicer_to_server(JobsServicer(bridge), server)
    tier_pb2_grpc.add_TierServiceServicer_to_server(BronzeTier(bridge), server)


async def serve(settings: BronzeSettings, tls: TlsSettings) -> None:
    bridge = Bridge(settings)
    await bridge.start()
    bridge.export_metrics()
    exposition = await start_metrics(settings.metrics_port, settings.listen)
    serving = await start_grpc_server(
        settings.listen,
        lambda server: register(server, bridge),
        ["tiermesh.tier.v1.Jobs", "tiermesh.tier.v1.TierService"],
        serving=False,
        tls=tls,
    )
    health = asyncio.create_task(follow_endpoint(settings, serving))
    log.info("bronze bridge on port %d, endpoint %s", serving.port, settings.endpoint_name)
    await wait_for_signal()
    health.cancel()
    await bridge.close()
    await serving.stop(2.0)
    if exposition is not None:
        await exposition.cleanup()
