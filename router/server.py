"""The router's edge: `tiermesh.v1.Mesh`: validation, statuses, metrics per stream,
and the job and session APIs. The pipeline it runs is composed in router/app.py."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, NoReturn

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from opentelemetry.trace import SpanKind

from router import metrics
from router.auth import CLIENT
from router.call import Call
from router.coalesce import coalesced
from router.jobs import Jobs
from router.pipeline import Backend
from router.settings import RouterConfig
from router.state.store import SessionStore, StoreDown
from router.streams import close, run_out_later
from router.validation import TASK_NAMES, check_session_ids, check_session_update, resolve
from tiermesh import tracing
from tiermesh.errors import StatusError, invalid
from tiermesh.serving import status_errors
from tiermesh.v1 import mesh_pb2, mesh_pb2_grpc

log = logging.getLogger(__name__)

CLIENT_ID_HEADER = "x-client-id"
Context = grpc.aio.ServicerContext[Any, Any]
MESH_SERVICE = mesh_pb2.DESCRIPTOR.services_by_name["Mesh"].full_name
GENERATE_SPAN = "tiermesh.v1.Mesh/Generate"
TIER_LABELS = {value: name.removeprefix("TIER_").lower() for name, value in mesh_pb2.Tier.items()}


@contextlib.asynccontextmanager
async def store_errors() -> AsyncIterator[None]:
    """The session API says UNAVAILABLE when the store is down (Generate degrades instead)."""
    try:
        yield
    except StoreDown as e:
        raise StatusError(grpc.StatusCode.UNAVAILABLE, f"session store unavailable: {e}") from None


def client_id(metadata: tracing.Metadata | None) -> str:
    """Who is calling: the authenticated client, else what it says it is."""
    if (authenticated := CLIENT.get()) is not None:
        return authenticated
    for key, value in metadata or ():
        if key == CLIENT_ID_HEADER:
            return str(value)[:128]
    return "anonymous"


def rich_status(error: StatusError) -> status_pb2.Status | None:
    """The google.rpc.Status a caller gets with `error` when it has a retry delay
    (RetryInfo rides along in the status details); None when the plain status says all."""
    if error.retry_after_s is None:
        return None
    retry = error_details_pb2.RetryInfo()
    retry.retry_delay.FromNanoseconds(int(error.retry_after_s * 1e9))
    detail = any_pb2.Any()
    detail.Pack(retry)
    return status_pb2.Status(code=error.code.value[0], message=error.message, details=[detail])


async def abort(context: grpc.aio.ServicerContext[Any, Any], error: StatusError) -> NoReturn:
    """End the call with `error`, and its retry delay when it has one."""
    status = rich_status(error)
    if status is None:
        await context.abort(error.code, error.message)
    else:
        await context.abort_with_status(rpc_status.to_status(status))
    raise AssertionError("unreachable: abort and abort_with_status raise")


def outcome(code: grpc.StatusCode, tier: str, finish: int) -> str:
    """What the deadline promise came to for one call: answered whole (by a tier or a
    cache), shaped (ended cleanly at the deadline), canned, missed (DEADLINE_EXCEEDED), or
    failed otherwise."""
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return "missed"
    if code != grpc.StatusCode.OK:
        return "failed"
    if tier == "fallback":
        return "canned"
    return "shaped" if finish == mesh_pb2.FINISH_REASON_DEADLINE else "answered"


def record(
    task: str,
    tier: str,
    code: grpc.StatusCode,
    received: float,
    ttft: float,
    messages: int,
    usage: mesh_pb2.Usage | None,
    finish: int = 0,
    priority: str = "",
    tenant: str = "other",
) -> None:
    """A stream's metrics, once at its end (never per token). `priority` is empty for
    a request refused before it had one."""
    metrics.series(metrics.REQUESTS, task, tier, code.name).inc()
    if priority:
        metrics.series(metrics.CLASS_REQUESTS, priority, tenant, code.name).inc()
        if messages:
            metrics.series(metrics.CLASS_TIME_TO_FIRST_TOKEN, priority).observe(ttft)
        if usage is not None:
            metrics.series(metrics.CLASS_TOKENS, priority, tenant, "in").inc(usage.prompt_tokens)
            metrics.series(metrics.CLASS_TOKENS, priority, tenant, "out").inc(usage.completion_tokens)
    metrics.series(metrics.DEADLINE_OUTCOMES, task, outcome(code, tier, finish)).inc()
    if not messages:
        return
    duration = time.monotonic() - received
    metrics.series(metrics.TIME_TO_FIRST_TOKEN, task, tier).observe(ttft)
    metrics.series(metrics.REQUEST_DURATION, task, tier).observe(duration)
    metrics.series(metrics.STREAM_MESSAGES, task, tier).inc(messages)
    # Coalescing merges deltas: the tier's token count, when it gives one, is the truth.
    tokens = usage.completion_tokens if usage is not None and usage.completion_tokens else messages
    if tokens > 1:
        metrics.series(metrics.INTER_TOKEN, task, tier).observe((duration - ttft) / (tokens - 1))
    if usage is not None:
        metrics.series(metrics.TOKENS, task, tier, "in").inc(usage.prompt_tokens)
        metrics.series(metrics.TOKENS, task, tier, "out").inc(usage.completion_tokens)


class MeshServicer(mesh_pb2_grpc.MeshServicer):
    def __init__(
        self,
        config: RouterConfig,
        pipeline: Backend,
        sessions: SessionStore,
        jobs: Jobs | None = None,
        coalesce: bool = False,
    ) -> None:
        self._config = config
        self._coalesce = coalesce
        self._pipeline = pipeline
        self._sessions = sessions
        self._jobs = jobs

    async def Generate(
        self,
        request: mesh_pb2.GenerateRequest,
        context: grpc.aio.ServicerContext[mesh_pb2.GenerateRequest, mesh_pb2.GenerateResponse],
    ) -> AsyncIterator[mesh_pb2.GenerateResponse]:
        responses = self.respond(request, context.invocation_metadata(), context.time_remaining())
        whole = False
        try:
            async for response in responses:
                yield response
                if response.finish_reason:
                    # The final message is out: returning sends the caller its trailers,
                    # and what the pipeline does after it (streams.run_out) takes the
                    # router's time, not the caller's deadline.
                    whole = True
                    run_out_later(responses)
                    return
        except StatusError as e:
            await abort(context, e)
        finally:
            if not whole:
                await close(responses)

    async def respond(
        self,
        request: mesh_pb2.GenerateRequest,
        metadata: tracing.Metadata | None,
        time_remaining: float | None,
        received: float | None = None,
    ) -> AsyncGenerator[mesh_pb2.GenerateResponse]:
        """Generate's answer, whichever server carries the call (grpc.aio's above, the
        native edge's in router/edge/native.py). `time_remaining` counts from `received`
        (a time.monotonic(); now if None): an edge that saw the request whole earlier says
        when. Failures the caller should see are `StatusError`s; the stream's metrics and
        span are recorded at its end."""
        received = time.monotonic() if received is None else received
        task = TASK_NAMES.get(request.task, "unknown")
        tier = "none"
        code = grpc.StatusCode.OK
        index = 0
        ttft = 0.0
        usage: mesh_pb2.Usage | None = None
        finish = 0
        priority, tenant = "", "other"
        span = tracing.start_span(GENERATE_SPAN, tracing.extract(metadata), SpanKind.SERVER, task=task)
        try:
            call = resolve(
                request,
                self._config,
                time_remaining,
                received,
                client_id(metadata),
                tracing.child_context(span),
            )
            priority, tenant = call.priority, self._config.router.traffic.tenant_label(call.client_id)
            responses = self._relay(call)
            try:
                async for response in responses:
                    if index == 0:
                        tier = TIER_LABELS[response.tier]
                        ttft = time.monotonic() - received
                    response.index = index
                    if response.finish_reason:
                        response.usage.time_to_first_token.FromNanoseconds(int(ttft * 1e9))
                        usage = response.usage
                        finish = response.finish_reason
                    index += 1
                    yield response
            finally:
                await close(responses)
        except StatusError as e:
            code = e.code
            raise
        except (asyncio.CancelledError, GeneratorExit):
            # The caller's deadline passing is the promise missed, not the caller leaving.
            expired = time_remaining is not None and time.monotonic() >= received + time_remaining
            code = grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
            raise
        except Exception:
            log.exception("router pipeline failed")
            code = grpc.StatusCode.INTERNAL
            raise StatusError(code, "internal router error") from None
        finally:
            record(task, tier, code, received, ttft, index, usage, finish, priority, tenant)
            span.set_attributes({"tier": tier, "rpc.grpc.status_code": code.value[0], "messages": index})
            span.end()

    def _relay(self, call: Call) -> AsyncIterator[mesh_pb2.GenerateResponse]:
        """The pipeline's stream as the caller gets it (close it with `streams.close`):
        coalesced here when the router decided so (router/edge: `coalescing`)."""
        stream = self._pipeline.generate(call)
        if self._coalesce:
            return coalesced(stream, call.cancel_tier_calls)
        return stream

    # --- jobs (Bronze) ---------------------------------------------------------

    def _forward(self) -> Jobs:
        if self._jobs is None:
            raise StatusError(grpc.StatusCode.UNIMPLEMENTED, "jobs need a Bronze tier; none is configured")
        return self._jobs

    @status_errors
    async def SubmitJob(
        self, request: mesh_pb2.SubmitJobRequest, context: Context
    ) -> mesh_pb2.SubmitJobResponse:
        return mesh_pb2.SubmitJobResponse(job=await self._forward().submit(request))

    @status_errors
    async def GetJob(self, request: mesh_pb2.GetJobRequest, context: Context) -> mesh_pb2.GetJobResponse:
        return mesh_pb2.GetJobResponse(job=await self._forward().get(request.job_id))

    async def WatchJob(
        self, request: mesh_pb2.WatchJobRequest, context: Context
    ) -> AsyncIterator[mesh_pb2.WatchJobResponse]:
        try:
            async for job in self._forward().watch(request.job_id, context.time_remaining()):
                yield mesh_pb2.WatchJobResponse(job=job)
        except StatusError as e:
            await abort(context, e)

    @status_errors
    async def CancelJob(
        self, request: mesh_pb2.CancelJobRequest, context: Context
    ) -> mesh_pb2.CancelJobResponse:
        return mesh_pb2.CancelJobResponse(job=await self._forward().cancel(request.job_id))

    # --- conversations ----------------------------------------------------------

    async def Converse(
        self, requests: AsyncIterator[mesh_pb2.ConverseRequest], context: Context
    ) -> AsyncIterator[mesh_pb2.ConverseResponse]:
        first: mesh_pb2.GenerateRequest | None = None
        turn = 0
        async for request in requests:
            try:
                first = first or request.turn
                if not request.turn.session_id:
                    raise invalid("a conversation needs a session_id")
                if (request.turn.npc_id, request.turn.session_id) != (first.npc_id, first.session_id):
                    raise StatusError(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        "every turn of a conversation has the same npc_id and session_id",
                    )
                # Each turn gets its task's budget, within what is left of the stream's.
                call = resolve(
                    request.turn,
                    self._config,
                    None,
                    client_id=client_id(context.invocation_metadata()),
                    priority=request.priority,
                )
                remaining = context.time_remaining()
                if remaining is not None:
                    call = dataclasses.replace(
                        call, deadline=min(call.deadline, time.monotonic() + remaining)
                    )
                deltas = self._relay(call)
                try:
                    async with asyncio.timeout(call.remaining()):
                        async for response in deltas:
                            yield mesh_pb2.ConverseResponse(turn=turn, delta=response)
                finally:
                    await close(deltas)
                async with store_errors():
                    session = await self._sessions.get(call.npc_id, call.session_id)
                if session is not None:
                    yield mesh_pb2.ConverseResponse(turn=turn, session=session)
            except StatusError as e:
                yield mesh_pb2.ConverseResponse(
                    turn=turn, error=mesh_pb2.TurnError(code=e.code.name, message=e.message)
                )
            except TimeoutError:
                error = mesh_pb2.TurnError(code="DEADLINE_EXCEEDED", message="the turn ran out of time")
                yield mesh_pb2.ConverseResponse(turn=turn, error=error)
            turn += 1

    # --- sessions ---------------------------------------------------------------

    @status_errors
    async def GetSession(
        self, request: mesh_pb2.GetSessionRequest, context: Context
    ) -> mesh_pb2.GetSessionResponse:
        check_session_ids(request.npc_id, request.session_id)
        async with store_errors():
            session = await self._sessions.get(request.npc_id, request.session_id)
        if session is None:
            raise StatusError(
                grpc.StatusCode.NOT_FOUND, f"no session {request.session_id!r} for {request.npc_id!r}"
            )
        return mesh_pb2.GetSessionResponse(session=session)

    @status_errors
    async def UpdateSession(
        self, request: mesh_pb2.UpdateSessionRequest, context: Context
    ) -> mesh_pb2.UpdateSessionResponse:
        check_session_ids(request.npc_id, request.session_id)
        check_session_update(request)

        def change(session: mesh_pb2.Session) -> None:
            if request.disposition:
                session.disposition = request.disposition
            for key, value in request.facts.items():
                if value:
                    session.facts[key] = value
                else:
                    session.facts.pop(key, None)

        async with store_errors():
            session = await self._sessions.update(
                request.npc_id, request.session_id, change, request.expected_version
            )
        return mesh_pb2.UpdateSessionResponse(session=session)

    @status_errors
    async def DeleteSession(
        self, request: mesh_pb2.DeleteSessionRequest, context: Context
    ) -> mesh_pb2.DeleteSessionResponse:
        check_session_ids(request.npc_id, request.session_id)
        async with store_errors():
            deleted = await self._sessions.delete(request.npc_id, request.session_id)
        return mesh_pb2.DeleteSessionResponse(deleted=deleted)
