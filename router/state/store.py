"""NPC session stores: in-process, or Redis for several router replicas.

A session is a `tiermesh.v1.Session` (turns, disposition, facts, version), stored as
protobuf bytes with a TTL refreshed on every change. Every change is a
read-modify-write that applies only if nobody changed the session meanwhile
(optimistic concurrency): in-process that is one step of the event loop; in Redis a
WATCH/MULTI transaction, retried on conflict. Concurrent turns never lose an update.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from typing import Protocol

import grpc
from google.protobuf.message import DecodeError
from redis.asyncio import Redis
from redis.exceptions import RedisError, WatchError

from router.settings import StateSettings
from tiermesh.errors import StatusError
from tiermesh.v1 import mesh_pb2

log = logging.getLogger(__name__)
Change = Callable[[mesh_pb2.Session], None]
# What a shared-state store that cannot answer raises (Redis down, a socket timeout).
StoreDown = (RedisError, OSError)


class SessionStore(Protocol):
    async def get(self, npc_id: str, session_id: str) -> mesh_pb2.Session | None: ...

    async def update(
        self, npc_id: str, session_id: str, change: Change, expected_version: int = 0
    ) -> mesh_pb2.Session: ...

    async def delete(self, npc_id: str, session_id: str) -> bool: ...

    async def close(self) -> None: ...


def decode(npc_id: str, session_id: str, raw: bytes | str | None) -> mesh_pb2.Session | None:
    if raw is None:
        return None
    try:
        return mesh_pb2.Session.FromString(raw if isinstance(raw, bytes) else raw.encode())
    except DecodeError:
        # Corrupted state must not take the NPC down: start the session over.
        log.warning("session %s/%s was unreadable; starting it over", npc_id, session_id)
        return None


def apply(
    current: mesh_pb2.Session | None,
    npc_id: str,
    session_id: str,
    change: Change,
    expected_version: int,
    max_turns: int,
) -> mesh_pb2.Session:
    """The next version of a session, or ABORTED when `expected_version` is stale."""
    session = current or mesh_pb2.Session(npc_id=npc_id, session_id=session_id)
    if expected_version and session.version != expected_version:
        raise StatusError(
            grpc.StatusCode.ABORTED,
            f"session {session_id} is at version {session.version}, not {expected_version}: read it again",
        )
    updated = mesh_pb2.Session()
    updated.CopyFrom(session)
    change(updated)
    if len(updated.turns) > max_turns:
        del updated.turns[: len(updated.turns) - max_turns]
    updated.version = session.version + 1
    updated.updated_at.GetCurrentTime()
    return updated


class MemoryStore:
    """One router's sessions. Read-modify-write happens without an await in between,
    so on one event loop it is atomic."""

    def __init__(self, settings: StateSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self._settings = settings
        self._clock = clock
        self._sessions: dict[tuple[str, str], tuple[bytes, float]] = {}

    def _raw(self, key: tuple[str, str]) -> bytes | None:
        entry = self._sessions.get(key)
        if entry is None:
            return None
        raw, expires = entry
        if self._clock() >= expires:
            del self._sessions[key]
            return None
        return raw

    async def get(self, npc_id: str, session_id: str) -> mesh_pb2.Session | None:
        return decode(npc_id, session_id, self._raw((npc_id, session_id)))

    async def update(
        self, npc_id: str, session_id: str, change: Change, expected_version: int = 0
    ) -> mesh_pb2.Session:
        key = (npc_id, session_id)
        current = decode(npc_id, session_id, self._raw(key))
        session = apply(current, npc_id, session_id, change, expected_version, self._settings.max_turns)
        self._sessions[key] = (session.SerializeToString(), self._clock() + self._settings.ttl_s)
        return session

    async def delete(self, npc_id: str, session_id: str) -> bool:
        return self._sessions.pop((npc_id, session_id), None) is not None

    async def close(self) -> None:
        self._sessions.clear()


class RedisStore:
    """Sessions shared by every router replica."""

    def __init__(self, settings: StateSettings) -> None:
        self._settings = settings
        self._redis = Redis.from_url(settings.redis_url, socket_timeout=0.5, socket_connect_timeout=0.5)

    @staticmethod
    def _key(npc_id: str, session_id: str) -> str:
        return f"tiermesh:session:{npc_id}:{session_id}"

    async def get(self, npc_id: str, session_id: str) -> mesh_pb2.Session | None:
        return decode(npc_id, session_id, await self._redis.get(self._key(npc_id, session_id)))

    async def update(
        self, npc_id: str, session_id: str, change: Change, expected_version: int = 0
    ) -> mesh_pb2.Session:
        key = self._key(npc_id, session_id)
        ttl_ms = int(self._settings.ttl_s * 1000)
        for attempt in range(self._settings.max_retries):
            async with self._redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(key)
                    current = decode(npc_id, session_id, await pipe.get(key))
                    session = apply(
                        current, npc_id, session_id, change, expected_version, self._settings.max_turns
                    )
                    pipe.multi()  # type: ignore[no-untyped-call]
                    pipe.set(key, session.SerializeToString(), px=ttl_ms)
                    await pipe.execute()
                    return session
                except WatchError:
                    # Someone else changed it first: read again, after a jittered,
                    # growing pause so that many writers do not collide in lockstep.
                    await asyncio.sleep(random.uniform(0, 0.001 * 2 ** min(attempt, 6)))
        raise StatusError(grpc.StatusCode.ABORTED, f"session {session_id} is too busy to update; retry")

    async def delete(self, npc_id: str, session_id: str) -> bool:
        return bool(await self._redis.delete(self._key(npc_id, session_id)))

    async def close(self) -> None:
        await self._redis.aclose()


def store(settings: StateSettings) -> SessionStore:
    return RedisStore(settings) if settings.backend == "redis" else MemoryStore(settings)
