"""One HTTP/2 connection to a tier replica, framed by nghttp2 in C (h2tier.c), its calls
multiplexed on it: a call sends its whole request once, and takes whole response
messages as they arrive (a frame may straddle reads), then how it ended (its trailers'
status, or a reset). A call's deadline is one timer; cancelling it resets its stream;
keepalive (keepalive.py) closes a connection whose replica went silent while calls wait
on it. router/backends/tier_native.py is the router's adapter on it.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any, cast
from urllib.parse import unquote

import grpc

from router.native import build, wire
from router.native.keepalive import TIER_INTERVAL_S, TIMEOUT_S, Keepalive

_native = build.load("h2tier")
ffi, lib = _native.ffi, _native.lib

REFUSED_STREAM = 7
STATUS_CODES = {code.value[0]: code for code in grpc.StatusCode}  # grpc-status → StatusCode


class TierConnection(asyncio.Protocol):
    """One HTTP/2 connection to a replica; its calls multiplex on it."""

    def __init__(self, keepalive_s: float = TIER_INTERVAL_S, keepalive_timeout_s: float = TIMEOUT_S) -> None:
        self.native = lib.h2t_new()
        if self.native == ffi.NULL:
            raise MemoryError("nghttp2 session")
        # Kept: asyncio.get_running_loop() is a getpid() system call on Python 3.11.
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, TierStream] = {}
        self._size = ffi.new("size_t *")
        self._sid = ffi.new("int32_t *")
        self.keepalive = Keepalive(
            self.loop, keepalive_s, keepalive_timeout_s,
            calls_open=lambda: bool(self.streams), ping=self._ping, close=self.close, peer="tier",
        )  # fmt: skip

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.keepalive.start()
        self.pump()

    def _ping(self) -> bool:
        if self.native is None:
            return False
        lib.h2t_ping(self.native)
        self.pump()
        return self.native is not None  # False: writing found the connection dead

    def data_received(self, data: bytes) -> None:
        if self.native is None:
            return
        self.keepalive.heard()
        if lib.h2t_recv(self.native, data, len(data)) < 0:
            self.close()
            return
        self.pump()

    def connection_lost(self, exc: Exception | None) -> None:
        self.close()

    def usable(self) -> bool:
        return self.native is not None and bool(lib.h2t_usable(self.native))

    def pump(self) -> None:
        """Act on nghttp2's events and write what it has ready, until neither is left:
        writing raises events too (a cancelled stream closes once its RST_STREAM is out,
        and would otherwise stay open until the replica next sends something)."""
        while self._dispatch() and self._write():
            pass
        if self.native is not None and not lib.h2t_alive(self.native):
            self.close()  # a connection error: nghttp2 wrote its GOAWAY and is done

    def _dispatch(self) -> bool:
        """Act on the events nghttp2 has queued; False once the connection is gone."""
        while self.native is not None and (kind := lib.h2t_event(self.native, self._sid)):
            stream = self.streams.get(self._sid[0])
            if stream is None:
                continue
            if kind == lib.H2T_DATA:
                stream.take()
            elif kind == lib.H2T_CLOSED:
                del self.streams[self._sid[0]]
                stream.take()
                stream.end()
        return self.native is not None

    def _write(self) -> bool:
        """Write what nghttp2 has ready; whether there was anything."""
        if self.native is None or self.transport is None:
            return False
        if (data := lib.h2t_pending(self.native, self._size)) == ffi.NULL:
            return False
        self.transport.write(ffi.buffer(data, self._size[0])[:])
        return True

    def request(self, fields: bytes, body: bytes, deadline: float) -> TierStream | None:
        """A new stream with this request (`deadline` in loop time), or None when the
        connection takes no more."""
        if self.native is None:
            return None
        handle = lib.h2t_request(self.native, fields, len(fields), body, len(body))
        if handle == ffi.NULL:
            return None
        stream = self.streams[lib.h2t_sid(handle)] = TierStream(self, handle)
        self.pump()
        # Armed once the request is on its way: the timer is not first-token time.
        stream.timer = self.loop.call_at(deadline, stream.expire)
        return stream

    def close(self) -> None:
        """The connection is gone: every open stream ends (h2t_free marks them reset)."""
        if self.native is None:
            return
        lib.h2t_free(self.native)
        self.native = None
        self.keepalive.stop()
        if self.transport is not None:
            self.transport.close()
        streams, self.streams = self.streams, {}
        for stream in streams.values():
            stream.end()


class TierStream:
    """One call's response as it arrives: whole messages, then how it ended."""

    def __init__(self, connection: TierConnection, handle: Any) -> None:
        self.connection = connection
        self.timer: asyncio.TimerHandle | None = None  # the call's deadline, armed by `request`
        self.handle = handle
        self.buffer = b""
        self.messages: collections.deque[bytes] = collections.deque()
        self.ended = False
        self.cancelled = False
        self.released = False
        self.expired = False
        self.waiter: asyncio.Future[None] | None = None
        self._size = connection._size

    def take(self) -> None:
        """Split what nghttp2 gathered into messages (a frame may straddle takes)."""
        if self.handle is None:
            return
        data = lib.h2t_take(self.handle, self._size)
        if not self._size[0]:
            return
        buffer = self.buffer + ffi.buffer(data, self._size[0])[:]
        lib.h2t_taken(self.connection.native or ffi.NULL, self.handle)
        if self.released:
            return  # read only to keep the connection's window open
        start = 0  # the next frame's offset: the rest is copied once, not after each message
        while len(buffer) - start >= 5:
            end = start + 5 + int.from_bytes(buffer[start + 1 : start + 5], "big")
            if len(buffer) < end:
                break
            self.messages.append(buffer[start + 5 : end])
            start = end
        self.buffer = buffer[start:]
        self.wake()

    def end(self) -> None:
        self.ended = True
        self.wake()
        if self.released:
            self.free()

    def wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def expire(self) -> None:
        """The call's deadline passed (one timer per stream, not one per wait)."""
        self.expired = True
        self.wake()

    async def next(self) -> bytes | None:
        """The next message; None once the stream ended (see `status`). TimeoutError past
        the deadline; CancelledError once cancelled, as a grpc.aio call's read (a
        cancelled call is the caller leaving, not the tier failing)."""
        while not self.messages:
            if self.cancelled:
                raise asyncio.CancelledError
            if self.expired:
                raise TimeoutError
            if self.ended:
                return None
            self.waiter = self.connection.loop.create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        return self.messages.popleft()

    def status(self) -> tuple[grpc.StatusCode | None, str]:
        """How the stream ended: the trailers' status and message; None and why when it
        was reset or carried no status."""
        error = lib.h2t_error(self.handle)
        if error == REFUSED_STREAM:
            return None, "stream refused"
        if error > 0:
            return None, f"stream reset (HTTP/2 error {error})"
        headers = lib.h2t_headers(self.handle, self._size)
        fields = wire.fields(ffi.buffer(headers, self._size[0])[:]) if self._size[0] else []
        last_first = fields[::-1]  # the trailers' fields (the last block) before the headers'
        status = wire.header(last_first, "grpc-status")
        if status is None or not status.isdigit():
            return None, "response without grpc-status"
        message = unquote(wire.header(last_first, "grpc-message") or "")
        return STATUS_CODES.get(int(status), grpc.StatusCode.UNKNOWN), message

    def cancel(self) -> None:
        if self.ended or self.cancelled:
            return
        self.cancelled = True
        self.wake()
        if self.connection.native is not None:
            lib.h2t_cancel(self.connection.native, self.handle)
            self.connection.pump()

    def release(self) -> None:
        """The call is done with the stream; it is freed once nghttp2 is too (a cancelled
        stream's last bytes may still come, and are read to keep the window open)."""
        self.released = True
        if self.timer is not None:
            self.timer.cancel()
        if self.ended:
            self.free()

    def free(self) -> None:
        if self.handle is not None:
            lib.h2t_release(self.handle)
            self.handle = None


def grpc_timeout(seconds: float) -> str:
    """`grpc-timeout`: at most 8 digits, so milliseconds up to a day, then seconds."""
    millis = max(1, int(seconds * 1000))
    return f"{millis}m" if millis < 100_000_000 else f"{int(seconds)}S"
