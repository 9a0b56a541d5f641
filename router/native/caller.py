"""A caller-facing HTTP/2 edge on nghttp2 (h2edge.c): each caller connection is framed in
C. Streams of one path (`native_path`) are handed whole to `answer`, which a host
overrides (the router's Generate: router/edge/native.py); every other stream is relayed
frame by frame, in C, to an internal server (a Unix socket path, or a TCP address), over
one connection per caller connection opened when its first such stream comes. With no
native path it is a plain HTTP/2 relay (the proxy benchmark's reference).

A caller is not trusted: what each connection may hold (`Limits`: header bytes and
fields, streams, buffered request bytes, the preface's, headers', body's and idle time)
is bounded in C, which answers a stream past a bound itself; keepalive drops a caller
gone silent while its calls are open (keepalive.py); shutdown says GOAWAY and lets open
streams finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import grpc

from router.native import build, wire
from router.native.keepalive import CALLER_INTERVAL_S, TIMEOUT_S, Keepalive
from tiermesh.tls import TlsSettings, server_ssl_context

log = logging.getLogger(__name__)

_native = build.load("h2edge")
ffi, lib = _native.ffi, _native.lib

HIGH_WATER = 64 * 1024  # bytes of one stream queued for a slow caller before it waits
# Streams the edge answered itself, by the reason `on_refused` is told.
REFUSED = {
    lib.H2E_REFUSED_HEADERS: "header_limit",
    lib.H2E_REFUSED_BUFFERED: "buffered_limit",
    lib.H2E_REFUSED_BODY: "body_timeout",
}
ENHANCE_YOUR_CALM = 0xB  # HTTP/2's error code for a peer asking too much


@dataclass(frozen=True)
class Limits:
    """What one caller connection may hold (h2e_limits, and the connection count)."""

    max_body: int  # one framed request message of the native path
    max_header_bytes: int = 16 * 1024
    max_header_fields: int = 100
    max_buffered: int = 8 << 20
    max_streams: int = 128
    max_connections: int = 4096
    preface_s: float = 10.0
    header_s: float = 10.0
    body_s: float = 30.0
    idle_s: float = 3600.0

    def for_c(self) -> Any:
        return ffi.new(
            "h2e_limits *",
            {
                "max_body": self.max_body,
                "max_header_bytes": self.max_header_bytes,
                "max_header_fields": self.max_header_fields,
                "max_buffered": self.max_buffered,
                "max_streams": self.max_streams,
                "preface_ms": int(self.preface_s * 1000),
                "header_ms": int(self.header_s * 1000),
                "body_ms": int(self.body_s * 1000),
                "idle_ms": int(self.idle_s * 1000),
            },
        )


class H2Edge:
    """Listens for callers; answers `native_path` with `answer`, relays the rest to
    `internal` (a Unix socket path, or a (host, port) address)."""

    def __init__(
        self,
        internal: str | tuple[str, int],
        limits: Limits,
        native_path: bytes = b"",
        *,
        keepalive_s: float = CALLER_INTERVAL_S,
        keepalive_timeout_s: float = TIMEOUT_S,
        on_refused: Callable[[str], None] = lambda reason: None,
    ) -> None:
        self.internal = internal
        self.native_path = native_path  # the method answered here; every other is relayed
        self.limits = limits
        self.c_limits = limits.for_c()
        self.keepalive_s, self.keepalive_timeout_s = keepalive_s, keepalive_timeout_s
        self.on_refused = on_refused  # what the edge refused itself, for metrics
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
        """Connect a caller connection's relayed streams to the internal server."""
        loop = self.loop or asyncio.get_running_loop()
        if isinstance(self.internal, str):
            await loop.create_unix_connection(protocol, self.internal)
        else:
            await loop.create_connection(protocol, *self.internal)

    async def answer(
        self, connection: CallerConnection, sid: int, block: bytes, body: bytes | None, arrived: float
    ) -> None:
        """A stream of the native path, from its whole request (whole at `arrived`, a
        time.monotonic()) to its trailers: a host overrides this."""
        connection.finish(sid, wire.trailers(grpc.StatusCode.UNIMPLEMENTED, "no method is answered here"))

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


class CallerConnection(asyncio.Protocol):
    """One caller's connection, framed by one h2e_conn; its relayed streams share one
    connection to the internal server, opened when the first one comes. Its timeouts
    (router.limits) are kept by one timer that h2e_sweep plans: no timer per stream."""

    def __init__(self, edge: H2Edge) -> None:
        self.edge = edge
        self.native = lib.h2e_new(edge.native_path, len(edge.native_path), edge.c_limits)
        if self.native == ffi.NULL:
            raise MemoryError("nghttp2 session")
        self.loop = edge.loop or asyncio.get_running_loop()
        self.caller: asyncio.Transport | None = None
        self.internal: asyncio.Transport | None = None
        self.peer = "?"
        self.paused = False
        self.streams: dict[int, asyncio.Task[None]] = {}  # native streams being answered
        self.draining: dict[int, asyncio.Future[None]] = {}
        self.expired: set[int] = set()  # streams whose deadline passed, their task cancelled
        self.sweeper: asyncio.TimerHandle | None = None
        self._size = ffi.new("size_t *")
        self._sid = ffi.new("int32_t *")
        self._body = ffi.new("const uint8_t **")
        self._bodylen = ffi.new("size_t *")
        self._wait = ffi.new("int64_t *")
        self.keepalive = Keepalive(
            self.loop, edge.keepalive_s, edge.keepalive_timeout_s,
            calls_open=lambda: bool(self.open_streams()), ping=self.ping, close=self.close, peer="caller",
        )  # fmt: skip

    # --- the caller's socket ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.caller = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.peer = str(transport.get_extra_info("peername"))
        if len(self.edge.connections) >= self.edge.limits.max_connections:
            log.warning("native edge: at its connection limit; refusing %s", self.peer)
            self.edge.on_refused("connection_limit")
            self.end(ENHANCE_YOUR_CALM)
            return
        self.edge.connections.add(self)
        self.keepalive.start()
        self.plan()  # the preface's timeout
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
            # The connection broke HTTP/2 (or memory ran out): C queued a GOAWAY saying
            # why, which goes out before the socket closes.
            log.info("native edge: dropping %s: it broke HTTP/2", self.peer)
            self.edge.on_refused("protocol_error")
            self.pump()
            self.close()
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
            if kind == lib.H2E_REQUEST:
                self.start(sid)
            elif kind == lib.H2E_CLOSED:
                # The caller reset the stream (or left) before its answer was done.
                if (task := self.streams.pop(sid, None)) is not None:
                    task.cancel()
                self.wake(sid)
            elif kind == lib.H2E_DRAINED:
                self.wake(sid)
            elif kind == lib.H2E_CONNECT:
                self.edge.spawn(self.connect_internal())
            elif kind == lib.H2E_WATCH:
                self.plan()
            elif (reason := REFUSED.get(kind)) is not None:
                log.info("native edge: refused a stream of %s: %s", self.peer, reason)
                self.edge.on_refused(reason)

    def sweep(self) -> None:
        """The timer's turn: the connection's timeouts, then what they answered goes out."""
        self.sweeper = None
        self.plan()
        self.pump()

    def plan(self) -> None:
        """The connection's timeouts, kept by C (h2e_sweep): streams whose request is late
        are answered there; a connection without a preface, stuck in a header block or
        idle goes. Then the timer is set for the next sweep C asks for."""
        if self.native is None:
            return
        if self.sweeper is not None:
            self.sweeper.cancel()
            self.sweeper = None
        verdict = lib.h2e_sweep(self.native, self._wait)
        if verdict == lib.H2E_DROP:
            log.info("native edge: dropping %s: no preface, or headers left unfinished, in time", self.peer)
            self.edge.on_refused("timeout")
            self.end(None)
        elif verdict == lib.H2E_IDLE:
            self.end(0)  # GOAWAY, NO_ERROR: gRPC clients reconnect when they next call
        elif self._wait[0] >= 0:
            self.sweeper = self.loop.call_later(self._wait[0] / 1000, self.sweep)

    def end(self, error_code: int | None) -> None:
        """Close the connection after a GOAWAY with `error_code` (None: the one C queued)."""
        if self.native is None:
            return
        if error_code is not None:
            lib.h2e_terminate(self.native, error_code)
        self.write()
        self.close()

    def close(self) -> None:
        if self.native is None:
            return
        self.edge.connections.discard(self)
        self.keepalive.stop()
        if self.sweeper is not None:
            self.sweeper.cancel()
            self.sweeper = None
        for task in self.streams.values():
            task.cancel()
        self.streams.clear()
        for transport in (self.caller, self.internal):
            if transport is not None:
                transport.close()  # what was written still goes out first
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
        # The call's clock starts now, not when its task first runs: requests that come in
        # one read start one after another, and on a busy host a task can wait several
        # scheduler slices for its turn, time the caller's deadline has already spent.
        arrived = time.monotonic()
        self.streams[sid] = self.edge.spawn(self.edge.answer(self, sid, headers, body, arrived))

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

    def finish(self, sid: int, trailers: bytes, http_status: int = 200) -> None:
        self.expired.discard(sid)
        if self.native is None or self.streams.pop(sid, None) is None:
            return
        lib.h2e_finish(self.native, sid, http_status, trailers, len(trailers))
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
