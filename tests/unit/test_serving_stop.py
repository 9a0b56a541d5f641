"""A server's stop ends its health Watch streams first (tiermesh/serving.py): a watcher
sees NOT_SERVING and its stream's end (OK), not a cancellation, and the stop does not
wait out its grace for a stream that would never end on its own."""

from __future__ import annotations

import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tiermesh.serving import start_grpc_server

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def test_a_stop_ends_every_watch_with_not_serving_then_ok() -> None:
    serving = await start_grpc_server("127.0.0.1:0", lambda server: None, ["tiermesh.test.v1.Test"])
    async with grpc.aio.insecure_channel(f"127.0.0.1:{serving.port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        watches = [
            stub.Watch(health_pb2.HealthCheckRequest(service=name)) for name in ("", "tiermesh.test.v1.Test")
        ]
        for watch in watches:
            assert (await watch.read()).status == SERVING
        started = time.monotonic()
        await serving.stop(5.0)
        assert time.monotonic() - started < 2.0  # not the grace: nothing was left open
        for watch in watches:
            assert (await watch.read()).status == NOT_SERVING
            assert await watch.read() is grpc.aio.EOF
            assert await watch.code() == grpc.StatusCode.OK
