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
from services.silver.tools import ToolBox, ToolError, parse_call

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


async def test_the_guide_admits_valid_calls_only() -> None:
    async with game_state() as toolbox:
        await _test_the_guide_admits_valid_calls_only(toolbox)


async def _test_the_guide_admits_valid_calls_only(toolbox: ToolBox) -> None:
    guide = toolbox.guide(allow_none=True)
    assert guide is not None
    valid = ['{"tool": "get_inventory", "arguments": {"npc_id": "merchant-1"}}',
             '{"tool": "world_time", "arguments": {}}', '{"tool": "none"}']  # fmt: skip
    invalid = ['{"tool": "drop_table", "arguments": {}}', '{"tool": "get_inventory", "arguments": {}}',
               '{"tool": "get_inventory"}']  # fmt: skip
    assert all(re.fullmatch(guide, text) for text in valid)
    assert not any(re.fullmatch(guide, text) for text in invalid)
    required = toolbox.guide(allow_none=False)
    assert required is not None
    assert not re.fullmatch(required, '{"tool": "none"}')


async def test_calls_return_the_game_state() -> None:
    async with game_state() as toolbox:
        await _test_calls_return_the_game_state(toolbox)


async def _test_calls_return_the_game_state(toolbox: ToolBox) -> None:
    name, arguments = parse_call('{"tool": "get_inventory", "arguments": {"npc_id": "merchant-1"}}')
    assert "healing potion" in await toolbox.call(name, arguments, timeout_s=2.0)


async def test_bad_calls_are_tool_errors_not_crashes() -> None:
    async with game_state() as toolbox:
        await _test_bad_calls_are_tool_errors_not_crashes(toolbox)


async def _test_bad_calls_are_tool_errors_not_crashes(toolbox: ToolBox) -> None:
    with pytest.raises(ToolError, match="unknown tool"):
        await toolbox.call("drop_table", {}, timeout_s=1.0)
    with pytest.raises(ToolError):
        await toolbox.call("get_inventory", {"npc_id": 42}, timeout_s=1.0)  # invalid data
    with pytest.raises(json.JSONDecodeError):
        parse_call('{"tool": "get_inv')  # a model that emits an invalid call


async def test_an_mcp_server_that_cannot_start_means_no_tools() -> None:
    broken = ToolBox([McpServer(name="gone", command=["/nonexistent/mcp-server"])], timeout_s=1.0)
    await broken.start()
    assert broken.tools == {}
    assert broken.guide(allow_none=True) == r'(\{"tool": "none"\})'
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
