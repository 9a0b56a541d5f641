"""The router's edge check: a public request becomes a `Call`, or a precise status.

Every rejection names the field and the rule, so a game engineer can fix the call
from the message alone.
"""

from __future__ import annotations

import math
import random
import re
import time

import grpc
from opentelemetry.context import Context

from router.call import Call
from router.settings import Persona, RouterConfig
from tiermesh.chat import Message
from tiermesh.config import PriorityName, TaskName
from tiermesh.errors import StatusError, invalid
from tiermesh.ids import is_valid_id
from tiermesh.v1 import mesh_pb2

TASK_NAMES: dict[int, TaskName] = {
    mesh_pb2.TASK_INTENT: "intent",
    mesh_pb2.TASK_BARK: "bark",
    mesh_pb2.TASK_DIALOGUE: "dialogue",
    mesh_pb2.TASK_LONGFORM: "longform",
}
PRIORITY_NAMES: dict[int, PriorityName] = {
    mesh_pb2.PRIORITY_CRITICAL: "critical",
    mesh_pb2.PRIORITY_STANDARD: "standard",
    mesh_pb2.PRIORITY_SHEDDABLE: "sheddable",
}
ID_RULE = "letters, digits, '.', '_', ':' or '-', starting with a letter or digit, at most 128"
TOOL_CHOICES = frozenset(mesh_pb2.ToolChoice.values())
INTENT_LABEL = re.compile(r"[A-Z][A-Z0-9_]{0,31}")


def resolve(
    request: mesh_pb2.GenerateRequest,
    config: RouterConfig,
    time_remaining: float | None,
    now: float | None = None,
    client_id: str = "anonymous",
    trace: Context | None = None,
    priority: int = 0,
) -> Call:
    """Validate `request` and fill in persona, defaults and the absolute deadline.

    `time_remaining` is the caller's gRPC deadline in seconds (None: no deadline,
    the task's default budget applies). `priority` is the caller's default for a
    request that names none (a Converse stream's).
    """
    now = time.monotonic() if now is None else now
    router = config.router

    if not is_valid_id(request.npc_id):
        raise invalid(f"npc_id {request.npc_id[:40]!r} is not valid: use {ID_RULE} characters")
    if request.session_id and not is_valid_id(request.session_id):
        raise invalid(f"session_id {request.session_id[:40]!r} is not valid: use {ID_RULE}")
    task = TASK_NAMES.get(request.task)
    if task is None:
        names = ", ".join(mesh_pb2.Task.Name(mesh_pb2.Task.ValueType(t)) for t in TASK_NAMES)
        raise invalid(f"task {request.task} is not one of {names}")
    persona = config.persona_for(request.npc_id)
    if persona is None and not request.persona:
        raise StatusError(
            grpc.StatusCode.NOT_FOUND,
            f"npc_id {request.npc_id!r} has no persona: configure one for it, or send persona with the call",
        )
    if not request.prompt.strip():
        raise invalid("prompt must not be empty")
    if len(request.prompt) > router.max_prompt_chars:
        raise invalid(f"prompt is {len(request.prompt)} characters; the limit is {router.max_prompt_chars}")
    policy = router.tasks[task]
    max_tokens = request.max_tokens or policy.default_max_tokens
    if max_tokens > policy.max_tokens_limit:
        raise invalid(f"max_tokens {max_tokens} is over the {task} limit of {policy.max_tokens_limit}")
    _check_sampling(request.sampling)
    if request.tool_choice not in TOOL_CHOICES:
        raise invalid(f"tool_choice {request.tool_choice} is not a ToolChoice")
    intents = _intents(request, task, router.max_intents, persona)
    named = request.priority or priority
    if named and named not in PRIORITY_NAMES:
        values = ", ".join(mesh_pb2.Priority.Name(mesh_pb2.Priority.ValueType(p)) for p in PRIORITY_NAMES)
        raise invalid(f"priority {named} is not one of {values} (or unspecified: the task's default)")

    if time_remaining is None:
        time_remaining = policy.default_deadline_s
    if time_remaining <= 0:
        raise StatusError(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline expired before routing")

    system = request.persona or (persona.system if persona is not None else "")
    return Call(
        # Unique, not secret: no system call for randomness (secrets, uuid4) per call.
        request_id=f"{random.getrandbits(128):032x}",
        trace=trace,
        task=task,
        npc_id=request.npc_id,
        session_id=request.session_id,
        messages=(Message("system", system), Message("user", request.prompt)),
        max_tokens=max_tokens,
        sampling=request.sampling,
        deadline=now + time_remaining,
        received_at=now,
        client_id=client_id,
        priority=PRIORITY_NAMES[named] if named else policy.priority,
        intents=intents,
        bypass_cache=request.bypass_cache,
        tool_choice=request.tool_choice,
    )


MAX_FACTS = 64


def check_session_ids(npc_id: str, session_id: str) -> None:
    if not is_valid_id(npc_id):
        raise invalid(f"npc_id {npc_id[:40]!r} is not valid: use {ID_RULE} characters")
    if not is_valid_id(session_id):
        raise invalid(f"session_id {session_id[:40]!r} is not valid: use {ID_RULE} characters")


def check_session_update(request: mesh_pb2.UpdateSessionRequest) -> None:
    if len(request.disposition) > 64:
        raise invalid("disposition takes at most 64 characters")
    if len(request.facts) > MAX_FACTS:
        raise invalid(f"{len(request.facts)} facts; at most {MAX_FACTS} per update")
    if bad := [key for key, value in request.facts.items() if not key or len(key) > 64 or len(value) > 512]:
        raise invalid(f"fact keys take 1-64 characters and values at most 512: {bad[:3]}")


def _intents(
    request: mesh_pb2.GenerateRequest, task: TaskName, limit: int, persona: Persona | None
) -> tuple[str, ...]:
    if task != "intent":
        if request.intents:
            raise invalid("intents are only for TASK_INTENT")
        return ()
    intents = list(request.intents) or (persona.intents if persona is not None else [])
    if not intents:
        raise invalid(
            f"TASK_INTENT needs an intent set: send intents, or configure one for {request.npc_id!r}"
        )
    if len(intents) > limit:
        raise invalid(f"{len(intents)} intents; the limit is {limit}")
    if duplicates := sorted({i for i in intents if intents.count(i) > 1}):
        raise invalid(f"duplicate intents: {', '.join(duplicates)}")
    if bad := [i for i in intents if not INTENT_LABEL.fullmatch(i)]:
        raise invalid(f"intents must be upper-case labels like ATTACK (A-Z, 0-9, _; ≤ 32): {bad[:3]}")
    return tuple(intents)


def _check_sampling(s: mesh_pb2.SamplingOptions) -> None:
    if s.HasField("temperature") and not (math.isfinite(s.temperature) and 0 <= s.temperature <= 2):
        raise invalid(f"sampling.temperature {s.temperature} is outside [0, 2]")
    if s.HasField("top_p") and not (math.isfinite(s.top_p) and 0 < s.top_p <= 1):
        raise invalid(f"sampling.top_p {s.top_p} is outside (0, 1]")
    if len(s.stop) > 8 or any(not stop or len(stop) > 64 for stop in s.stop):
        raise invalid("sampling.stop takes at most 8 non-empty sequences of at most 64 characters")
