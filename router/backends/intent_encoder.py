"""Intents by an encoder: a situation gets the label whose guide it is nearest to.

Each persona's intents are described in configuration (`intent_guides`: a sentence on
what the label means and a few situations that call for it). Their encodings are averaged
into one unit vector per label, once per persona and label set, with the same model that
encodes the situations, so the prototypes always match the served model. A call then
costs one encoding (Triton's `intent_encoder`) and a dot product here; the reply is always
one of the call's labels, with the cosine similarity as its score.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import numpy as np

from router.call import Call
from router.settings import Persona

Encode = Callable[[Sequence[str]], Awaitable[np.ndarray[Any, np.dtype[np.float32]]]]
Prototypes = np.ndarray[Any, np.dtype[np.float32]]


def situation(call: Call) -> str:
    """What is encoded: the call's last user message (the situation), without the
    persona or the history, which the label guides already stand for."""
    for message in reversed(call.messages):
        if message.role == "user":
            return message.content
    return call.messages[-1].content if call.messages else ""


def guide_texts(persona: Persona | None, label: str) -> list[str]:
    """What stands for a label: its description and examples, else the label in words."""
    guide = persona.intent_guides.get(label) if persona is not None else None
    if guide is None:
        return [label.replace("_", " ").lower()]
    return [guide.description, *guide.examples]


def unit(vectors: np.ndarray[Any, Any]) -> Prototypes:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return np.asarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32)


# Label sets a request brings itself are kept this many at a time (least recently used
# go first); the personas' own are always kept.
REQUEST_SETS_KEPT = 256
Key = tuple[str, tuple[str, ...]]


class IntentLabeller:
    """Prototypes per (persona, labels), built once and shared by every replica of the
    tier (they serve one model). A build runs as a task of its own: a caller whose
    deadline passes stops waiting for it, the build goes on for the next callers."""

    def __init__(self, personas: Mapping[str, Persona], kept: int = REQUEST_SETS_KEPT) -> None:
        self._personas = personas
        self._own = {(npc, tuple(p.intents)) for npc, p in personas.items() if p.intents}
        self._kept = kept
        self._prototypes: OrderedDict[Key, Prototypes] = OrderedDict()
        self._building: dict[Key, asyncio.Task[Prototypes]] = {}

    async def warm(self, encode: Encode) -> None:
        """Builds the prototypes of every persona's own intents."""
        for npc, labels in sorted(self._own):
            await self.prototypes(npc, labels, encode)

    async def prototypes(self, npc_id: str, labels: tuple[str, ...], encode: Encode) -> Prototypes:
        """One unit row per label, in their order; the guides are the NPC's persona's
        (a call's own labels have guides only where its persona has them)."""
        key = (npc_id if npc_id in self._personas else "", labels)
        if (ready := self._prototypes.get(key)) is not None:
            self._prototypes.move_to_end(key)
            return ready
        building = self._building.get(key)
        if building is None:
            building = self._building[key] = asyncio.create_task(self._build(key, encode))
            building.add_done_callback(lambda task: self._built(key, task))
        return await asyncio.shield(building)

    def _built(self, key: Key, task: asyncio.Task[Prototypes]) -> None:
        del self._building[key]
        if not task.cancelled():
            task.exception()  # seen here, so a build no caller waited out is not logged as lost

    async def _build(self, key: Key, encode: Encode) -> Prototypes:
        npc, labels = key
        persona = self._personas.get(npc)
        texts = [guide_texts(persona, label) for label in labels]
        encoded = await encode([text for group in texts for text in group])
        rows, start = [], 0
        for group in texts:
            rows.append(unit(encoded[start : start + len(group)]).mean(axis=0))
            start += len(group)
        prototypes = unit(np.stack(rows))
        self._prototypes[key] = prototypes
        others = [k for k in self._prototypes if k not in self._own]
        for old in others[: max(0, len(others) - self._kept)]:
            del self._prototypes[old]
        return prototypes

    async def label(self, call: Call, encode: Encode) -> tuple[str, float]:
        """The call's label nearest to its situation, and their cosine similarity."""
        prototypes, [encoded] = await asyncio.gather(
            self.prototypes(call.npc_id, call.intents, encode), encode([situation(call)])
        )
        scores = prototypes @ unit(encoded)
        best = int(np.argmax(scores))
        return call.intents[best], float(scores[best])
