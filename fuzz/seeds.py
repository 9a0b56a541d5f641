"""The fuzzers' seed corpus: real gRPC exchanges, as the bytes a grpc.aio client and a
grpc.aio server put on the wire, recorded by a relay between them, then written in each
fuzzer's script format (fuzz/edge.c, fuzz/tier.c). Made afresh by `make fuzz`.

    python -m fuzz.seeds OUT_DIR
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from router.backends.tier_grpc import GENERATE
from tests.doubles import ScriptedTier, start_scripted_tier
from tests.fakes import request
from tiermesh.tier.v1 import tier_pb2
from tiermesh.v1 import mesh_pb2_grpc

# The fuzzers' operations (their enums).
EDGE_FEED_CALLER, EDGE_FEED_INTERNAL, EDGE_SEND, EDGE_FINISH, EDGE_SWEEP = 0, 1, 2, 3, 4
TIER_REQUEST, TIER_FEED, TIER_CANCEL, TIER_RELEASE = 0, 1, 2, 3
# h2e_limits, a byte each (fuzz/edge.c): 16 KiB bodies, 16 KiB headers, 64 fields, ...
EDGE_LIMITS = bytes([64, 255, 60, 64, 8, 200, 200, 200, 200])


class Recorder:
    """A TCP relay that keeps what each side sent, in order."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.up: list[bytes] = []  # client → server, one entry per read
        self.down: list[bytes] = []

    async def start(self) -> int:
        server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.server = server
        return int(server.sockets[0].getsockname()[1])

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, log: list[bytes]) -> None:
            while data := await src.read(65536):
                log.append(data)
                dst.write(data)
            dst.close()

        await asyncio.gather(pipe(reader, up_writer, self.up), pipe(up_reader, writer, self.down))


def op(kind: int, data: bytes) -> bytes:
    return bytes([kind]) + len(data).to_bytes(2, "big") + data


async def recorded(port: int, call: Callable[[grpc.aio.Channel], Awaitable[object]]) -> Recorder:
    recorder = Recorder(port)
    relay = await recorder.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{relay}") as channel:
        with contextlib.suppress(grpc.aio.AioRpcError):
            await call(channel)
    await asyncio.sleep(0.1)
    recorder.server.close()
    return recorder


async def main(out: Path) -> None:
    tier = ScriptedTier()
    serving = await start_scripted_tier(tier)
    health = health_pb2_grpc.HealthStub
    try:

        async def generate(channel: grpc.aio.Channel) -> None:
            stub: grpc.aio.UnaryStreamMultiCallable[tier_pb2.GenerateRequest, bytes] = channel.unary_stream(
                GENERATE, tier_pb2.GenerateRequest.SerializeToString
            )
            async for _ in stub(
                tier_pb2.GenerateRequest(request_id="seed"), timeout=5, metadata=[("x-a", "b")]
            ):
                pass

        async def check(channel: grpc.aio.Channel) -> None:
            await health(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)

        tier_call = await recorded(serving.port, generate)
        health_call = await recorded(serving.port, check)
        # What a game's client sends the edge (the scripted tier refuses the method: only
        # the caller's bytes matter here).
        meshes = []
        for compression in (grpc.Compression.NoCompression, grpc.Compression.Gzip):

            async def mesh(channel: grpc.aio.Channel, compression: grpc.Compression = compression) -> None:
                stub = mesh_pb2_grpc.MeshStub(channel)
                async for _ in stub.Generate(request(), timeout=5, compression=compression):
                    pass

            meshes.append(await recorded(serving.port, mesh))
    finally:
        await serving.server.stop(None)

    edge_dir, tier_dir = out / "edge", out / "tier"
    edge_dir.mkdir(parents=True, exist_ok=True)
    tier_dir.mkdir(parents=True, exist_ok=True)
    no_failure = b"\0\0"
    for i, call in enumerate(meshes):  # a native stream: answered by the script
        script = no_failure + EDGE_LIMITS + b"".join(op(EDGE_FEED_CALLER, chunk) for chunk in call.up)
        script += bytes([EDGE_SEND, 0, 5]) + b"\0\0\0\0\0" + bytes([0])
        script += bytes([EDGE_FINISH, 0, 14]) + b"grpc-status\0" + b"0\0" + bytes([1, EDGE_SWEEP])
        (edge_dir / f"generate-{i}").write_bytes(script)
    # A relayed stream: the caller's bytes, then the internal server's answer.
    relayed = b"".join(op(EDGE_FEED_CALLER, chunk) for chunk in health_call.up)
    relayed += b"".join(op(EDGE_FEED_INTERNAL, chunk) for chunk in health_call.down)
    (edge_dir / "health").write_bytes(no_failure + EDGE_LIMITS + relayed)
    (edge_dir / "health-short-of-memory").write_bytes(b"\0\x07" + EDGE_LIMITS + relayed)
    # The tier client: a request, then a replica's answer as it came.
    body = (
        b"\0"
        + len(b := tier_pb2.GenerateRequest(request_id="seed").SerializeToString()).to_bytes(4, "big")
        + b
    )
    answer = b"".join(op(TIER_FEED, chunk) for chunk in tier_call.down)
    (tier_dir / "generate").write_bytes(no_failure + op(TIER_REQUEST, body) + answer)
    (tier_dir / "generate-cancelled").write_bytes(
        no_failure
        + op(TIER_REQUEST, body)
        + answer[: len(answer) // 2]
        + bytes([TIER_CANCEL, 0, TIER_RELEASE, 0])
    )
    (tier_dir / "generate-short-of-memory").write_bytes(b"\0\x05" + op(TIER_REQUEST, body) + answer)
    (tier_dir / "gzip").write_bytes(no_failure + op(TIER_REQUEST, gzip.compress(body)) + answer)


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
