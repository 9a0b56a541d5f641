"""Intent cache in front of the tiers: the same NPC in the same situation chooses
the same intent, without a model call.

Key: the persona's system text, the intent set, and the situation normalised
(case, punctuation, whitespace). LRU with a TTL and a bound on entries. Only a
valid label answered by a model tier is stored; a hit streams back like any other
answer, marked TIER_CACHE. `bypass_cache` neither reads nor writes.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from collections.abc import AsyncIterator

from router import metrics
from router.call import Call
from router.pipeline import Backend
from router.stats import Clock
from tiermesh.v1 import mesh_pb2

_PUNCTUATION = re.compile(r"[^\w\s]")
_SPACES = re.compile(r"\s+")
MODEL_TIERS = frozenset({mesh_pb2.TIER_GOLD, mesh_pb2.TIER_SILVER, mesh_pb2.TIER_BRONZE})

Key = tuple[str, tuple[str, ...], str]


def normalize(situation: str) -> str:
    return _SPACES.sub(" ", _PUNCTUATION.sub(" ", situation.lower())).strip()


def cache_key(call: Call) -> Key:
    system = next((m.content for m in call.messages if m.role == "system"), "")
    return system, call.intents, normalize(call.messages[-1].content)


class IntentCache:
    def __init__(self, inner: Backend, max_entries: int, ttl_s: float, clock: Clock = time.monotonic) -> None:
        self._inner = inner
        self._max_entries = max_entries
        self._ttl_s = ttl_s
        self._clock = clock
        self._entries: OrderedDict[Key, tuple[str, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, key: Key) -> str | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        intent, expires = entry
        if self._clock() >= expires:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return intent

    def store(self, key: Key, intent: str) -> None:
        self._entries[key] = (intent, self._clock() + self._ttl_s)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def generate(self, call: Call) -> AsyncIterator[mesh_pb2.GenerateResponse]:
        if call.task != "intent":
            return self._inner.generate(call)  # not an intent: not in this call's path
        if call.bypass_cache:
            metrics.series(metrics.CACHE, "intent", "bypass").inc()
            return self._inner.generate(call)
        return self._cached(call)

    async def _cached(self, call: Call) -> AsyncIterator[mesh_pb2.GenerateResponse]:
        key = cache_key(call)
        intent = self.lookup(key)
        if intent is not None:
            metrics.series(metrics.CACHE, "intent", "hit").inc()
            hit = mesh_pb2.GenerateResponse(
                text=intent, tier=mesh_pb2.TIER_CACHE, finish_reason=mesh_pb2.FINISH_REASON_STOP
            )
            hit.usage.completion_tokens = 1
            yield hit
            return
        metrics.series(metrics.CACHE, "intent", "miss").inc()
        parts: list[str] = []
        tiers: set[int] = set()
        stored = False
        async for response in self._inner.generate(call):
            parts.append(response.text)
            tiers.add(response.tier)
            if response.finish_reason:
                # Before the final message: the caller's trailers follow it at once
                # (streams.run_out), and a repeat right after must find the label.
                self._keep(key, call, parts, tiers)
                stored = True
            yield response
        if not stored:
            self._keep(key, call, parts, tiers)

    def _keep(self, key: Key, call: Call, parts: list[str], tiers: set[int]) -> None:
        """Store a valid label a model tier answered."""
        answer = "".join(parts).strip()
        if answer in call.intents and tiers <= MODEL_TIERS:
            self.store(key, answer)
