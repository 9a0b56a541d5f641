"""A small Mesh client: used by `tiermesh generate`, the demo, benchmarks and tests."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import grpc

from tiermesh.v1 import mesh_pb2, mesh_pb2_grpc

TASKS = {
    "intent": mesh_pb2.TASK_INTENT,
    "bark": mesh_pb2.TASK_BARK,
    "dialogue": mesh_pb2.TASK_DIALOGUE,
    "longform": mesh_pb2.TASK_LONGFORM,
}
TOOL_CHOICES = {
    "default": mesh_pb2.TOOL_CHOICE_UNSPECIFIED,
    "none": mesh_pb2.TOOL_CHOICE_NONE,
    "auto": mesh_pb2.TOOL_CHOICE_AUTO,
    "required": mesh_pb2.TOOL_CHOICE_REQUIRED,
}


def tool_line(event: mesh_pb2.ToolEvent) -> str:
    """A tool event as one line: the call, its result, its error, or no tool chosen."""
    if not event.name:
        return f"no tool: {event.result}"
    if event.error:
        return f"{event.name} failed: {event.result}"
    return f"{event.name} → {event.result}" if event.result else f"{event.name}({event.arguments})"


@dataclass
class Reply:
    """A finished stream, timed from the client's side."""

    text: str = ""
    tier: str = ""
    messages: int = 0
    ttft_s: float = 0.0
    total_s: float = 0.0
    finish_reason: str = ""
    usage: mesh_pb2.Usage = field(default_factory=mesh_pb2.Usage)


async def stream(
    stub: mesh_pb2_grpc.MeshAsyncStub,
    request: mesh_pb2.GenerateRequest,
    deadline_s: float | None,
) -> AsyncIterator[tuple[mesh_pb2.GenerateResponse, float]]:
    """Yield each response with the seconds since the call started."""
    started = time.perf_counter()
    call = stub.Generate(request, timeout=deadline_s)
    try:
        async for response in call:
            yield response, time.perf_counter() - started
    finally:
        call.cancel()


async def collect(
    stub: mesh_pb2_grpc.MeshAsyncStub,
    request: mesh_pb2.GenerateRequest,
    deadline_s: float | None,
    on_text: Callable[[str], None] | None = None,
    on_tool: Callable[[mesh_pb2.ToolEvent], None] | None = None,
) -> Reply:
    """The whole reply; `on_text` sees each delta as it arrives, `on_tool` each tool
    event (the NPC looking at the game world before it answers)."""
    reply = Reply()
    parts: list[str] = []
    async for response, elapsed in stream(stub, request, deadline_s):
        if on_tool is not None and response.HasField("tool"):
            on_tool(response.tool)
        if on_text is not None:
            on_text(response.text)
        if reply.messages == 0:
            reply.ttft_s = elapsed
            reply.tier = mesh_pb2.Tier.Name(response.tier).removeprefix("TIER_").lower()
        reply.messages += 1
        reply.total_s = elapsed
        parts.append(response.text)
        if response.finish_reason:
            reply.finish_reason = mesh_pb2.FinishReason.Name(response.finish_reason)
            reply.usage.CopyFrom(response.usage)
    reply.text = "".join(parts)
    return reply


def channel(address: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(address)
