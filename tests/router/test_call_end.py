"""A call's end on both edges (grpc.aio's and the native one): the caller gets its
trailers right after the final message, while what the pipeline does after it (a tier
call cancelled, a session's turn recorded, a cache entry stored) runs on. Under load
that work took a shaped answer's trailers past the caller's deadline, so a caller that
had the whole answer saw DEADLINE_EXCEEDED."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Literal, cast

import grpc
import pytest

from router.edge.native import NativeEdge
from router.server import MESH_SERVICE, MeshServicer
from router.settings import CallerLimits
from tests.fakes import request
from tiermesh.serving import start_grpc_server
from tiermesh.v1 import mesh_pb2, mesh_pb2_grpc

pytestmark = pytest.mark.asyncio(loop_scope="session")


class SlowAfterTheAnswer(MeshServicer):
    """A servicer stand-in whose answer ends with a final message, after which its
    pipeline still has work to do: held until the test lets it go."""

    def __init__(self) -> None:  # none of the real servicer's parts are used
        self.release = asyncio.Event()
        self.ran_out = asyncio.Event()

    async def respond(  # type: ignore[override]
        self, request: object, metadata: object, time_remaining: float | None, received: float | None = None
    ) -> AsyncIterator[mesh_pb2.GenerateResponse]:
        yield mesh_pb2.GenerateResponse(text="Halt.", finish_reason=mesh_pb2.FINISH_REASON_DEADLINE)
        await self.release.wait()
        self.ran_out.set()


async def serve(
    plane: Literal["grpc", "native"], servicer: MeshServicer
) -> tuple[int, Callable[[], Awaitable[None]]]:
    """The edge on `plane` in front of `servicer`; its port, and what closes it."""
    if plane == "native":
        edge = NativeEdge(servicer, "/nonexistent/grpc.sock", 1 << 20, limits=CallerLimits())
        return await edge.start("127.0.0.1:0"), lambda: edge.close(None)
    serving = await start_grpc_server(
        "127.0.0.1:0",
        lambda server: mesh_pb2_grpc.add_MeshServicer_to_server(servicer, server),
        [MESH_SERVICE],
    )
    return serving.port, lambda: serving.server.stop(None)


@pytest.mark.parametrize("plane", ["grpc", "native"])
async def test_the_caller_has_its_trailers_before_the_pipeline_has_run_out(plane: str) -> None:
    servicer = SlowAfterTheAnswer()
    port, close = await serve(cast(Literal["grpc", "native"], plane), cast(MeshServicer, servicer))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = mesh_pb2_grpc.MeshStub(channel).Generate(request(), timeout=5)
            texts = [response.text async for response in call]
            assert await call.code() == grpc.StatusCode.OK  # the call ended (trailers)
        assert texts == ["Halt."]
        assert not servicer.ran_out.is_set()  # while the work after the answer waits
        servicer.release.set()
        await asyncio.wait_for(servicer.ran_out.wait(), 5)  # and then it runs to its end
    finally:
        servicer.release.set()
        await close()
