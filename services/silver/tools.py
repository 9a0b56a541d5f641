"""Tools for Silver, from MCP servers: what they offer, a regex that only admits a
valid call, and calls bounded by a timeout.

The model chooses by guided decoding (vLLM structured outputs with a regex): with
this small model a JSON-schema guide wandered into whitespace until max_tokens,
while a regex built from the tools' schemas gives a valid call in one pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from dataclasses import dataclass
from typing import Any

from services.silver.settings import McpServer

log = logging.getLogger(__name__)
# JSON values the regex can describe, by schema type.
_VALUE = {"string": r'"[^"\\]{0,64}"', "integer": r"-?[0-9]{1,9}", "number": r"-?[0-9]{1,9}(\.[0-9]{1,6})?",
          "boolean": r"(true|false)"}  # fmt: skip


class ToolError(Exception):
    pass


@dataclass
class Tool:
    name: str
    description: str
    required: list[tuple[str, str]]  # (argument, JSON type), in order
    session: Any  # mcp.ClientSession


def call_pattern(tool: Tool) -> str | None:
    """A regex for `{"tool": name, "arguments": {...}}`, or None if the schema needs
    more than flat required arguments of simple types."""
    parts = []
    for argument, kind in tool.required:
        if kind not in _VALUE:
            return None
        parts.append(f'"{re.escape(argument)}": {_VALUE[kind]}')
    return r'\{"tool": "' + re.escape(tool.name) + r'", "arguments": \{' + ", ".join(parts) + r"\}\}"


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

    def guide(self, allow_none: bool) -> str | None:
        """The regex of every valid choice (a call, or `{"tool": "none"}`)."""
        patterns = [p for tool in self.tools.values() if (p := call_pattern(tool))]
        if allow_none:
            patterns.append(r'\{"tool": "none"\}')
        return "(" + "|".join(patterns) + ")" if patterns else None

    def menu(self) -> str:
        lines = [
            f"- {t.name}({', '.join(a for a, _ in t.required)}): {t.description}" for t in self.tools.values()
        ]
        return "\n".join(lines)

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


def parse_call(text: str) -> tuple[str, dict[str, Any]]:
    """(tool name, arguments) from the model's guided output; ValueError if invalid."""
    data = json.loads(text)
    name = data.get("tool")
    arguments = data.get("arguments", {})
    if not isinstance(name, str) or not isinstance(arguments, dict):
        raise ValueError(f"not a tool call: {text[:100]!r}")
    return name, arguments
