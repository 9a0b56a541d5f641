"""BENCHMARK REFERENCE: the least a Python grpc.aio relay can do. Mesh/Generate's raw
request bytes go to the backend and its raw response bytes come back: no parsing, no
policies, no metrics, on uvloop like the router. The proxy benchmark runs it beside
the router to show what grpc.aio itself costs per hop, i.e. what bounds the router.

    python -m bench.passthrough --listen 127.0.0.1:7208 --backend 127.0.0.1:7201 [--pin-cpu]

`--pin-cpu` runs it on one CPU, as `router.data_path.pin_cpus` runs the router.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from typing import Any

import grpc
import uvloop

from bench.paths import METHOD
from router.workers import pin_to_cpu


def identity(message: bytes) -> bytes:
    return message


async def serve(listen: str, backend: str) -> None:
    channel = grpc.aio.insecure_channel(backend)
    forward = channel.unary_stream(METHOD, request_serializer=identity, response_deserializer=identity)

    async def relay(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[bytes]:
        async for response in forward(request, timeout=context.time_remaining()):
            yield response

    handler = grpc.unary_stream_rpc_method_handler(
        relay, request_deserializer=identity, response_serializer=identity
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("tiermesh.v1.Mesh", {"Generate": handler})]
    )
    server.add_insecure_port(listen)
    await server.start()
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", required=True)
    parser.add_argument("--backend", required=True)
    parser.add_argument("--pin-cpu", action="store_true")
    args = parser.parse_args()
    if args.pin_cpu:
        pin_to_cpu(0)
    uvloop.run(serve(args.listen, args.backend))


if __name__ == "__main__":
    main()
