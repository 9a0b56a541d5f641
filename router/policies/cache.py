"""Intent cache in front of the tiers: the same NPC in the same situation chooses
the same intent, without a model call.

Key: the persona's system text, the intent set, and the situation normalised
(case, punctuation, whitespace; one with no letter or digit is not cached). LRU with a
TTL and a bound on entries. Only a valid label answered by a model tier is stored; a hit
streams back like any other answer, marked TIER_CACHE. `bypass_cache` neither reads nor
writes.

Behind the exact key, where configured, a near-duplicate stage: a situation that misses is
compared with those already answered for the same persona and labels, by the cosine of
their distilled embeddings (tiermesh/static_embedding.py: no model call), and one at or
above the threshold is answered with their label (a near hit). A game's situations are
often one template with another distance, count or name in it; those are what it catches.
The threshold is high because such an embedding cannot weigh one word's meaning against
another's: "a fine sword" and "a stolen sword" are close, and must not share an answer
(the default's measurements are in bench/results/gold.md).
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from collections.abc import AsyncIterator

from router import metrics
from router.call import Call
from router.near_index import NearIndex
from router.pipeline import Backend
from router.settings import IntentCacheSettings
from router.stats import Clock
from tiermesh.static_embedding import StaticEmbedder, Vector
from tiermesh.v1 import mesh_pb2

_PUNCTUATION = re.compile(r"[^\w\s]")
_SPACES = re.compile(r"\s+")
MODEL_TIERS = frozenset({mesh_pb2.TIER_GOLD, mesh_pb2.TIER_SILVER, mesh_pb2.TIER_BRONZE})

Key = tuple[str, tuple[str, ...], str]
Group = tuple[str, tuple[str, ...]]


def normalize(situation: str) -> str:
    return _SPACES.sub(" ", _PUNCTUATION.sub(" ", situation.lower())).strip()


def cache_key(call: Call) -> Key:
    system = next((m.content for m in call.messages if m.role == "system"), "")
    return system, call.intents, normalize(call.messages[-1].content)


class NearMatch:
    """The near-duplicate stage: the embedder, the similarity at which a situation counts
    as one already answered, and the index of those (at most `per_group` a persona)."""

    def __init__(self, embedder: StaticEmbedder, threshold: float, per_group: int) -> None:
        self.embedder = embedder
        self.threshold = threshold
        self.index: NearIndex[Group, Key] = NearIndex(embedder.dimensions, per_group)


def near_match(settings: IntentCacheSettings) -> NearMatch | None:
    """The near-duplicate stage the settings ask for, its table loaded (None: exact only)."""
    if not settings.near_model:
        return None
    embedder = StaticEmbedder(settings.near_model)
    return NearMatch(embedder, settings.near_threshold, settings.near_per_persona)


class IntentCache:
    def __init__(
        self,
        inner: Backend,
        max_entries: int,
        ttl_s: float,
        clock: Clock = time.monotonic,
        near: NearMatch | None = None,
    ) -> None:
        self._inner = inner
        self._max_entries = max_entries
        self._ttl_s = ttl_s
        self._clock = clock
        self._near = near
        self._entries: OrderedDict[Key, tuple[str, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, key: Key) -> str | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        intent, expires = entry
        if self._clock() >= expires:
            self._forget(key)
            return None
        self._entries.move_to_end(key)
        return intent

    def near_lookup(self, key: Key, vector: Vector) -> str | None:
        """The label of the situation nearest `vector` among its persona's, if near enough."""
        if self._near is None:
            return None
        found = self._near.index.nearest(key[:2], vector)
        if found is None or found[1] < self._near.threshold:
            return None
        return self.lookup(found[0])

    def store(self, key: Key, intent: str, vector: Vector | None = None) -> None:
        self._entries[key] = (intent, self._clock() + self._ttl_s)
        self._entries.move_to_end(key)
        if vector is not None and self._near is not None:
            self._near.index.put(key[:2], key, vector)
        while len(self._entries) > self._max_entries:
            self._forget(next(iter(self._entries)))

    def _forget(self, key: Key) -> None:
        del self._entries[key]
        if self._near is not None:
            self._near.index.remove(key[:2], key)

    def generate(self, call: Call) -> AsyncIterator[mesh_pb2.GenerateResponse]:
        if call.task != "intent":
            return self._inner.generate(call)  # not an intent: not in this call's path
        if call.bypass_cache:
            metrics.series(metrics.CACHE, "intent", "bypass").inc()
            return self._inner.generate(call)
        key = cache_key(call)
        if not key[2]:
            # Nothing left to key on once normalised (only symbols or emoji): such situations
            # would all share one entry, whatever the model made of each.
            return self._inner.generate(call)
        return self._cached(call, key)

    async def _cached(self, call: Call, key: Key) -> AsyncIterator[mesh_pb2.GenerateResponse]:
        intent = self.lookup(key)
        result = "hit"
        vector = None
        if intent is None and self._near is not None:
            vector = self._near.embedder.embed(key[2])
            intent = self.near_lookup(key, vector) if vector is not None else None
            result = "near_hit"
        if intent is not None:
            metrics.series(metrics.CACHE, "intent", result).inc()
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
                self._keep(key, vector, call, parts, tiers)
                stored = True
            yield response
        if not stored:
            self._keep(key, vector, call, parts, tiers)

    def _keep(self, key: Key, vector: Vector | None, call: Call, parts: list[str], tiers: set[int]) -> None:
        """Store a valid label a model tier answered."""
        answer = "".join(parts).strip()
        if answer in call.intents and tiers <= MODEL_TIERS:
            self.store(key, answer, vector)
