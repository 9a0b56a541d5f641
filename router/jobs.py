"""The public job API: validated like Generate, served by Bronze's Jobs service."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from router.call import Call
from router.settings import RouterConfig
from router.validation import resolve
from tiermesh.chat import to_tier
from tiermesh.content import content_key
from tiermesh.errors import StatusError
from tiermesh.tier.v1 import tier_pb2, tier_pb2_grpc
from tiermesh.tls import aio_channel
from tiermesh.v1 import mesh_pb2

# What Bronze says about a job is the caller's business; anything else is Bronze down.
PASS_THROUGH = frozenset(
    {
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    }
)
CALL_TIMEOUT_S = 10.0
LOOKUP_TIMEOUT_S = 0.25


def call_content_key(call: Call) -> str:
    system = call.messages[0].content if call.messages[0].role == "system" else ""
    return content_key(call.task, call.npc_id, system, call.messages[-1].content)


class Jobs:
    def __init__(self, config: RouterConfig, address: str) -> None:
        self._config = config
        self._address = address
        self._channel = aio_channel(address, config.mesh_tls)
        self._stub = tier_pb2_grpc.JobsStub(self._channel)

    def _status(self, error: grpc.aio.AioRpcError) -> StatusError:
        if error.code() in PASS_THROUGH:
            return StatusError(error.code(), error.details() or error.code().name)
        return StatusError(
            grpc.StatusCode.UNAVAILABLE, f"bronze at {self._address}: {error.code().name}: {error.details()}"
        )

    async def submit(self, request: mesh_pb2.SubmitJobRequest) -> mesh_pb2.Job:
        call = resolve(request.request, self._config, time_remaining=None)
        forward = tier_pb2.SubmitJobRequest(
            submit=request,
            messages=to_tier(call.messages),
            max_tokens=call.max_tokens,
            content_key=call_content_key(call),
        )
        try:
            return (await self._stub.SubmitJob(forward, timeout=CALL_TIMEOUT_S)).job
        except grpc.aio.AioRpcError as e:
            raise self._status(e) from None

    async def get(self, job_id: str) -> mesh_pb2.Job:
        try:
            return (
                await self._stub.GetJob(tier_pb2.GetJobRequest(job_id=job_id), timeout=CALL_TIMEOUT_S)
            ).job
        except grpc.aio.AioRpcError as e:
            raise self._status(e) from None

    async def watch(self, job_id: str, deadline_s: float | None) -> AsyncIterator[mesh_pb2.Job]:
        stream = self._stub.WatchJob(tier_pb2.WatchJobRequest(job_id=job_id), timeout=deadline_s)
        try:
            async for update in stream:
                yield update.job
        except grpc.aio.AioRpcError as e:
            raise self._status(e) from None
        finally:
            stream.cancel()

    async def cancel(self, job_id: str) -> mesh_pb2.Job:
        try:
            request = tier_pb2.CancelJobRequest(job_id=job_id)
            return (await self._stub.CancelJob(request, timeout=CALL_TIMEOUT_S)).job
        except grpc.aio.AioRpcError as e:
            raise self._status(e) from None

    async def lookup(self, call: Call) -> tier_pb2.LookupResultResponse | None:
        """A finished result for this call's content, or None (also when Bronze is slow
        or down: the cache is an optimisation, never a new way to fail)."""
        request = tier_pb2.LookupResultRequest(content_key=call_content_key(call))
        try:
            found = await self._stub.LookupResult(request, timeout=min(LOOKUP_TIMEOUT_S, call.remaining()))
        except grpc.aio.AioRpcError:
            return None
        return found if found.found else None

    async def close(self) -> None:
        await self._channel.close()
