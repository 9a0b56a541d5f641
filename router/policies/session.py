"""NPC memory: the session is loaded before routing, so whichever tier serves the
turn (after a fallback, or on another router replica) sees the same conversation;
the turn is recorded once the answer is complete.

The prompt carries the session trimmed to the task's token budget: an intent gets
a short window, dialogue more. If the store is unreachable the NPC answers without
memory (and a warning) rather than not at all.

Once a conversation outgrows its budget, dropping one old turn per new one would give
every turn's prompt a new beginning, and the engine's prefix cache (docs/router.md,
"Prefix affinity") would find none of it. So the window's start moves in steps: it may
only begin at a player's turn that starts a new stretch of `step` tokens of the stored
conversation, the first such turn at which the rest fits the budget. The following
turns then begin alike until the next step, at the price of carrying between
`budget - step` (less a turn) and `budget` tokens rather than always close to `budget`.
Positions count from the oldest stored turn, so a session at the store's `max_turns`,
which drops a turn with each new one, is trimmed turn by turn again.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator, Mapping, Sequence

from router import metrics
from router.call import Call
from router.pipeline import Backend
from router.state.store import SessionStore, StoreDown
from tiermesh.chat import Message
from tiermesh.config import TaskName
from tiermesh.errors import StatusError
from tiermesh.v1 import mesh_pb2

log = logging.getLogger(__name__)


def approx_tokens(text: str) -> int:
    return len(text) // 4 + 4  # ≈ 4 characters a token, plus the turn's markup


def first_kept(turns: Sequence[mesh_pb2.Turn], budget: int, step: int) -> int:
    """The index of the oldest turn the prompt carries (len(turns): none)."""
    sizes = [approx_tokens(turn.text) for turn in turns]
    rest = sum(sizes)
    fits = 0  # the oldest turn from which the rest fits the budget
    while fits < len(sizes) and rest > budget:
        rest -= sizes[fits]
        fits += 1
    if fits == 0 or step <= 0:
        return fits
    before = 0  # tokens of the stored conversation before turn i
    stretch = 0  # the stretch of `step` tokens a start was last allowed in
    for i, turn in enumerate(turns):
        if before // step > stretch and turn.speaker == mesh_pb2.SPEAKER_PLAYER:
            stretch = before // step
            if i >= fits:
                return i
        before += sizes[i]
    return fits  # no allowed start left in the window: turn by turn


def with_memory(call: Call, session: mesh_pb2.Session, budget: int, step: int = 0) -> tuple[Message, ...]:
    system, *_, prompt = call.messages
    context = []
    if session.disposition:
        context.append(f"Your disposition towards the player: {session.disposition}.")
    if session.facts:
        context.append(
            "What you know: " + "; ".join(f"{k}: {v}" for k, v in sorted(session.facts.items())) + "."
        )
    if context:
        system = Message("system", system.content + "\n\n" + " ".join(context))
    history = [
        Message("user" if turn.speaker == mesh_pb2.SPEAKER_PLAYER else "assistant", turn.text)
        for turn in session.turns[first_kept(session.turns, budget, step) :]
    ]
    return (system, *history, prompt)


@dataclasses.dataclass(frozen=True)
class Window:
    """How much of the conversation a task's prompt carries (≈ tokens), and the step its
    start moves by once the conversation outgrows it (0: a turn at a time)."""

    budget: int
    step: int = 0


class SessionContext:
    def __init__(self, inner: Backend, store: SessionStore, windows: Mapping[TaskName, Window]) -> None:
        self._inner = inner
        self._store = store
        self._windows = windows

    def generate(self, call: Call) -> AsyncIterator[mesh_pb2.GenerateResponse]:
        if not call.session_id:
            return self._inner.generate(call)  # no session: not in this call's path
        return self._remembered(call)

    async def _remembered(self, call: Call) -> AsyncIterator[mesh_pb2.GenerateResponse]:
        try:
            session = await self._store.get(call.npc_id, call.session_id)
        except StoreDown as e:
            log.warning("session store unavailable, answering without memory: %s", e)
            metrics.SESSION_STORE_ERRORS.labels("read").inc()
            session = None
        if session is not None:
            window = self._windows.get(call.task, Window(0))
            call = dataclasses.replace(call, messages=with_memory(call, session, window.budget, window.step))
        parts: list[str] = []
        tier = mesh_pb2.TIER_UNSPECIFIED
        remembered = False
        async for response in self._inner.generate(call):
            parts.append(response.text)
            tier = tier or response.tier
            if response.finish_reason:
                # Before the final message: the caller's trailers follow it at once
                # (streams.run_out), and its next turn must find this one recorded.
                await self._remember(call, parts, tier)
                remembered = True
            yield response
        if not remembered:
            await self._remember(call, parts, tier)

    async def _remember(self, call: Call, parts: list[str], tier: mesh_pb2.Tier.ValueType) -> None:
        player = mesh_pb2.Turn(speaker=mesh_pb2.SPEAKER_PLAYER, text=call.messages[-1].content)
        npc = mesh_pb2.Turn(speaker=mesh_pb2.SPEAKER_NPC, text="".join(parts), tier=tier)
        try:
            await self._store.update(call.npc_id, call.session_id, lambda s: s.turns.extend([player, npc]))
        except (*StoreDown, StatusError) as e:
            # The answer is already delivered: a turn that cannot be recorded is a
            # warning and a metric, not a failed call.
            log.warning("turn not remembered for session %s: %s", call.session_id, e)
            metrics.SESSION_STORE_ERRORS.labels("write").inc()
