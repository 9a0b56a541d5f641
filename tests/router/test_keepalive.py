"""Keepalive pings on an idle stream: our servers (tiermesh.serving) accept them at the
configured interval; a server that does not answers with GOAWAY and kills the stream.
The router pings its tiers every 30 s and tiers accept one per 15 s; scaled down here."""

from __future__ import annotations

import asyncio

import grpc

from bench.stream_backend import register, stream_handler
from tiermesh.serving import start_grpc_server
from tiermesh.v1 import mesh_pb2, mesh_pb2_grpc

# The client pings every 1.2 s while its stream waits (and would ping forever).
CLIENT = [
    ("grpc.keepalive_time_ms", 1200),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.use_local_subchannel_pool", 1),
]
REQUEST = mesh_pb2.GenerateRequest(npc_id="guard-1", prompt="x", max_tokens=2)


async def idle_stream_outcome(min_ping_interval_ms: int) -> grpc.StatusCode:
    """Hold a stream whose second token never comes (within 6 s) and say how it ended."""
    serving = await start_grpc_server(
        "127.0.0.1:0",
        lambda server: register(server, stream_handler(pace_s=3600)),
        ["tiermesh.v1.Mesh"],
        min_ping_interval_ms=min_ping_interval_ms,
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{serving.port}", options=CLIENT) as channel:
            call = mesh_pb2_grpc.MeshStub(channel).Generate(REQUEST, timeout=6)
            await call.read()  # the first token: the stream is open, then idle
            await call.read()
            raise AssertionError("the idle stream produced a second token")
    except grpc.aio.AioRpcError as e:
        return e.code()
    finally:
        await serving.server.stop(None)


async def test_pings_at_the_accepted_interval_keep_an_idle_stream() -> None:
    accepted, refused = await asyncio.gather(idle_stream_outcome(1000), idle_stream_outcome(60_000))
    assert accepted == grpc.StatusCode.DEADLINE_EXCEEDED  # alive until its own deadline
    assert refused == grpc.StatusCode.UNAVAILABLE  # GOAWAY too_many_pings ended it early
