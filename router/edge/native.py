"""The router's native edge (`data_path.edge: native`, the default): callers' HTTP/2
framed by nghttp2 in C (router/native/caller.py), the gRPC stack out of Generate's way.
Generate is answered here: Python is entered once when a request is whole, runs the
servicer's `respond` (the same pipeline, metrics and tracing as the grpc.aio edge) and
hands C each response message already framed. Every other call (health, reflection,
jobs, sessions, Converse) is relayed by C to the router's grpc.aio server on a private
Unix socket, which serves them as before, auth interceptor included.

What grpc.aio does for a call is done here: deadlines (`grpc-timeout`), gRPC's request
rules, status trailers with their details, authentication, size limits, caller
cancellation (a reset stream cancels its task, and so the tier call), flow control.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path

import grpc

from router import metrics
from router.auth import CLIENT, Authenticator
from router.native import wire
from router.native.caller import CallerConnection, H2Edge, Limits
from router.native.keepalive import CALLER_INTERVAL_S, TIMEOUT_S
from router.server import MeshServicer, rich_status
from router.settings import CallerLimits
from router.streams import run_out
from tiermesh.errors import StatusError, invalid
from tiermesh.v1 import mesh_pb2

log = logging.getLogger(__name__)

GENERATE = b"/tiermesh.v1.Mesh/Generate"
DEADLINE = wire.trailers(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")


def native_limits(caller: CallerLimits, max_message_bytes: int) -> Limits:
    """router.limits as the native edge keeps them."""
    return Limits(
        max_body=max_message_bytes + 5,  # one message and its frame's prefix
        max_header_bytes=caller.max_header_list_bytes,
        max_header_fields=caller.max_header_fields,
        max_buffered=caller.max_buffered_request_bytes,
        max_streams=caller.max_streams_per_connection,
        max_connections=caller.max_connections,
        preface_s=caller.preface_timeout_s,
        header_s=caller.header_timeout_s,
        body_s=caller.body_timeout_s,
        idle_s=caller.idle_timeout_s,
    )


def refused(reason: str) -> None:
    metrics.EDGE_REFUSED.labels(reason).inc()


class NativeEdge(H2Edge):
    """The native edge with Generate answered by `servicer`; the rest relayed to the
    grpc.aio server at `internal` (a Unix socket path)."""

    def __init__(
        self,
        servicer: MeshServicer,
        internal: str,
        max_message_bytes: int,
        authenticator: Authenticator | None = None,
        *,
        limits: CallerLimits,
        keepalive_s: float = CALLER_INTERVAL_S,
        keepalive_timeout_s: float = TIMEOUT_S,
    ) -> None:
        super().__init__(
            internal,
            native_limits(limits, max_message_bytes),
            GENERATE,
            keepalive_s=keepalive_s,
            keepalive_timeout_s=keepalive_timeout_s,
            on_refused=refused,
        )
        self.servicer = servicer
        self.max_message_bytes = max_message_bytes
        self.authenticator = authenticator

    async def close(self, grace: float | None) -> None:
        await super().close(grace)
        if isinstance(self.internal, str):  # the private socket's folder goes with it
            shutil.rmtree(Path(self.internal).parent, ignore_errors=True)

    async def answer(
        self, connection: CallerConnection, sid: int, block: bytes, body: bytes | None, arrived: float
    ) -> None:
        """One Generate call, from its whole request to its trailers; its deadline counts
        from `arrived`, when the request was whole."""
        deadline: asyncio.TimerHandle | None = None
        try:
            try:
                headers = wire.request(wire.fields(block))
            except StatusError as e:
                log.info("native edge: refused a Generate request from %s: %s", connection.peer, e.message)
                raise
            metadata, timeout = headers.metadata, headers.timeout
            if self.authenticator is not None:
                CLIENT.set(self.authenticator.authenticate(metadata))
            if body is not None and body[:1] == b"\1":
                # Inflating takes up to the size limit's worth of work: not on the loop.
                loop = self.loop or asyncio.get_running_loop()
                payload = await loop.run_in_executor(
                    None, wire.message, headers, body, self.max_message_bytes
                )
            else:
                payload = wire.message(headers, body, self.max_message_bytes)
            request = mesh_pb2.GenerateRequest()
            try:
                request.ParseFromString(payload)
            except Exception as e:  # protobuf's DecodeError, by any backend's name for it
                raise invalid(f"cannot parse the request: {e}") from None
            if timeout is not None:
                # One timer that cancels the stream's task (asyncio.timeout is an object,
                # two running-loop lookups and a cancel count more, per call).
                loop = self.loop or asyncio.get_running_loop()
                deadline = loop.call_at(arrived + timeout, connection.expire, sid)
            responses = self.servicer.respond(request, metadata, timeout, arrived)
            whole = False
            try:
                async for response in responses:
                    if connection.send(sid, wire.frame(response.SerializeToString())):
                        await connection.drained(sid)
                    if response.finish_reason:
                        whole = True
                        break
            finally:
                if not whole:
                    await responses.aclose()
            # The final message is out: the caller gets its trailers now, and what the
            # pipeline does after it (streams.run_out) takes the router's time, not the
            # caller's deadline.
            connection.finish(sid, wire.OK_TRAILERS)
            if whole:
                await run_out(responses)
        except wire.HttpRefusal as e:
            connection.finish(sid, wire.trailers(e.code, e.message), e.http_status)
        except StatusError as e:
            connection.finish(sid, wire.trailers(e.code, e.message, rich_status(e)))
        except asyncio.CancelledError:
            if sid not in connection.expired:
                raise  # the caller reset the stream or left
            connection.finish(sid, DEADLINE)
        except Exception:
            log.exception("native edge: Generate failed")
            connection.finish(sid, wire.trailers(grpc.StatusCode.INTERNAL, "internal router error"))
        finally:
            if deadline is not None:
                deadline.cancel()
