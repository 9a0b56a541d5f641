"""How Silver's handler has the model choose a tool: by name, with the call's own NPC
filled in, within its share of the deadline. The engine is a test double (the real one
is tests/engine/test_silver_mesh.py); the tools are the real example MCP server."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from services.silver.engine import Delta, Sampling, SilverEngine
from services.silver.server import TOOL_CHOICES, SilverServicer
from services.silver.settings import McpServer, SilverSettings
from services.silver.tools import Tool, ToolBox
from tests.doubles import HandlerContext
from tiermesh.chat import Message
from tiermesh.tier.v1 import tier_pb2
from tiermesh.v1 import mesh_pb2

pytestmark = pytest.mark.asyncio(loop_scope="session")

# The time left in the tests that are not about the deadline: generous, so a loaded
# machine's slow MCP round trip is not taken for a late tool.
UNHURRIED_S = 20.0
GAME_STATE = McpServer(name="game-state", command=[sys.executable, "-m", "services.gamestate.server"])


class ChoosingEngine(SilverEngine):
    """TEST DOUBLE: a SilverEngine that answers a guided call with what the test scripts
    (after `choice_s`), any other call with two words, and records every call."""

    def __init__(self, chooses: str, writes: str = "", choice_s: float = 0.0) -> None:
        super().__init__(SilverSettings())
        self.chooses, self.writes, self.choice_s = chooses, writes, choice_s
        self.calls: list[tuple[list[Message], Sampling]] = []
        self.closed_choices = 0

    async def generate(
        self, request_id: str, messages: Sequence[Message], sampling: Sampling
    ) -> AsyncGenerator[Delta, None]:
        self.calls.append((list(messages), sampling))
        if sampling.choices or sampling.regex:
            try:
                await asyncio.sleep(self.choice_s)
            except asyncio.CancelledError:
                self.closed_choices += 1
                raise
            text = self.chooses if sampling.choices else self.writes
            yield Delta(text=text, prompt_tokens=9, completion_tokens=1, finish_reason="stop")
            return
        for n, word in enumerate(("Hello", " there."), 1):
            yield Delta(
                text=word, prompt_tokens=9, completion_tokens=n, finish_reason="stop" if n == 2 else None
            )


@dataclass
class Session:
    """TEST DOUBLE: an MCP client session for a tool the example server does not have."""

    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    async def call_tool(self, name: str, arguments: dict[str, Any]) -> Any:
        self.calls.append((name, arguments))

        @dataclass
        class Text:
            text: str

        @dataclass
        class Result:
            content: list[Text]
            is_error: bool = False

        return Result([Text(f"{arguments['at_least']} of them")])


def request(npc_id: str, choice: int = mesh_pb2.TOOL_CHOICE_REQUIRED) -> tier_pb2.GenerateRequest:
    return tier_pb2.GenerateRequest(
        request_id="r1",
        npc_id=npc_id,
        messages=[
            tier_pb2.ChatMessage(role=tier_pb2.ROLE_SYSTEM, content="You are Mara."),
            tier_pb2.ChatMessage(role=tier_pb2.ROLE_USER, content="What do you have?"),
        ],
        max_tokens=8,
        task=mesh_pb2.TASK_DIALOGUE,
        tool_choice=choice,  # type: ignore[arg-type]
    )


async def answer(
    engine: ChoosingEngine, tools: ToolBox, req: tier_pb2.GenerateRequest, context: HandlerContext
) -> list[tier_pb2.GenerateResponse]:
    servicer = SilverServicer(engine, SilverSettings(), tools)
    return [r async for r in servicer.Generate(req, context)]  # type: ignore[arg-type]


def choices(outcome: str) -> float:
    return float(TOOL_CHOICES.labels(outcome)._value.get())


async def test_the_model_names_the_tool_and_the_call_s_npc_is_its_argument() -> None:
    tools = ToolBox([GAME_STATE], timeout_s=2.0)
    await tools.start()
    try:
        engine = ChoosingEngine(chooses="get_inventory")
        before = choices("call")
        responses = await answer(
            engine, tools, request("innkeeper-1"), HandlerContext(remaining_s=UNHURRIED_S)
        )
    finally:
        await tools.close()
    call, result = (r.tool for r in responses[:2])
    assert (call.name, json.loads(call.arguments)) == ("get_inventory", {"npc_id": "innkeeper-1"})
    assert result.result == "room key 3, loaf of bread, ale"  # the innkeeper's, from the server
    assert "".join(r.text for r in responses[2:]) == "Hello there."
    assert choices("call") == before + 1
    # Two engine calls: the name (a few tokens, the JSON before it given as the start of
    # the answer), then the answer with the game state; no call to write the arguments.
    (asked, by_name), (answered, _) = engine.calls
    assert by_name.choices == ("get_inventory", "get_quest_log", "world_time")
    assert by_name.max_tokens == len("get_inventory") + 1
    assert asked[-1] == Message("assistant", '{"tool": "')
    assert "room key 3" in answered[0].content


async def test_arguments_the_call_does_not_know_are_written_after_the_name() -> None:
    tools, session = ToolBox([], timeout_s=2.0), Session()
    tools.tools["count_items"] = Tool(
        "count_items", "", [("npc_id", "string"), ("at_least", "integer")], session
    )
    engine = ChoosingEngine(chooses="count_items", writes='{"npc_id": "merchant-1", "at_least": 3}')
    responses = await answer(engine, tools, request("merchant-1"), HandlerContext(remaining_s=UNHURRIED_S))
    assert session.calls == [("count_items", {"npc_id": "merchant-1", "at_least": 3})]
    assert responses[1].tool.result == "3 of them"
    _, (written_after, written) = engine.calls[:2]
    assert written_after[-1] == Message("assistant", '{"tool": "count_items", "arguments": ')
    assert written.regex is not None
    assert '"merchant\\-1"' in written.regex  # its own NPC only
    assert written.max_tokens == len('{"npc_id": "merchant-1", "at_least": -123456789}') + 1


async def test_a_choice_not_made_in_its_share_of_the_deadline_is_answered_without_tools() -> None:
    tools = ToolBox([GAME_STATE], timeout_s=2.0)
    await tools.start()
    try:
        engine = ChoosingEngine(chooses="get_inventory", choice_s=30.0)
        before = choices("late")
        started = time.monotonic()
        # Half of the 0.4 s left goes to the choice; the model would take 30 s.
        responses = await answer(engine, tools, request("guard-1"), HandlerContext(remaining_s=0.4))
        took = time.monotonic() - started
    finally:
        await tools.close()
    # The game hears that no tool was chosen, then gets its answer.
    late = responses[0].tool
    assert (late.name, late.error, late.result) == ("", True, "no tool chosen within 0.20 s")
    assert not any(r.HasField("tool") for r in responses[1:])
    assert "".join(r.text for r in responses) == "Hello there."
    assert choices("late") == before + 1
    assert engine.closed_choices == 1  # the choice's engine request was given up
    assert took < 10.0  # not the model's 30 s


async def test_choosing_none_answers_at_once() -> None:
    tools = ToolBox([GAME_STATE], timeout_s=2.0)
    await tools.start()
    try:
        engine = ChoosingEngine(chooses="none")
        responses = await answer(
            engine,
            tools,
            request("guard-1", mesh_pb2.TOOL_CHOICE_AUTO),
            HandlerContext(remaining_s=UNHURRIED_S),
        )
    finally:
        await tools.close()
    assert not any(r.HasField("tool") for r in responses)
    assert engine.calls[0][1].choices == ("get_inventory", "get_quest_log", "world_time", "none")
