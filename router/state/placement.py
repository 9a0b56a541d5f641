"""Where each conversation's turns go: a tier replica per affinity key, in-process or in
Redis so that every router replica sends a conversation to the same engine.

A hash ring alone places few conversations unevenly (eight keys on two replicas can
land seven to one), and its load bound then moves the overflow from turn to turn, each
move a cold prefix. Remembered, a conversation is placed once, by load, and stays.

Entries expire with the sessions they belong to (state.ttl_s). A store that cannot
answer is a miss, never a failed call: the ring decides instead (router/affinity.py).
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from typing import Protocol

from redis.asyncio import Redis

from router.stats import Clock

# In-process entries kept, least recently used forgotten first: a client inventing
# session ids cannot grow the router without bound.
MAX_ENTRIES = 100_000


class Placements(Protocol):
    async def get(self, tier: str, key: bytes) -> str | None: ...

    async def put(self, tier: str, key: bytes, address: str) -> None: ...

    async def close(self) -> None: ...


class MemoryPlacements:
    """One router's placements."""

    def __init__(self, ttl_s: float, max_entries: int = MAX_ENTRIES, clock: Clock = time.monotonic) -> None:
        self._ttl_s = ttl_s
        self._max = max_entries
        self._clock = clock
        self._entries: OrderedDict[tuple[str, bytes], tuple[str, float]] = OrderedDict()

    async def get(self, tier: str, key: bytes) -> str | None:
        entry = self._entries.get((tier, key))
        if entry is None:
            return None
        address, expires = entry
        if self._clock() >= expires:
            del self._entries[(tier, key)]
            return None
        self._entries.move_to_end((tier, key))
        return address

    async def put(self, tier: str, key: bytes, address: str) -> None:
        self._entries[(tier, key)] = (address, self._clock() + self._ttl_s)
        self._entries.move_to_end((tier, key))
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    async def close(self) -> None:
        self._entries.clear()


class RedisPlacements:
    """Placements shared by every router replica: one string per key, with a TTL."""

    def __init__(self, redis_url: str, ttl_s: float) -> None:
        self._ttl_ms = int(ttl_s * 1000)
        # Placement is on the first token's path: a slow store is a miss, soon.
        self._redis = Redis.from_url(redis_url, socket_timeout=0.1, socket_connect_timeout=0.1)

    @staticmethod
    def _key(tier: str, key: bytes) -> str:
        return f"tiermesh:placement:{tier}:{hashlib.blake2b(key, digest_size=16).hexdigest()}"

    async def get(self, tier: str, key: bytes) -> str | None:
        raw = await self._redis.get(self._key(tier, key))
        return raw.decode() if isinstance(raw, bytes) else raw

    async def put(self, tier: str, key: bytes, address: str) -> None:
        await self._redis.set(self._key(tier, key), address, px=self._ttl_ms)

    async def close(self) -> None:
        await self._redis.aclose()


def placement_store(backend: str, redis_url: str, ttl_s: float) -> Placements:
    """Shared through Redis when session state is (router.state.backend)."""
    return RedisPlacements(redis_url, ttl_s) if backend == "redis" else MemoryPlacements(ttl_s)
