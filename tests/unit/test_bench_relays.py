"""The proxy benchmark's byte relay (bench/tcp_relay.py) carries whole gRPC streams:
its figures are a relay's, not a broken connection's."""

from __future__ import annotations

import asyncio

from bench.stream_backend import register, stream_handler
from bench.stream_clients import check
from bench.tcp_relay import Client
from tiermesh.serving import start_grpc_server


async def test_byte_relay_carries_whole_streams() -> None:
    backend = await start_grpc_server(
        "127.0.0.1:0", lambda server: register(server, stream_handler(pace_s=0)), ["tiermesh.v1.Mesh"]
    )
    relay = await asyncio.get_running_loop().create_server(
        lambda: Client(("127.0.0.1", backend.port)), "127.0.0.1", 0
    )
    try:
        port = relay.sockets[0].getsockname()[1]
        await asyncio.gather(*(check(f"127.0.0.1:{port}") for _ in range(8)))
    finally:
        relay.close()
        await backend.server.stop(None)
