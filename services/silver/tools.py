"""Tools for Silver, from MCP servers: what they offer, how the model chooses one, and
calls bounded by a timeout.

The model chooses by guided decoding (vLLM structured outputs), in two steps: a tool's
name among the tools (or "none"), then, only if the tool needs arguments the call does
not already know, those arguments by a regex built from its schema. Guided decoding
still spends a model step on every token it forces, and a whole JSON call cost ~25 of
them (~1.6 s on this CPU, most of a dialogue's deadline); a name costs a few. With this
small model a JSON-schema guide wandered into whitespace until max_tokens, which is why
the arguments' guide is a regex.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from services.silver.settings import McpServer

log = logging.getLogger(__name__)
# JSON values the regex can describe, by schema type, and the most characters each admits.
_VALUE = {"string": (r'"[^"\\]{0,64}"', 66), "integer": (r"-?[0-9]{1,9}", 10),
          "number": (r"-?[0-9]{1,9}(\.[0-9]{1,6})?", 17), "boolean": (r"(true|false)", 5)}  # fmt: skip
# Arguments the call itself knows, filled in for the model: a tool's string argument of
# this name gets the call's value. The game-state tools key the world by NPC, and the
# model is never shown its NPC's id: asked to write one, it wrote on until it ran out of
# tokens, and no tool was called (docs/history.md).
BOUND_ARGUMENTS = ("npc_id",)
NONE = "none"


class ToolError(Exception):
    pass


@dataclass
class Tool:
    name: str
    description: str
    required: list[tuple[str, str]]  # (argument, JSON type), in order
    session: Any  # mcp.ClientSession


@dataclass(frozen=True)
class Guide:
    """A regex of the valid arguments, and the length of the longest text it admits: a
    token is at least one character, so a choice given that many tokens is never cut
    short inside its JSON."""

    regex: str
    longest: int


def simple(tool: Tool) -> bool:
    """Whether the regex can describe the tool's arguments: flat, required, simple types."""
    return all(kind in _VALUE for _, kind in tool.required)


def _bound_value(argument: str, kind: str, bound: Mapping[str, str]) -> str | None:
    """The call's own value for a tool's argument, if it is one the call fills in."""
    return (bound.get(argument) or None) if kind == "string" and argument in BOUND_ARGUMENTS else None


def known_arguments(tool: Tool, bound: Mapping[str, str]) -> dict[str, Any] | None:
    """The tool's whole arguments when the call knows every one of them, else None."""
    known = {a: _bound_value(a, kind, bound) for a, kind in tool.required}
    if not all(known.values()):
        return None
    return known


def arguments_guide(tool: Tool, bound: Mapping[str, str]) -> Guide:
    """A regex for the tool's arguments object, with the ones the call knows filled in."""
    parts: list[tuple[str, int]] = []
    for argument, kind in tool.required:
        if value := _bound_value(argument, kind, bound):
            text = json.dumps(value)
            parts.append((f'"{re.escape(argument)}": {re.escape(text)}', len(argument) + 4 + len(text)))
        else:
            value_regex, longest = _VALUE[kind]
            parts.append((f'"{re.escape(argument)}": {value_regex}', len(argument) + 4 + longest))
    regex = r"\{" + ", ".join(p for p, _ in parts) + r"\}"
    return Guide(regex, 2 + 2 * max(0, len(parts) - 1) + sum(n for _, n in parts))


class ToolBox:
    def __init__(self, servers: list[McpServer], timeout_s: float) -> None:
        self._servers = servers
        self._timeout_s = timeout_s
        self._stack = contextlib.AsyncExitStack()
        self.tools: dict[str, Tool] = {}

    async def start(self) -> None:
        """Connect every server; one that cannot be reached is skipped (a warning):
        Silver answers without its tools rather than not at all."""
        for server in self._servers:
            try:
                # In this task, not a new one (no wait_for): the MCP client's anyio
                # scopes must be left by the task that entered them.
                async with asyncio.timeout(10):
                    session = await self._connect(server)
                    listed = await session.list_tools()
            except Exception as e:  # any failure to connect means: no tools from it
                log.warning("MCP server %s unavailable, its tools are off: %s", server.name, e)
                continue
            for tool in listed.tools:
                schema = tool.input_schema or {}
                props = schema.get("properties", {})
                required = [
                    (name, str(props.get(name, {}).get("type", ""))) for name in schema.get("required", [])
                ]
                self.tools[tool.name] = Tool(tool.name, tool.description or "", required, session)
        log.info("tools: %s", ", ".join(self.tools) or "none")

    async def _connect(self, server: McpServer) -> Any:
        from mcp import ClientSession, StdioServerParameters
        from mcp.client.stdio import stdio_client

        if server.url:
            from mcp.client.streamable_http import streamable_http_client

            read, write, *_ = await self._stack.enter_async_context(streamable_http_client(server.url))
        else:
            params = StdioServerParameters(command=server.command[0], args=server.command[1:])
            read, write = await self._stack.enter_async_context(stdio_client(params))
        session = await self._stack.enter_async_context(ClientSession(read, write))
        await session.initialize()
        return session

    def choices(self, allow_none: bool) -> tuple[str, ...]:
        """The names the model may answer with: the tools it can call, and "none"."""
        names = tuple(name for name, tool in self.tools.items() if simple(tool) and name != NONE)
        return (*names, NONE) if allow_none else names

    def menu(self) -> str:
        return "\n".join(
            f"- {t.name}({', '.join(a for a, _ in t.required)}): {t.description}"
            for t in self.tools.values()
            if simple(t)
        )

    async def call(self, name: str, arguments: dict[str, Any], timeout_s: float) -> str:
        tool = self.tools.get(name)
        if tool is None:
            raise ToolError(f"unknown tool {name!r}")
        try:
            result = await asyncio.wait_for(
                tool.session.call_tool(name, arguments), timeout=min(timeout_s, self._timeout_s)
            )
        except TimeoutError:
            raise ToolError(f"{name} timed out") from None
        except Exception as e:  # the server died, or refused the call
            raise ToolError(f"{name} failed: {e}") from None
        text = "".join(getattr(part, "text", "") for part in result.content).strip()
        if result.is_error or not text:
            raise ToolError(f"{name} returned no usable data: {text[:200]!r}")
        return text[:2000]

    async def close(self) -> None:
        await self._stack.aclose()


def parse_arguments(text: str) -> dict[str, Any]:
    """A tool's arguments from the model's guided output; ValueError if invalid."""
    arguments = json.loads(text)
    if not isinstance(arguments, dict):
        raise ValueError(f"not a tool's arguments: {text[:100]!r}")
    return arguments
