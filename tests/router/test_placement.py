"""Conversation placement shared by router replicas through a real redis-server
(router/state/placement.py): one router places a conversation, the other sends its
later turns to the same replica."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from router.affinity import affinity_key
from router.policies.balancer import Balancer
from router.state.placement import RedisPlacements
from tests.fakes import drain
from tests.unit.test_affinity import LEADING, remembering, replica_set, turn


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


async def test_routers_count_each_others_conversations_through_redis(redis_server: str) -> None:
    """Each router places at a player's pace by the conversations both placed: a turn
    through either marks its conversation active, a move takes it off the old replica,
    and an idle one stops counting."""
    await Redis.from_url(redis_server).flushdb()
    now = [1_000_000.0]
    stores = [RedisPlacements(redis_server, ttl_s=60, clock=lambda: now[0]) for _ in range(2)]
    async for replicas, backends in replica_set(2):
        routers = [Balancer(replicas, remembering(replicas, store)) for store in stores]
        for i in range(8):  # one at a time: nothing in flight to place by
            await drain(routers[i % 2].generate(turn(f"s{i}", 0)))
        assert [len(b.calls) for b in backends] == [4, 4]
        addresses = [r.address for r in replicas.replicas]
        assert await stores[1].held("silver", addresses, 30) == dict.fromkeys(addresses, 4)
        moved = backends[0].calls[0].session_id
        await stores[0].put("silver", affinity_key(turn(moved, 0), LEADING), addresses[1])
        assert await stores[1].held("silver", addresses, 30) == {addresses[0]: 3, addresses[1]: 5}
        now[0] += 20
        for i in range(2):  # two conversations take a turn; the others are idle
            await drain(routers[1].generate(turn(f"s{i}", 1)))
        now[0] += 20
        held = await stores[0].held("silver", addresses, 30)
        assert sum(held.values()) == 2
        # The active sets expire with the placements they count (and an emptied one is gone).
        redis = Redis.from_url(redis_server)
        ttls = [await redis.pttl(f"tiermesh:placement-active:silver:{a}") for a in addresses]
        assert all(0 < ttl <= 60_000 or ttl == -2 for ttl in ttls)
        assert any(ttl > 0 for ttl in ttls)
    for store in stores:
        await store.close()
