"""BENCHMARK BACKEND: the same stream of small messages on both contracts, so the
router (which calls TierService) and nginx/HAProxy (which pass Mesh through) relay
identical work from identical code.

    python -m bench.stream_backend --listen 127.0.0.1:7201 [--pace-ms 5]

Each call streams `max_tokens` messages (16 in the benchmark). Unpaced, they are
pre-serialised and sent back to back (a burst). Paced, the first goes at once and
each next one `pace_ms` later, like a real engine; each then carries its send time
(`@<monotonic ns>` as its text) so a client on this machine can tell how long every
token took to reach it.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from tiermesh.serving import start_grpc_server, wait_for_signal
from tiermesh.tier.v1 import tier_pb2
from tiermesh.v1 import mesh_pb2


def messages(count: int) -> list[bytes]:
    """Pre-serialised: the backend's own cost stays out of what is measured."""
    out = [mesh_pb2.GenerateResponse(text=" tok", index=i, tier=mesh_pb2.TIER_SILVER) for i in range(count)]
    out[-1].finish_reason = mesh_pb2.FINISH_REASON_LENGTH
    out[-1].usage.completion_tokens = count
    return [m.SerializeToString() for m in out]


def stamped(index: int, count: int) -> bytes:
    message = mesh_pb2.GenerateResponse(
        text=f"@{time.monotonic_ns()}", index=index, tier=mesh_pb2.TIER_SILVER
    )
    if index == count - 1:
        message.finish_reason = mesh_pb2.FINISH_REASON_LENGTH
        message.usage.completion_tokens = count
    return message.SerializeToString()


def stream_handler(pace_s: float) -> Callable[..., AsyncIterator[bytes]]:
    """An async generator function: grpc.aio inspects the handler to see that."""
    cache: dict[int, list[bytes]] = {}

    async def burst(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[bytes]:
        count = max(1, request.max_tokens)
        for payload in cache.setdefault(count, messages(count)):
            yield payload

    async def paced(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[bytes]:
        count = max(1, request.max_tokens)
        for index in range(count):
            if index:
                await asyncio.sleep(pace_s)
            yield stamped(index, count)

    return paced if pace_s else burst


def register(server: grpc.aio.Server, stream: Callable[..., AsyncIterator[bytes]]) -> None:
    identity = bytes
    handlers = {
        "tiermesh.v1.Mesh": mesh_pb2.GenerateRequest.FromString,
        "tiermesh.tier.v1.TierService": tier_pb2.GenerateRequest.FromString,
    }
    for service, parse in handlers.items():
        method = grpc.unary_stream_rpc_method_handler(
            stream, request_deserializer=parse, response_serializer=identity
        )
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(service, {"Generate": method})])


async def serve(args: argparse.Namespace) -> None:
    stream = stream_handler(args.pace_ms / 1000)
    serving = await start_grpc_server(
        args.listen,
        lambda server: register(server, stream),
        ["tiermesh.v1.Mesh", "tiermesh.tier.v1.TierService"],
    )
    await wait_for_signal()
    await serving.stop(1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", required=True)
    parser.add_argument("--pace-ms", type=float, default=0.0)
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
