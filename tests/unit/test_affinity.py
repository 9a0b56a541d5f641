"""Prefix-affine balancing (router/affinity.py, balancer.PrefixAffine): keys agree across
router processes, a conversation stays on one replica, load stays bounded, and a
replica's departure moves only its own keys, which come back when it does."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterable

import pytest

from router.affinity import HashRing, affinity_key, bounded_owner, capacity
from router.call import Call
from router.policies import balancer
from router.policies.balancer import Balancer, PrefixAffine, Recalling, RememberedPrefixAffine
from router.replicas import ReplicaSet
from router.settings import AffinitySettings, BreakerSettings, TierSettings
from router.state.placement import MemoryPlacements, Placements
from tests.fakes import FakeBackend, a_call, drain
from tests.router.test_faults import metric

ADDRESSES = [f"10.0.0.{i}:50061" for i in range(1, 5)]
LEADING = AffinitySettings().leading_tokens


def turn(session: str, n: int, npc: str = "guard-1") -> Call:
    return a_call(session_id=session, npc_id=npc, prompt=f"turn {n} of {session}")


async def replica_set(n: int) -> AsyncIterator[tuple[ReplicaSet, list[FakeBackend]]]:
    settings = TierSettings(endpoints=ADDRESSES[:n], health_check=False)
    replicas = ReplicaSet("silver", settings, BreakerSettings())
    await replicas.start()
    backends = [FakeBackend() for _ in range(n)]
    for replica, backend in zip(replicas.replicas, backends, strict=True):
        await replica.backend.close()
        replica.backend = backend  # type: ignore[assignment]
    yield replicas, backends
    await replicas.close()


@pytest.fixture
async def four() -> AsyncIterator[tuple[ReplicaSet, list[FakeBackend]]]:
    async for pair in replica_set(4):
        yield pair


def affine(replicas: ReplicaSet, load_factor: float = 1.25) -> Balancer:
    settings = AffinitySettings(load_factor=load_factor)
    return Balancer(replicas, PrefixAffine(settings, lambda: replicas.replicas))


def owners(keys: list[bytes], members: list[str]) -> list[str]:
    ring = HashRing(members)
    return [bounded_owner(ring, key, dict.fromkeys(members, 0), 1.25) for key in keys]


def test_every_router_process_maps_a_key_to_the_same_replica() -> None:
    # Another interpreter, another hash seed, the replicas listed in another order: the
    # same owners (Python's own hash() would differ).
    keys = [f"session-{i}".encode() for i in range(200)]
    here = owners(keys, ADDRESSES)
    script = (
        "import json, sys; from tests.unit.test_affinity import owners, ADDRESSES; "
        "keys = [f'session-{i}'.encode() for i in range(200)]; "
        "print(json.dumps(owners(keys, list(reversed(ADDRESSES)))))"
    )
    env = os.environ | {"PYTHONHASHSEED": "12345"}
    there = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    assert json.loads(there.stdout) == here
    assert len(set(here)) == 4  # and the keys spread over every replica
    assert min(Counter(here).values()) > 200 / 4 / 2


def test_the_key_is_the_session_else_the_prompts_leading_blocks() -> None:
    assert affinity_key(turn("s1", 1), LEADING) == affinity_key(turn("s1", 9), LEADING)
    other_npc = dataclasses.replace(turn("s1", 1), npc_id="merchant-1")
    assert affinity_key(turn("s1", 1), LEADING) != affinity_key(other_npc, LEADING)
    # A blank session id says nothing (the edge refuses one; a Call made inside the
    # router may still carry it): the prompt decides, and one that differs only past
    # the leading blocks shares them.
    blank = dataclasses.replace(a_call(prompt="x" * 300 + "one ending"), session_id="   ")
    assert affinity_key(blank, LEADING) == affinity_key(a_call(prompt="x" * 300 + "another"), LEADING)
    assert affinity_key(blank, LEADING) != affinity_key(a_call(prompt="y" * 300), LEADING)


async def test_a_conversations_turns_reach_the_same_replica(
    four: tuple[ReplicaSet, list[FakeBackend]],
) -> None:
    replicas, backends = four
    balancer = affine(replicas)
    for n in range(5):
        for session in range(12):
            await drain(balancer.generate(turn(f"s{session}", n)))
    placed = {
        call.session_id: i for i, backend in enumerate(backends) for call in backend.calls
    }  # the last replica each session was seen on
    for i, backend in enumerate(backends):
        for call in backend.calls:
            assert placed[call.session_id] == i, f"{call.session_id} moved"
    assert sum(1 for b in backends if b.calls) >= 3  # conversations spread out


async def test_load_is_bounded_by_the_factor_times_the_mean(
    four: tuple[ReplicaSet, list[FakeBackend]],
) -> None:
    replicas, _ = four
    picker = PrefixAffine(AffinitySettings(load_factor=1.25), lambda: replicas.replicas)
    hot = turn("the-popular-one", 0)
    for _ in range(40):  # 40 calls of one key, none finishing
        bound = capacity({r.address: r.outstanding for r in replicas.replicas}, 1.25)
        chosen = picker.pick(hot, replicas.replicas)
        chosen.outstanding += 1
        assert chosen.outstanding <= bound
    loads = sorted(r.outstanding for r in replicas.replicas)
    assert loads[-1] <= -(-1.25 * 40 // 4)  # ⌈1.25 × mean⌉ = 13, not 40 on one
    assert loads[0] >= 1


async def test_a_lost_replica_moves_only_its_keys_and_gets_them_back(
    four: tuple[ReplicaSet, list[FakeBackend]],
) -> None:
    replicas, _ = four
    picker = PrefixAffine(AffinitySettings(), lambda: replicas.replicas)
    calls = [turn(f"s{i}", 0) for i in range(200)]
    before = [picker.pick(call, replicas.replicas).address for call in calls]
    lost = replicas.replicas[1]
    lost.breaker.eject()  # ejected (or unhealthy): no longer a candidate
    up = [r for r in replicas.replicas if r.available]
    during = [picker.pick(call, up).address for call in calls]
    assert lost.address not in during
    moved = [i for i in range(200) if before[i] != during[i]]
    assert moved  # its keys went elsewhere
    assert all(before[i] == lost.address for i in moved)  # and only its keys
    after = [picker.pick(call, replicas.replicas).address for call in calls]
    assert after == before  # back when it is


async def test_a_replica_that_leaves_discovery_moves_only_its_keys(
    four: tuple[ReplicaSet, list[FakeBackend]],
) -> None:
    replicas, _ = four
    known = list(replicas.replicas)
    picker = PrefixAffine(AffinitySettings(), lambda: known)
    calls = [turn(f"s{i}", 0) for i in range(200)]
    before = [picker.pick(call, known).address for call in calls]
    gone = known.pop(2)  # DNS no longer lists it: the ring is rebuilt without it
    during = [picker.pick(call, known).address for call in calls]
    assert all(d == b for b, d in zip(before, during, strict=True) if b != gone.address)
    known.insert(2, gone)  # a new pod at the old address
    assert [picker.pick(call, known).address for call in calls] == before


async def test_a_retry_or_hedge_goes_to_the_next_replica_on_the_ring(
    four: tuple[ReplicaSet, list[FakeBackend]],
) -> None:
    replicas, _ = four
    balancer = affine(replicas)
    call = turn("s1", 0)
    ring = HashRing(ADDRESSES)
    walk = list(ring.walk(affinity_key(call, LEADING)))
    for expected in walk:
        await drain(balancer.generate(call))  # the same call again: a retry, a hedge
        assert expected in call.tried
    assert call.tried == set(ADDRESSES)


async def test_one_replica_behaves_as_today() -> None:
    async for replicas, backends in replica_set(1):
        balancer = affine(replicas)
        for i in range(3):
            await drain(balancer.generate(dataclasses.replace(turn(f"s{i}", 0), session_id="")))
        assert len(backends[0].calls) == 3


def placement_counts() -> dict[str, float]:
    """tiermesh_router_placements_total for silver, by outcome."""
    return {
        outcome: metric("tiermesh_router_placements_total", tier="silver", outcome=outcome)
        for outcome in ("placed", "kept", "moved")
    }


def ring_owner(replicas: ReplicaSet, call: Call) -> str:
    return PrefixAffine(AffinitySettings(), lambda: replicas.replicas).pick(call, replicas.replicas).address


class DownStore:
    """A placement store that cannot answer (Redis unreachable)."""

    async def get(self, tier: str, key: bytes) -> str | None:
        raise OSError("connection refused")

    async def put(self, tier: str, key: bytes, address: str) -> None:
        raise OSError("connection refused")

    async def held(self, tier: str, addresses: Iterable[str], idle_s: float) -> dict[str, int]:
        raise OSError("connection refused")

    async def close(self) -> None:
        """Nothing to close."""


def remembering(replicas: ReplicaSet, store: Placements, load_factor: float = 1.25) -> RememberedPrefixAffine:
    settings = AffinitySettings(load_factor=load_factor)
    return RememberedPrefixAffine(settings, lambda: replicas.replicas, "silver", store)


async def test_remembered_conversations_are_placed_by_load_and_stay() -> None:
    async for replicas, backends in replica_set(2):
        # Two routers sharing one store, as two router replicas share Redis.
        store = MemoryPlacements(ttl_s=3600)
        routers = [Balancer(replicas, remembering(replicas, store)) for _ in range(2)]
        # Eight conversations begin at once: each first turn is in flight when the next
        # is placed (on the ring alone, few keys can land seven to one).
        opened = [routers[0].generate(turn(f"s{i}", 0)) for i in range(8)]
        for stream in opened:
            await anext(stream)
        assert [len(b.calls) for b in backends] == [4, 4]
        for stream in opened:
            await drain(stream)
        first = {call.session_id: i for i, b in enumerate(backends) for call in b.calls}
        for n in range(1, 4):  # later turns, one at a time, alternating routers
            for i in range(8):
                await drain(routers[(n + i) % 2].generate(turn(f"s{i}", n)))
        for i, backend in enumerate(backends):
            assert all(first[call.session_id] == i for call in backend.calls), "a conversation moved"


async def test_conversations_begun_at_a_players_pace_are_placed_by_those_held() -> None:
    """Between turns nothing is in flight anywhere: placement by calls in flight alone
    falls to ring order, a coin toss per conversation. Counted by the conversations each
    replica holds (shared by both routers through the store), they split evenly."""
    async for replicas, backends in replica_set(2):
        store = MemoryPlacements(ttl_s=3600)
        routers = [Balancer(replicas, remembering(replicas, store)) for _ in range(2)]
        sessions = [f"s{i}" for i in range(12)]
        # What the ring alone makes of these twelve: uneven, as few keys are.
        ring = Counter(ring_owner(replicas, turn(s, 0)) for s in sessions)
        assert max(ring.values()) > 6, ring
        for i, session in enumerate(sessions):  # one at a time, alternating routers
            await drain(routers[i % 2].generate(turn(session, 0)))
        assert [len(b.calls) for b in backends] == [6, 6]
        assert await store.held("silver", [r.address for r in replicas.replicas], 60) == dict.fromkeys(
            [r.address for r in replicas.replicas], 6
        )


async def test_a_remembered_replica_over_the_bound_passes_the_conversation_on() -> None:
    before = placement_counts()
    async for replicas, _ in replica_set(3):
        picker = remembering(replicas, MemoryPlacements(ttl_s=3600))
        placed = await picker.recall(turn("s1", 0), replicas.replicas)
        assert placed is not None
        # Busier than the others, within move_factor (2) × the mean: ⌈2 × 2/3⌉ = 2. The
        # ring's bound (1.25: ⌈1.25 × 2/3⌉ = 1) would have moved it.
        placed.outstanding = 1
        assert await picker.recall(turn("s1", 1), replicas.replicas) is placed
        placed.outstanding = 5  # it fills up with other calls: ⌈2 × 6/3⌉ = 4
        moved = await picker.recall(turn("s1", 2), replicas.replicas)
        assert moved is not None
        assert moved is not placed
        placed.outstanding = 0
        # It stays where it moved: its prefix is cached there now.
        assert await picker.recall(turn("s1", 3), replicas.replicas) is moved
        # Each turn counted by outcome, as operators see it.
        after = placement_counts()
        assert {o: after[o] - before[o] for o in after} == {"placed": 1, "kept": 2, "moved": 1}


async def test_without_a_store_answer_or_on_a_retry_the_ring_decides() -> None:
    async for replicas, _ in replica_set(2):
        call = turn("s1", 0)
        assert await remembering(replicas, DownStore()).recall(call, replicas.replicas) is None
        store = MemoryPlacements(ttl_s=3600)
        picker = remembering(replicas, store)
        assert await picker.recall(a_call(prompt="no session"), replicas.replicas) is None
        placed = await picker.recall(call, replicas.replicas)
        assert placed is not None
        retry = turn("s1", 0)
        retry.tried.add(placed.address)
        assert await picker.recall(retry, replicas.replicas) is None  # the ring's next
        # Through the balancer, a store that is down costs the call nothing: the ring's
        # owner answers it.
        balancer = Balancer(replicas, remembering(replicas, DownStore()))
        later = turn("s1", 1)
        await drain(balancer.generate(later))
        assert later.tried == {ring_owner(replicas, later)}


async def test_memory_placements_expire_and_stay_bounded() -> None:
    now = [0.0]
    store = MemoryPlacements(ttl_s=10, max_entries=3, clock=lambda: now[0])
    for i in range(5):
        await store.put("silver", f"k{i}".encode(), f"r{i}")
    assert [await store.get("silver", f"k{i}".encode()) for i in range(5)] == [None, None, "r2", "r3", "r4"]
    assert await store.get("gold", b"k4") is None  # per tier
    now[0] = 10.0
    assert await store.get("silver", b"k4") is None


async def test_memory_placements_count_the_conversations_active_on_each_replica() -> None:
    now = [0.0]
    store = MemoryPlacements(ttl_s=3600, max_entries=4, clock=lambda: now[0])
    for i in range(3):
        await store.put("silver", f"k{i}".encode(), "a")
    await store.put("silver", b"k3", "b")
    assert await store.held("silver", ["a", "b", "c"], idle_s=30) == {"a": 3, "b": 1, "c": 0}
    assert await store.held("gold", ["a"], idle_s=30) == {"a": 0}  # per tier
    await store.put("silver", b"k0", "b")  # moved: it leaves a's count
    assert await store.held("silver", ["a", "b"], idle_s=30) == {"a": 2, "b": 2}
    now[0] = 20.0
    assert await store.get("silver", b"k1") == "a"  # a turn: k1 is active again
    now[0] = 40.0
    # Idle for more than 30 s, k0, k2 and k3 hold no player now; k1 had a turn at 20 s.
    assert await store.held("silver", ["a", "b"], idle_s=30) == {"a": 1, "b": 0}
    assert await store.get("silver", b"k2") == "a"  # it comes back, and counts again
    assert await store.held("silver", ["a", "b"], idle_s=30) == {"a": 2, "b": 0}
    # A placement forgotten for room (max_entries) is not counted either.
    await store.put("silver", b"k4", "b")
    await store.put("silver", b"k5", "b")
    await store.put("silver", b"k6", "b")
    assert await store.held("silver", ["a", "b"], idle_s=30) == {"a": 1, "b": 3}


async def test_only_a_remembering_picker_is_asked_to_recall() -> None:
    """With `remember` off (or no store) the ring alone decides: the balancer has nothing
    to await before it picks."""
    async for replicas, _ in replica_set(2):
        store = MemoryPlacements(ttl_s=3600)
        ring = balancer.picker("prefix_affine", replicas, AffinitySettings(remember=False), store)
        assert not isinstance(ring, Recalling)
        assert not isinstance(balancer.picker("prefix_affine", replicas, AffinitySettings(), None), Recalling)
        kept = balancer.picker("prefix_affine", replicas, AffinitySettings(remember=True), store)
        assert isinstance(kept, Recalling)
