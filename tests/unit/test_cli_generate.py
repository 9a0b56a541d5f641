"""`tiermesh generate` asks for what its options say and shows the NPC's tool events,
against a router that is a test double (the real mesh: tests/engine/test_silver_mesh.py)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures

import grpc
from typer.testing import CliRunner, Result

from ops.cli import app
from tiermesh.v1 import mesh_pb2, mesh_pb2_grpc


def invoke(args: list[str]) -> Result:
    """The command in a thread of its own: its `asyncio.run` would otherwise leave this
    thread's event loop unset for the tests after it."""
    with futures.ThreadPoolExecutor(1) as thread:
        return thread.submit(CliRunner().invoke, app, args).result()


class LookingRouter(mesh_pb2_grpc.MeshServicer):
    """TEST DOUBLE: a router whose NPC looks at its inventory, then answers; it keeps
    the requests it was sent."""

    def __init__(self) -> None:
        self.requests: list[mesh_pb2.GenerateRequest] = []

    def Generate(
        self, request: mesh_pb2.GenerateRequest, context: grpc.ServicerContext
    ) -> Iterator[mesh_pb2.GenerateResponse]:
        self.requests.append(request)
        call = mesh_pb2.ToolEvent(name="get_inventory", arguments='{"npc_id": "merchant-1"}')
        yield mesh_pb2.GenerateResponse(tier=mesh_pb2.TIER_SILVER, tool=call)
        call.result = "rope [2 silver] [/]"  # the game's text, not terminal markup
        yield mesh_pb2.GenerateResponse(index=1, tier=mesh_pb2.TIER_SILVER, tool=call)
        done = mesh_pb2.GenerateResponse(
            text="Rope, friend.",
            index=2,
            tier=mesh_pb2.TIER_SILVER,
            finish_reason=mesh_pb2.FINISH_REASON_STOP,
        )
        yield done


def test_generate_asks_for_tools_and_shows_what_the_npc_looked_at() -> None:
    router = LookingRouter()  # type: ignore[abstract]  # only Generate is called
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    mesh_pb2_grpc.add_MeshServicer_to_server(router, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        result = invoke(
            ["generate", "What do you sell?", "--npc", "merchant-1", "--tools", "required", "--fresh",
             "--address", f"127.0.0.1:{port}", "--timeout", "10"],
        )  # fmt: skip
    finally:
        server.stop(None)
    assert result.exit_code == 0, result.output
    [request] = router.requests
    assert request.tool_choice == mesh_pb2.TOOL_CHOICE_REQUIRED
    assert request.bypass_cache
    assert result.stdout.strip() == "Rope, friend."
    assert 'tool: get_inventory({"npc_id": "merchant-1"})' in result.stderr
    assert "tool: get_inventory → rope [2 silver] [/]" in result.stderr


def test_a_tool_choice_it_does_not_know_is_refused_before_any_call() -> None:
    result = invoke(["generate", "hi", "--tools", "sometimes", "--address", "127.0.0.1:1"])
    assert result.exit_code == 2
    assert "unknown tool choice 'sometimes'" in result.stderr


def test_tool_events_read_as_one_line_each() -> None:
    from ops.client import tool_line

    failed = mesh_pb2.ToolEvent(name="world_time", arguments="{}", result="world_time timed out", error=True)
    assert tool_line(failed) == "world_time failed: world_time timed out"
    late = mesh_pb2.ToolEvent(result="no tool chosen within 0.50 s", error=True)
    assert tool_line(late) == "no tool: no tool chosen within 0.50 s"
