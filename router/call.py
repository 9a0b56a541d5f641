"""A request after the edge resolved it: what every policy and backend works on."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from opentelemetry.context import Context

from tiermesh.chat import Message
from tiermesh.config import PriorityName, TaskName
from tiermesh.v1 import mesh_pb2

# Characters per token when a prompt's tokens are estimated before a tier counts them.
CHARS_PER_TOKEN = 4


def estimate_tokens(texts: Iterable[str]) -> int:
    """The tokens in these texts before a tokenizer has counted them (≈ 4 characters each)."""
    return sum(len(text) for text in texts) // CHARS_PER_TOKEN


@dataclass(frozen=True, slots=True)
class Call:
    request_id: str
    task: TaskName
    npc_id: str
    session_id: str
    # Persona system text first, then the conversation; the last is the user's turn.
    messages: tuple[Message, ...]
    max_tokens: int
    sampling: mesh_pb2.SamplingOptions
    # Absolute time.monotonic() by which the caller must have its answer.
    deadline: float
    received_at: float = field(default_factory=time.monotonic)
    # Who is calling (the authenticated client, else `x-client-id`): the tenant of
    # per-client limits, token quotas and the fair queues.
    client_id: str = "anonymous"
    # Its traffic class (the request's, else its task's default).
    priority: PriorityName = "standard"
    # Set by fallback: when this tier's first token must have arrived, so that the
    # next tier still has time. Queues use it to shed early.
    first_token_by: float | None = None
    # TASK_INTENT: the labels to choose from (validated, in the NPC's order).
    intents: tuple[str, ...] = ()
    bypass_cache: bool = False
    tool_choice: int = 0  # tiermesh.v1.ToolChoice
    # Per tier, how long its stream limit held this call before giving it a slot (None
    # while it waits). The planner adds a queue's expected wait to a tier's time itself,
    # per tenant and class, so the tier's record must keep only what followed: else one
    # tenant's flood would make the tier look too slow for a tenant with a free slot.
    # Shared by every attempt of the call.
    slot_waits: dict[str, float | None] = field(default_factory=dict, compare=False)
    # Replica addresses this call has already used (retries, hedges and resumes
    # prefer others). Shared by every attempt of the call.
    tried: set[str] = field(default_factory=set, compare=False)
    # The edge's span, parent of every tier attempt (tiermesh/tracing.py).
    trace: Context | None = field(default=None, compare=False)
    # How to cancel each tier call now in flight for this request (shared by every
    # attempt, like `tried`). See cancel_tier_calls.
    tier_calls: set[Callable[[], object]] = field(default_factory=set, compare=False)

    def prompt_tokens_estimate(self) -> int:
        """The prompt's tokens before a tier has counted them (≈ 4 characters each)."""
        return estimate_tokens(message.content for message in self.messages)

    def remaining(self) -> float:
        """Seconds left in the caller's budget (negative once it has passed)."""
        return self.deadline - time.monotonic()

    def first_token_remaining(self) -> float:
        """Seconds left for this tier's first token (the whole budget if unset)."""
        limit = self.deadline if self.first_token_by is None else min(self.deadline, self.first_token_by)
        return limit - time.monotonic()

    def cancel_tier_calls(self) -> bool:
        """Cancel the tier calls in flight; says whether there were any. Their pending
        reads then end with the call, as gRPC completes them. Cancelling the task that
        awaits such a read instead leaks the read's batch in grpc.aio (grpc/grpc#43360)."""
        cancels = list(self.tier_calls)
        for cancel in cancels:
            cancel()
        return bool(cancels)
