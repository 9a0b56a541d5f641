"""Silver's settings: the `silver` section of the mesh's configuration."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator


class McpServer(BaseModel):
    """An MCP server Silver takes tools from: a stdio command, or a streamable HTTP URL."""

    name: str
    command: list[str] = Field(default_factory=list)
    url: str = ""

    @model_validator(mode="after")
    def _one_transport(self) -> McpServer:
        if bool(self.command) == bool(self.url):
            raise ValueError(f"MCP server {self.name!r} needs a command or a url (one of them)")
        return self


class SilverSettings(BaseModel):
    listen: str = "127.0.0.1:50061"
    metrics_port: int = Field(default=9465, ge=0, le=65535)
    # An HF model folder (local) or, in production, any model name vLLM accepts.
    model: str = ".models/smollm2-135m-instruct"
    dtype: str = "float32"
    max_model_len: int = Field(default=2048, gt=0)
    # KV cache size. vLLM's CPU default reserves a share of all RAM; be explicit.
    kv_cache_gib: float = Field(default=1.0, gt=0)
    # vLLM's automatic prefix caching: a prompt that begins like an earlier one (a
    # persona, a conversation's last turn) skips that part's prefill. The router's
    # prefix-affine balancer sends a conversation where its prefix is. Its hit and query
    # counters are exported as vllm:prefix_cache_hits / vllm:prefix_cache_queries.
    prefix_caching: bool = True
    # Tokens per KV-cache block: the prefix cache finds whole blocks only, so a turn re-runs
    # the part of its conversation past the last full one. None: vLLM's default (16 on GPU,
    # 128 on CPU).
    block_size: int | None = Field(default=None, gt=0)
    # Concurrent sequences the engine schedules together.
    max_num_seqs: int = Field(default=16, gt=0)
    # Empty: vLLM decides. "0-1" binds OpenMP threads to both cores here.
    omp_threads_bind: str = ""
    # Sampling defaults when the caller leaves them unset.
    default_temperature: float = Field(default=0.7, ge=0)
    default_top_p: float = Field(default=0.9, gt=0, le=1)
    # Tools (MCP). Deciding on a tool is a decoding pass of its own: "none" keeps
    # plain dialogue fast unless a caller asks for tools.
    mcp_servers: list[McpServer] = Field(default_factory=list)
    tool_choice_default: Literal["none", "auto"] = "none"
    max_tool_calls: int = Field(default=1, ge=0, le=4)
    tool_timeout_s: float = Field(default=2.0, gt=0)
