"""The router's native edge (`data_path.edge: native`): callers' HTTP/2 framed by
nghttp2 in C (router/native/h2edge.c), the gRPC stack left out of the data path.

- Generate is served here: Python is entered once when a request is whole, runs the
  servicer's `respond` (the same pipeline, metrics and tracing as the grpc.aio edge) and
  hands C each response message already framed.
- Every other call (health, reflection, jobs, sessions, Converse) is relayed by C,
  frame by frame, to the router's grpc.aio server on a Unix socket, which keeps serving
  them as before, auth interceptor included.

What grpc.aio did for Generate is done here: deadlines (`grpc-timeout`), status trailers
with their details, authentication, size limits, caller cancellation (a reset stream
cancels its task, and so the tier call), flow control (a stream whose caller reads slower
than the tier writes waits once 64 KiB are queued), keepalive (a caller silent for 2 h
while its calls are open is pinged, and dropped when 20 s more pass: gRPC's server
defaults, router/native/keepalive.py) and GOAWAY on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import grpc

from router import native
from router.auth import CLIENT, Authenticator
from router.native import wire
from router.native.keepalive import CALLER_INTERVAL_S, TIMEOUT_S, Keepalive
from router.server import MeshServicer, rich_status
from tiermesh.config import TlsSettings
from tiermesh.errors import StatusError, invalid
from tiermesh.tls import server_ssl_context
from tiermesh.v1 import mesh_pb2

log = logging.getLogger(__name__)

CDEF = """
typedef struct h2e_conn h2e_conn;
h2e_conn *h2e_new(const uint8_t *, size_t, size_t, uint32_t);
void h2e_free(h2e_conn *);
ssize_t h2e_recv(h2e_conn *, int, const uint8_t *, size_t);
const uint8_t *h2e_pending(h2e_conn *, int, size_t *);
int h2e_event(h2e_conn *, int32_t *);
const uint8_t *h2e_request(h2e_conn *, int32_t, size_t *, const uint8_t **, size_t *);
size_t h2e_send(h2e_conn *, int32_t, const uint8_t *, size_t, size_t);
int h2e_watching(h2e_conn *, int32_t);
void h2e_finish(h2e_conn *, int32_t, const uint8_t *, size_t);
void h2e_goaway(h2e_conn *);
void h2e_ping(h2e_conn *);
size_t h2e_open_streams(h2e_conn *);
int h2e_alive(h2e_conn *);
"""
_native = native.load("h2edge", [native.COMMON, Path(__file__).with_name("h2edge.c")], CDEF, ["nghttp2"])
ffi, lib = _native.ffi, _native.lib

REQUEST, CLOSED, DRAINED, CONNECT = 1, 2, 3, 4  # h2edge.c's events
GENERATE = b"/tiermesh.v1.Mesh/Generate"
HIGH_WATER = 64 * 1024  # bytes of one stream queued for a slow caller before it waits
DEADLINE = wire.trailers(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")


class NativeEdge:
    """Listens for callers; serves Generate with `servicer`, relays the rest to the grpc.aio
    server at `internal` (a Unix socket path)."""

    def __init__(
        self,
        servicer: MeshServicer,
        internal: str,
        max_message_bytes: int,
        authenticator: Authenticator | None = None,
        native_path: bytes = GENERATE,
        *,
        max_streams: int,
        keepalive_s: float = CALLER_INTERVAL_S,
        keepalive_timeout_s: float = TIMEOUT_S,
    ) -> None:
        self.servicer = servicer
        self.internal = internal
        self.native_path = native_path  # the method answered here; every other is relayed
        self.max_message_bytes = max_message_bytes
        self.max_streams = max_streams  # open at once per caller connection (SETTINGS)
        self.keepalive_s, self.keepalive_timeout_s = keepalive_s, keepalive_timeout_s
        self.authenticator = authenticator
        self.connections: set[CallerConnection] = set()
        self.tasks: set[asyncio.Task[Any]] = set()  # kept referenced while they run
        self.server: asyncio.Server | None = None
        self.port = 0
        self.loop: asyncio.AbstractEventLoop | None = None  # kept: getting it is a getpid() on 3.11

    async def start(self, listen: str, tls: TlsSettings | None = None, reuse_port: bool = False) -> int:
        host, _, port = listen.rpartition(":")
        self.loop = asyncio.get_running_loop()
        self.server = await self.loop.create_server(
            lambda: CallerConnection(self),
            host.strip("[]") or None,
            int(port),
            ssl=server_ssl_context(tls) if tls is not None else None,
            reuse_port=reuse_port or None,
        )
        self.port = self.server.sockets[0].getsockname()[1]
        return self.port

    def spawn(self, coroutine: Any) -> asyncio.Task[Any]:
        task = (self.loop or asyncio.get_running_loop()).create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def open_internal(self, protocol: Callable[[], asyncio.Protocol]) -> None:
        """Connect a caller connection's relayed streams to the grpc.aio server."""
        await (self.loop or asyncio.get_running_loop()).create_unix_connection(protocol, self.internal)

    async def close(self, grace: float | None) -> None:
        """Stop accepting, refuse new streams (GOAWAY), let open ones finish within `grace`."""
        if self.server is not None:
            self.server.close()
        for connection in list(self.connections):
            connection.goaway()  # an idle connection closes at once
        if grace:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    # Streams end in C, relayed ones unseen by Python: look every 10 ms.
                    while any(c.open_streams() for c in self.connections):  # noqa: ASYNC110
                        await asyncio.sleep(0.01)
        for connection in list(self.connections):
            connection.close()
        if self.server is not None:
            await self.server.wait_closed()

    async def answer(self, connection: CallerConnection, sid: int, block: bytes, body: bytes | None) -> None:
        """One Generate call, from its whole request to its trailers."""
        deadline: asyncio.TimerHandle | None = None
        try:
            headers = wire.request(wire.fields(block))
            metadata, timeout = headers.metadata, headers.timeout
            if self.authenticator is not None:
                CLIENT.set(self.authenticator.authenticate(metadata))
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
                deadline = loop.call_at(loop.time() + timeout, connection.expire, sid)
            responses = self.servicer.respond(request, metadata, timeout)
            try:
                async for response in responses:
                    if connection.send(sid, wire.frame(response.SerializeToString())):
                        await connection.drained(sid)
            finally:
                await responses.aclose()
            connection.finish(sid, wire.OK_TRAILERS)
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


class CallerConnection(asyncio.Protocol):
    """One caller's connection, framed by one h2e_conn; its relayed streams share one
    connection to the internal server, opened when the first one comes."""

    def __init__(self, edge: NativeEdge) -> None:
        self.edge = edge
        self.native = lib.h2e_new(
            edge.native_path, len(edge.native_path), edge.max_message_bytes + 5, edge.max_streams
        )
        if self.native == ffi.NULL:
            raise MemoryError("nghttp2 session")
        self.caller: asyncio.Transport | None = None
        self.internal: asyncio.Transport | None = None
        self.paused = False
        self.streams: dict[int, asyncio.Task[None]] = {}  # native streams being answered
        self.draining: dict[int, asyncio.Future[None]] = {}
        self.expired: set[int] = set()  # streams whose deadline passed, their task cancelled
        self._size = ffi.new("size_t *")
        self._sid = ffi.new("int32_t *")
        self._body = ffi.new("const uint8_t **")
        self._bodylen = ffi.new("size_t *")
        self.keepalive = Keepalive(
            edge.loop or asyncio.get_running_loop(), edge.keepalive_s, edge.keepalive_timeout_s,
            calls_open=lambda: bool(self.open_streams()), ping=self.ping, close=self.close, peer="caller",
        )  # fmt: skip

    # --- the caller's socket ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.caller = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.edge.connections.add(self)
        self.keepalive.start()
        self.pump()  # our SETTINGS

    def data_received(self, data: bytes) -> None:
        self.received(True, data)

    def pause_writing(self) -> None:
        self.paused = True  # frames wait in nghttp2; streams past HIGH_WATER wait too

    def resume_writing(self) -> None:
        self.paused = False
        self.pump()

    def connection_lost(self, exc: Exception | None) -> None:
        self.close()

    # --- both sides -------------------------------------------------------------------

    def received(self, from_caller: bool, data: bytes) -> None:
        if self.native is None:
            return
        if from_caller:
            self.keepalive.heard()
        if lib.h2e_recv(self.native, from_caller, data, len(data)) < 0:
            self.close()  # a protocol error: nghttp2 has queued its GOAWAY, but the peer broke HTTP/2
            return
        self.pump()

    def pump(self) -> None:
        """Act on nghttp2's events, write what it has ready (which can raise more)."""
        self.dispatch()
        self.write()
        self.dispatch()
        if self.native is not None and not lib.h2e_alive(self.native):
            self.close()  # a connection error: nghttp2 wrote its GOAWAY and is done

    def write(self) -> None:
        if self.native is None:
            return
        for to_caller, transport in ((True, None if self.paused else self.caller), (False, self.internal)):
            if transport is None:
                continue
            if (data := lib.h2e_pending(self.native, to_caller, self._size)) != ffi.NULL:
                transport.write(ffi.buffer(data, self._size[0])[:])

    def dispatch(self) -> None:
        while self.native is not None and (kind := lib.h2e_event(self.native, self._sid)):
            sid = self._sid[0]
            if kind == REQUEST:
                self.start(sid)
            elif kind == CLOSED:
                # The caller reset the stream (or left) before its answer was done.
                if (task := self.streams.pop(sid, None)) is not None:
                    task.cancel()
                self.wake(sid)
            elif kind == DRAINED:
                self.wake(sid)
            elif kind == CONNECT:
                self.edge.spawn(self.connect_internal())

    def close(self) -> None:
        if self.native is None:
            return
        self.edge.connections.discard(self)
        self.keepalive.stop()
        for task in self.streams.values():
            task.cancel()
        self.streams.clear()
        for transport in (self.caller, self.internal):
            if transport is not None:
                transport.close()
        lib.h2e_free(self.native)
        self.native = None

    # --- native streams ------------------------------------------------------------------

    def start(self, sid: int) -> None:
        assert self.native is not None
        block = lib.h2e_request(self.native, sid, self._size, self._body, self._bodylen)
        if block == ffi.NULL:
            return
        headers = ffi.buffer(block, self._size[0])[:]
        body = None if self._body[0] == ffi.NULL else ffi.buffer(self._body[0], self._bodylen[0])[:]
        self.streams[sid] = self.edge.spawn(self.edge.answer(self, sid, headers, body))

    def send(self, sid: int, data: bytes) -> bool:
        """Queue response bytes; True when the caller is that far behind that the stream
        should wait for `drained`."""
        if self.native is None or sid not in self.streams:
            return False
        waiting = lib.h2e_send(self.native, sid, data, len(data), HIGH_WATER)
        self.pump()
        if waiting <= HIGH_WATER or self.native is None or sid not in self.streams:
            return False
        # Asked after the write: what went out in it at once leaves no DRAINED to wait for
        # (its event was dispatched before any waiter existed, and the stream stalled).
        return bool(lib.h2e_watching(self.native, sid))

    async def drained(self, sid: int) -> None:
        waiter = self.draining[sid] = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            self.draining.pop(sid, None)

    def wake(self, sid: int) -> None:
        if (waiter := self.draining.get(sid)) is not None and not waiter.done():
            waiter.set_result(None)

    def expire(self, sid: int) -> None:
        """The stream's deadline passed: its task ends it with DEADLINE_EXCEEDED."""
        if (task := self.streams.get(sid)) is not None:
            self.expired.add(sid)
            task.cancel()

    def finish(self, sid: int, trailers: bytes) -> None:
        self.expired.discard(sid)
        if self.native is None or self.streams.pop(sid, None) is None:
            return
        lib.h2e_finish(self.native, sid, trailers, len(trailers))
        self.pump()

    # --- the internal server, for relayed streams --------------------------------------

    async def connect_internal(self) -> None:
        try:
            await self.edge.open_internal(lambda: Internal(self))
        except OSError as e:
            log.error("native edge: cannot reach the server it relays to: %s", e)
            self.close()

    def ping(self) -> bool:
        """A keepalive PING; False when writing it found the connection dead (closed)."""
        if self.native is None:
            return False
        lib.h2e_ping(self.native)
        self.pump()
        return self.native is not None

    def goaway(self) -> None:
        if self.native is not None:
            lib.h2e_goaway(self.native)
            self.pump()

    def open_streams(self) -> int:
        return 0 if self.native is None else int(lib.h2e_open_streams(self.native))


class Internal(asyncio.Protocol):
    """The connection to the router's grpc.aio server that carries relayed streams."""

    def __init__(self, connection: CallerConnection) -> None:
        self.connection = connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.connection.internal = cast(asyncio.Transport, transport)
        if self.connection.native is None:  # the caller left meanwhile
            transport.close()
            return
        self.connection.pump()

    def data_received(self, data: bytes) -> None:
        self.connection.received(False, data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.connection.close()
