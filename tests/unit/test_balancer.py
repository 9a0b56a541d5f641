from __future__ import annotations

import contextlib
import dataclasses
import random
from collections import Counter
from collections.abc import AsyncIterator

import pytest

from router.policies.balancer import Balancer, PowerOfTwoChoices, RoundRobin, picker
from router.replicas import ReplicaSet, resolve
from router.settings import AffinitySettings, BreakerSettings, TierSettings
from tests.fakes import FakeBackend, Step, a_call, drain, unavailable
from tiermesh.errors import StatusError

ADDRESSES = ["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"]


async def replica_set(
    *backends: FakeBackend, expected_ttft_s: float = 0.2, breaker: BreakerSettings | None = None
) -> AsyncIterator[ReplicaSet]:
    settings = TierSettings(
        endpoints=ADDRESSES[: len(backends)], health_check=False, expected_ttft_s=expected_ttft_s
    )
    replicas = ReplicaSet("silver", settings, breaker or BreakerSettings())
    await replicas.start()
    for replica, backend in zip(replicas.replicas, backends, strict=True):
        await replica.backend.close()
        replica.backend = backend  # type: ignore[assignment]
    yield replicas
    await replicas.close()


@pytest.fixture
async def three() -> AsyncIterator[tuple[ReplicaSet, list[FakeBackend]]]:
    backends = [FakeBackend(), FakeBackend(), FakeBackend()]
    async for replicas in replica_set(*backends):
        yield replicas, backends


async def test_round_robin_visits_every_replica_in_turn(three: tuple[ReplicaSet, list[FakeBackend]]) -> None:
    replicas, backends = three
    balancer = Balancer(replicas, RoundRobin())
    for _ in range(6):
        await drain(balancer.generate(a_call()))
    assert [len(b.calls) for b in backends] == [2, 2, 2]


async def test_p2c_prefers_low_latency_and_few_outstanding(
    three: tuple[ReplicaSet, list[FakeBackend]],
) -> None:
    replicas, _ = three
    slow, busy, good = replicas.replicas
    slow.latency.observe(1.0)
    busy.outstanding = 20
    picks = Counter(
        PowerOfTwoChoices(random.Random(1)).pick(a_call(), replicas.replicas).address for _ in range(300)
    )
    assert picks[good.address] > 190  # wins every pair it is in (2/3 of pairs)
    assert picks[slow.address] + picks[busy.address] < 110


async def test_calls_avoid_replicas_they_already_tried(three: tuple[ReplicaSet, list[FakeBackend]]) -> None:
    replicas, backends = three
    balancer = Balancer(replicas, RoundRobin())
    call = a_call()
    for _ in range(3):
        await drain(balancer.generate(call))
    assert [len(b.calls) for b in backends] == [1, 1, 1]
    assert call.tried == set(ADDRESSES)


async def test_consecutive_failures_eject_a_replica() -> None:
    broken, healthy = FakeBackend(Step(fail_before=unavailable())), FakeBackend()
    async for replicas in replica_set(broken, healthy, breaker=BreakerSettings(failures_to_open=2)):
        balancer = Balancer(replicas, RoundRobin())
        for _ in range(10):
            with contextlib.suppress(StatusError):
                await drain(balancer.generate(a_call()))
        assert len(broken.calls) == 2  # then ejected: everything goes to the healthy one
        assert len(healthy.calls) == 8
        assert replicas.replicas[0].breaker.state == "open"


async def test_a_replica_far_slower_than_its_peers_is_ejected() -> None:
    slow = FakeBackend(Step(first_delay=0.06))
    fast_a, fast_b = FakeBackend(), FakeBackend()
    settings = BreakerSettings(outlier_min_samples=2, outlier_floor_s=0.02, outlier_factor=3)
    async for replicas in replica_set(slow, fast_a, fast_b, expected_ttft_s=0.001, breaker=settings):
        balancer = Balancer(replicas, RoundRobin())
        for _ in range(9):
            await drain(balancer.generate(a_call()))
        assert replicas.replicas[0].breaker.state == "open"
        assert replicas.replicas[1].breaker.state == "closed"


@pytest.mark.parametrize("eject", [False, True])
async def test_prefix_affinity_ejects_latency_outliers_only_when_told(eject: bool) -> None:
    # Under prefix affinity a replica's first tokens are as slow as its conversations'
    # uncached prefixes, not as it is; ejecting it sent its conversations' turns cold to
    # the others (bench.affinity). So by default it is judged by failures and health only.
    slow = FakeBackend(Step(first_delay=0.06))
    backends = (slow, FakeBackend(), FakeBackend())
    settings = BreakerSettings(outlier_min_samples=2, outlier_floor_s=0.02, outlier_factor=3)
    async for replicas in replica_set(*backends, expected_ttft_s=0.001, breaker=settings):
        known = replicas.replicas
        affine = picker("prefix_affine", replicas, AffinitySettings(eject_latency_outliers=eject))
        balancer = Balancer(replicas, affine)
        for i in range(30):  # conversations on every replica, a turn each, one at a time
            await drain(balancer.generate(a_call(session_id=f"s{i}", npc_id="guard-1")))
        assert len(slow.calls) >= settings.outlier_min_samples  # enough first tokens to judge
        assert known[0].breaker.state == ("open" if eject else "closed")
        assert known[1].breaker.state == "closed"


async def test_the_survivor_of_a_dead_replica_is_not_ejected_for_taking_its_load() -> None:
    # bench.affinity killed one of two Silver replicas: the survivor, slower with all the
    # load, was compared with the dead one's old latency and ejected; 28 of 128 turns
    # then failed with "no available silver replica".
    survivor, dead = FakeBackend(Step(first_delay=0.06)), FakeBackend()
    settings = BreakerSettings(outlier_min_samples=2, outlier_floor_s=0.02, outlier_factor=3)
    async for replicas in replica_set(survivor, dead, expected_ttft_s=0.001, breaker=settings):
        replicas.replicas[1].latency.observe(0.001)  # fast while it lived
        replicas.replicas[1].serving = False  # then its health stream broke
        balancer = Balancer(replicas, RoundRobin())
        for _ in range(6):
            await drain(balancer.generate(a_call()))
        assert replicas.replicas[0].breaker.state == "closed"
        assert len(survivor.calls) == 6


async def test_outliers_never_take_out_more_than_the_allowed_share() -> None:
    # Two replicas, the first on trial after an ejection (half-open): the second, slow
    # because it took the first one's load, is not ejected too.
    slow = FakeBackend(Step(first_delay=0.06))
    settings = BreakerSettings(outlier_min_samples=2, outlier_floor_s=0.02, outlier_factor=3)
    async for replicas in replica_set(FakeBackend(), slow, expected_ttft_s=0.001, breaker=settings):
        on_trial, loaded = replicas.replicas
        on_trial.latency.observe(0.001)
        on_trial.breaker._open_until = 0.0  # ejected long ago: half-open now
        assert on_trial.breaker.state == "half_open"
        balancer = Balancer(replicas, PowerOfTwoChoices(random.Random(3)))
        for _ in range(4):
            await drain(balancer.generate(dataclasses.replace(a_call(), tried={on_trial.address})))
        assert loaded.breaker.state == "closed"


async def test_when_breakers_took_out_every_serving_replica_they_are_still_tried() -> None:
    async for replicas in replica_set(FakeBackend(), FakeBackend()):
        for replica in replicas.replicas:
            replica.breaker.eject()  # both ejected, both SERVING by their health checks
        out = await drain(Balancer(replicas, RoundRobin()).generate(a_call()))
        assert out  # answered, not UNAVAILABLE
        replicas.replicas[0].serving = replicas.replicas[1].serving = False
        with pytest.raises(StatusError, match="no available silver replica"):
            await drain(Balancer(replicas, RoundRobin()).generate(a_call()))


async def test_no_replica_available_is_unavailable() -> None:
    async for replicas in replica_set(FakeBackend()):
        replicas.replicas[0].serving = False  # health said NOT_SERVING
        with pytest.raises(StatusError, match="no available silver replica"):
            await drain(Balancer(replicas, RoundRobin()).generate(a_call()))


async def test_dns_endpoints_resolve_to_every_address() -> None:
    assert await resolve(["dns:///localhost:7001", "10.0.0.1:7002"]) in (
        ["127.0.0.1:7001", "10.0.0.1:7002"],
        ["[::1]:7001", "127.0.0.1:7001", "10.0.0.1:7002"],
        ["127.0.0.1:7001", "[::1]:7001", "10.0.0.1:7002"],
    )
