"""Silver's toolbox against the real example MCP server (stdio), no engine."""

from __future__ import annotations

import contextlib
import json
import re
import sys
import time
from collections.abc import AsyncIterator

import pytest

from services.silver.settings import McpServer
from services.silver.tools import (
    NONE,
    Tool,
    ToolBox,
    ToolError,
    arguments_guide,
    known_arguments,
    parse_arguments,
)

GAME_STATE = McpServer(name="game-state", command=[sys.executable, "-m", "services.gamestate.server"])


@contextlib.asynccontextmanager
async def game_state() -> AsyncIterator[ToolBox]:
    """Opened and closed by the same task, as the MCP client's anyio scopes require."""
    tools = ToolBox([GAME_STATE], timeout_s=2.0)
    await tools.start()
    try:
        yield tools
    finally:
        await tools.close()


async def test_tools_are_listed_with_their_arguments() -> None:
    async with game_state() as toolbox:
        await _test_tools_are_listed_with_their_arguments(toolbox)


async def _test_tools_are_listed_with_their_arguments(toolbox: ToolBox) -> None:
    assert set(toolbox.tools) == {"get_inventory", "get_quest_log", "world_time"}
    assert toolbox.tools["get_inventory"].required == [("npc_id", "string")]
    assert "get_inventory(npc_id)" in toolbox.menu()


async def test_the_model_chooses_among_the_callable_tools() -> None:
    async with game_state() as toolbox:
        await _test_the_model_chooses_among_the_callable_tools(toolbox)


async def _test_the_model_chooses_among_the_callable_tools(toolbox: ToolBox) -> None:
    assert toolbox.choices(allow_none=True) == ("get_inventory", "get_quest_log", "world_time", NONE)
    assert toolbox.choices(allow_none=False) == ("get_inventory", "get_quest_log", "world_time")
    # A tool whose arguments the regex cannot describe is neither offered nor listed.
    toolbox.tools["search"] = Tool("search", "Finds things.", [("filter", "object")], session=None)
    assert "search" not in toolbox.choices(allow_none=True)
    assert "search" not in toolbox.menu()


def test_the_call_s_npc_is_filled_in_and_the_model_writes_only_the_rest() -> None:
    inventory = Tool("get_inventory", "", [("npc_id", "string")], session=None)
    clock = Tool("world_time", "", [], session=None)
    assert known_arguments(inventory, {"npc_id": "merchant-1"}) == {"npc_id": "merchant-1"}
    assert known_arguments(clock, {"npc_id": "merchant-1"}) == {}
    assert known_arguments(inventory, {"npc_id": ""}) is None  # no NPC: the model writes it
    # Bound and free arguments together: the model is held to the call's own NPC.
    counted = Tool("count_items", "", [("npc_id", "string"), ("at_least", "integer")], session=None)
    assert known_arguments(counted, {"npc_id": "inn.keeper:1"}) is None
    guide = arguments_guide(counted, {"npc_id": "inn.keeper:1"})
    longest = '{"npc_id": "inn.keeper:1", "at_least": -123456789}'
    assert re.fullmatch(guide.regex, longest)
    assert re.fullmatch(guide.regex, '{"npc_id": "inn.keeper:1", "at_least": 3}')
    assert not re.fullmatch(guide.regex, '{"npc_id": "innXkeeper:1", "at_least": 3}')
    assert not re.fullmatch(guide.regex, '{"npc_id": "the innkeeper", "at_least": 3}')
    assert not re.fullmatch(guide.regex, '{"npc_id": "inn.keeper:1"}')
    # Its longest text fits in as many tokens (a token is at least a character).
    assert guide.longest == len(longest)
    free = arguments_guide(inventory, {})
    longest = '{"npc_id": "' + "x" * 64 + '"}'
    assert re.fullmatch(free.regex, longest)
    assert not re.fullmatch(free.regex, longest.replace("x" * 64, "x" * 65))
    assert free.longest == len(longest)


async def test_calls_return_the_game_state() -> None:
    async with game_state() as toolbox:
        await _test_calls_return_the_game_state(toolbox)


async def _test_calls_return_the_game_state(toolbox: ToolBox) -> None:
    arguments = parse_arguments('{"npc_id": "merchant-1"}')
    assert "healing potion" in await toolbox.call("get_inventory", arguments, timeout_s=2.0)


async def test_bad_calls_are_tool_errors_not_crashes() -> None:
    async with game_state() as toolbox:
        await _test_bad_calls_are_tool_errors_not_crashes(toolbox)


async def _test_bad_calls_are_tool_errors_not_crashes(toolbox: ToolBox) -> None:
    with pytest.raises(ToolError, match="unknown tool"):
        await toolbox.call("drop_table", {}, timeout_s=1.0)
    with pytest.raises(ToolError):
        await toolbox.call("get_inventory", {"npc_id": 42}, timeout_s=1.0)  # invalid data
    with pytest.raises(json.JSONDecodeError):
        parse_arguments('{"npc_id": "merch')  # a model that emits invalid arguments
    with pytest.raises(ValueError, match="not a tool's arguments"):
        parse_arguments('["merchant-1"]')


async def test_an_mcp_server_that_cannot_start_means_no_tools() -> None:
    broken = ToolBox([McpServer(name="gone", command=["/nonexistent/mcp-server"])], timeout_s=1.0)
    await broken.start()
    assert broken.tools == {}
    assert broken.choices(allow_none=True) == (NONE,)
    assert broken.choices(allow_none=False) == ()
    await broken.close()


async def test_a_slow_tool_times_out_within_the_budget() -> None:
    slow = ToolBox(
        [McpServer(name="slow", command=[sys.executable, "tests/fixtures/slow_mcp.py"])], timeout_s=5.0
    )
    await slow.start()
    try:
        started = time.monotonic()
        with pytest.raises(ToolError, match="timed out"):
            await slow.call("world_time", {}, timeout_s=0.5)
        assert time.monotonic() - started < 3.0  # the budget, not the tool, decides
    finally:
        await slow.close()
