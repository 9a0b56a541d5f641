"""Conversation placement shared by router replicas through a real redis-server
(router/state/placement.py): one router places a conversation, the other sends its
later turns to the same replica."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from router.policies.balancer import Balancer
from router.state.placement import RedisPlacements
from tests.fakes import drain
from tests.unit.test_affinity import remembering, replica_set, turn


async def test_two_routers_keep_a_conversation_on_one_replica_through_redis(redis_server: str) -> None:
    await Redis.from_url(redis_server).flushdb()
    stores = [RedisPlacements(redis_server, ttl_s=60) for _ in range(2)]
    async for replicas, backends in replica_set(2):
        first, second = (Balancer(replicas, remembering(replicas, store)) for store in stores)
        # Eight first turns at once: each awaits the store, and none may place itself
        # on loads that do not count the others being placed.
        opened = [first.generate(turn(f"s{i}", 0)) for i in range(8)]
        await asyncio.gather(*(anext(stream) for stream in opened))
        for stream in opened:
            await drain(stream)
        placed = {call.session_id: i for i, b in enumerate(backends) for call in b.calls}
        assert sorted(placed.values()) == [0] * 4 + [1] * 4
        for i in range(8):
            await drain(second.generate(turn(f"s{i}", 1)))
        for i, backend in enumerate(backends):
            assert all(placed[call.session_id] == i for call in backend.calls)
    keys = await Redis.from_url(redis_server).keys("tiermesh:placement:silver:*")
    assert len(keys) == 8
    ttl = await Redis.from_url(redis_server).pttl(keys[0])
    assert 0 < ttl <= 60_000
    for store in stores:
        await store.close()
