"""The router's own last resort, for tasks configured `canned`: an answer that keeps the
contract, marked TIER_FALLBACK. An intent: the persona's default_intent when the call's
labels hold it, else the call's first label (the reply is always one of them). A bark or
dialogue: the persona's fallback_line (none when it has none)."""

from __future__ import annotations

from collections.abc import Mapping

from router.call import Call
from router.settings import Persona
from tiermesh.config import TaskName
from tiermesh.v1 import mesh_pb2


class CannedAnswers:
    def __init__(self, personas: Mapping[str, Persona], tasks: frozenset[TaskName]) -> None:
        self._personas = personas
        self._tasks = tasks

    def __call__(self, call: Call) -> mesh_pb2.GenerateResponse | None:
        if call.task not in self._tasks:
            return None
        persona = self._personas.get(call.npc_id)
        if call.task == "intent":
            default = persona.default_intent if persona is not None else ""
            text = default if default in call.intents else call.intents[0]
        else:
            text = persona.fallback_line if persona is not None else ""
        if not text:
            return None
        return mesh_pb2.GenerateResponse(
            text=text, tier=mesh_pb2.TIER_FALLBACK, finish_reason=mesh_pb2.FINISH_REASON_STOP
        )
