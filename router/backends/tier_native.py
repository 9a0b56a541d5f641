"""Tier replicas called over nghttp2 (`data_path.tier_client: native`): the adapter of
router/backends/tier_grpc.py with its Generate calls on one HTTP/2 connection per
replica (router/native/tier.py) instead of a grpc.aio channel: `grpc-timeout` and the
call's own deadline, status trailers to StatusError, cancellation (RST_STREAM),
reconnection after a connection fails or a GOAWAY, TLS. What arrived together leaves
merged (when the router coalesces)."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator

import grpc

from router.backends import attempt_span, tier_failed
from router.backends.health import GrpcHealth
from router.backends.tier_grpc import CHANNEL_OPTIONS, GENERATE, tier_request, tier_status
from router.call import Call
from router.coalesce import merge_waiting
from router.native import wire
from router.native.tier import TierConnection, grpc_timeout
from tiermesh import tracing
from tiermesh.errors import StatusError
from tiermesh.tls import TlsSettings, aio_channel, client_ssl_context
from tiermesh.v1 import mesh_pb2


class NativeTier:
    """One tier replica; Generate calls on a native HTTP/2 connection, health on a
    grpc.aio channel of its own (composed: grpc.health.v1 Watch)."""

    def __init__(
        self,
        name: str,
        address: str,
        health_service: str = "",
        health_retry_s: float = 1.0,
        tls: TlsSettings | None = None,
        merge: bool = True,
    ) -> None:
        self.name = name
        self.address = address
        self._channel = aio_channel(address, tls, CHANNEL_OPTIONS)
        self._health = GrpcHealth(self._channel, health_service, health_retry_s)
        self._merge = merge
        host, _, port = address.rpartition(":")
        self._host, self._port = host.strip("[]"), int(port)
        self._tls = tls if tls is not None and tls.enabled else None
        scheme = "https" if self._tls else "http"
        # Every call's headers begin the same: built once (per-call work is first-token time).
        self._headers = wire.flat(
            [(":method", "POST"), (":scheme", scheme), (":path", GENERATE), (":authority", address),
             ("te", "trailers"), ("content-type", "application/grpc")]
        )  # fmt: skip
        self._connection: TierConnection | None = None
        self._connecting = asyncio.Lock()

    async def _connect(self) -> TierConnection:
        """A usable connection, opened when there is none (one opening at a time)."""
        async with self._connecting:
            if self._connection is not None and self._connection.usable():
                return self._connection
            ssl = client_ssl_context(self._tls) if self._tls else None
            server_hostname = (self._tls.server_name or self._host) if self._tls else None
            try:
                _, connection = await asyncio.get_running_loop().create_connection(
                    TierConnection, self._host, self._port, ssl=ssl, server_hostname=server_hostname
                )
            except OSError as e:
                raise tier_failed(self.name, self.address, 0, f"cannot connect: {e}") from None
            self._connection = connection
            return connection

    def _fields(self, remaining: float, metadata: tracing.Metadata) -> bytes:
        return self._headers + wire.flat([("grpc-timeout", grpc_timeout(remaining)), *metadata])

    async def generate(self, call: Call) -> AsyncIterator[mesh_pb2.GenerateResponse]:
        remaining = call.remaining()
        if remaining <= 0:
            raise StatusError(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed before the tier call")
        span = attempt_span(self.name, self.address, call)
        body = wire.frame(tier_request(call).SerializeToString())
        stream = None
        sent = 0
        try:
            connection = self._connection
            if connection is None or not connection.usable():  # no await on the common path
                connection = await self._connect()
            deadline = connection.loop.time() + remaining
            stream = connection.request(self._fields(remaining, tracing.inject(span)), body, deadline)
            if stream is None:
                raise tier_failed(self.name, self.address, 0, "the connection takes no more streams")
            call.tier_calls.add(stream.cancel)
            while (message := await stream.next()) is not None:
                if not (self._merge and stream.messages):
                    sent += 1
                    yield mesh_pb2.GenerateResponse.FromString(message)
                    continue
                # Tokens that arrived together (the caller's edge was waiting, or the
                # tier wrote faster than one read) leave merged, as router/coalesce.py does.
                parse = mesh_pb2.GenerateResponse.FromString
                waiting = collections.deque(map(parse, [message, *stream.messages]))
                stream.messages.clear()
                while waiting:
                    sent += 1
                    yield merge_waiting(waiting)
            code, detail = stream.status()
            if code is not None:
                span.set_attribute("rpc.grpc.status_code", code.value[0])
            if code != grpc.StatusCode.OK:
                raise tier_status(self.name, self.address, code, detail, sent)
        except TimeoutError:
            raise StatusError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded") from None
        finally:
            if stream is not None:
                call.tier_calls.discard(stream.cancel)
                stream.cancel()  # no-op when it ended; otherwise the tier aborts its work
                stream.release()
            span.set_attribute("messages", sent)
            span.end()

    def health(self) -> AsyncIterator[bool]:
        return self._health.watch()

    async def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
        await self._channel.close()
