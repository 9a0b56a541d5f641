"""Answers shaped to the deadline: a streamed answer that cannot finish in time ends
cleanly before the deadline, OK with FINISH_REASON_DEADLINE, instead of
DEADLINE_EXCEEDED in the middle of a word.

Messages pass as they are until the closing window: the last `closing_tokens` tokens'
worth of time before the cut-off, or the last ones of a max_tokens the planner lowered to
fit. In it, text is sent a sentence at a time: what follows the last sentence end is held
back until the next one comes. If the answer ends by itself, all of it goes out; if it is
cut off (or stops at the lowered max_tokens), the unfinished sentence is dropped, or,
where no sentence ended in the window, the part of a word. So a game never shows half a
word, and mostly whole sentences."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

from router.stats import Clock
from router.streams import Cut, Cutoff
from tiermesh.v1 import mesh_pb2

# A sentence's end: its mark, closing quotes or brackets, then a space.
SENTENCE_END = re.compile(r"""[.!?…]["'”’)\]]*(?=\s)""")
ENDS_SENTENCE = re.compile(r"""[.!?…]["'”’)\]]*\s*$""")


def whole_sentences(text: str) -> str:
    """`text` up to and including its last sentence end ("" when none)."""
    ends = [found.end() for found in SENTENCE_END.finditer(text)]
    return text[: ends[-1]] if ends else ""


def ending(held: str, sentence_seen: bool) -> str:
    """What of the held-back text may end an answer cut off now: all of it if it ends a
    sentence, else up to its last sentence end; nothing if a sentence ended earlier in
    the window (the rest is an unfinished one); else whole words (up to its last space)."""
    if ENDS_SENTENCE.search(held):
        return held
    if out := whole_sentences(held):
        return out
    if sentence_seen:
        return ""
    space = max(held.rfind(" "), held.rfind("\n"))
    return held[: space + 1]


async def shaped(
    stream: AsyncIterator[mesh_pb2.GenerateResponse],
    cutoff: Cutoff,
    closing_at: float,
    closing_after: int | None,
    shortened: bool,
    clock: Clock,
    tier: mesh_pb2.Tier.ValueType = mesh_pb2.TIER_UNSPECIFIED,
) -> AsyncIterator[mesh_pb2.GenerateResponse]:
    """`stream` ended by `cutoff` (armed for the cut-off), closing from `closing_at`
    (clock time) or after `closing_after` messages; `shortened`: the planner lowered
    max_tokens, so the tier's LENGTH is the deadline's; `tier`: the answer's (its first
    message, sent before this), which messages the router makes itself carry too."""
    held = ""
    sentence_seen = False
    messages = 0
    closing = False
    while True:
        try:
            response = await cutoff.next(stream)
        except StopAsyncIteration:
            if held:
                yield mesh_pb2.GenerateResponse(text=held, tier=tier)
            return
        except Cut:
            end = mesh_pb2.GenerateResponse(text=ending(held, sentence_seen), tier=tier)
            end.finish_reason = mesh_pb2.FINISH_REASON_DEADLINE
            end.usage.completion_tokens = messages
            yield end
            return
        tier = response.tier or tier
        if response.HasField("tool"):
            yield response
            continue
        messages += 1
        if response.finish_reason:
            text = held + response.text
            if shortened and response.finish_reason == mesh_pb2.FINISH_REASON_LENGTH:
                text = ending(text, sentence_seen)
                response.finish_reason = mesh_pb2.FINISH_REASON_DEADLINE
            response.text = text
            yield response
            return
        if not closing:
            closing = clock() >= closing_at or (closing_after is not None and messages >= closing_after)
        if not closing:
            yield response
            continue
        held += response.text
        if out := whole_sentences(held):
            sentence_seen = True
            held = held[len(out) :]
            response.text = out
            yield response
