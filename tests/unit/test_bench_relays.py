"""The proxy benchmark's reference relays carry whole gRPC streams: their figures are a
relay's, not a broken connection's. The byte relay (bench/tcp_relay.py) moves bytes; the
HTTP/2 relay (bench/h2_relay.py) frames with nghttp2 and must also keep a connection's
other streams going when a caller walks away from one."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import grpc
import pytest

from bench import h2_relay, tcp_relay
from bench.paths import MESSAGES, REQUEST
from bench.stream_backend import register, stream_handler
from bench.stream_clients import check
from tiermesh.serving import start_grpc_server
from tiermesh.v1 import mesh_pb2_grpc

RELAYS: dict[str, Callable[[tuple[str, int]], asyncio.Protocol]] = {
    "bytes": tcp_relay.Client,
    "http2": h2_relay.accept,
}


@contextlib.asynccontextmanager
async def relayed(relay: str, pace_s: float) -> AsyncIterator[str]:
    """The address of `relay` in front of a stream backend, both stopped on leaving."""
    backend = await start_grpc_server(
        "127.0.0.1:0", lambda server: register(server, stream_handler(pace_s)), ["tiermesh.v1.Mesh"]
    )
    server = await asyncio.get_running_loop().create_server(
        lambda: RELAYS[relay](("127.0.0.1", backend.port)), "127.0.0.1", 0
    )
    try:
        yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        await backend.server.stop(None)


@pytest.mark.parametrize("relay", RELAYS)
async def test_reference_relays_carry_whole_streams(relay: str) -> None:
    async with relayed(relay, pace_s=0) as address:
        await asyncio.gather(*(check(address) for _ in range(8)))


async def test_http2_relay_keeps_the_connection_when_a_caller_walks_away() -> None:
    async with relayed("http2", pace_s=0.01) as address, grpc.aio.insecure_channel(address) as channel:
        stub = mesh_pb2_grpc.MeshStub(channel)
        staying = stub.Generate(REQUEST, timeout=10)
        leaving = stub.Generate(REQUEST, timeout=10)
        await leaving.read()
        leaving.cancel()
        # The stream beside it, and a new one on the same connection, arrive whole.
        for call in (staying, stub.Generate(REQUEST, timeout=10)):
            responses = [response async for response in call]
            assert len(responses) == MESSAGES
            assert responses[-1].finish_reason
