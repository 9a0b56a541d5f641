"""Traffic classes and tenants: the fair queue's order (class, tokens, aging, usage
correction), the stream limit's headroom and displacement, priorities at the edge, and
token quotas (router/scheduling.py, router/policies/limit.py, router/policies/quota.py,
router/state/quota.py)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from collections.abc import AsyncIterator

import grpc
import pytest

from router.call import Call
from router.policies.limit import StreamLimit
from router.policies.quota import TokenQuota
from router.scheduling import FairQueue, Waiter
from router.settings import TenantSettings, TrafficSettings
from router.state.quota import Limits, MemoryQuota
from tests.fakes import SETTINGS, FakeBackend, FakeClock, Step, a_call, drain, request
from tiermesh.errors import StatusError
from tiermesh.v1 import mesh_pb2

# --- the fair queue ------------------------------------------------------------------


def waiter(tenant: str, band: int, cost: float = 100, since: float = 1000.0) -> Waiter:
    """In a test's running loop: the policy's loop is not one to count on (a test before
    may have run `asyncio.run`, which leaves the main thread without one)."""
    granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    return Waiter(tenant, band, cost, since, since + 60, granted)


def fair_queue(clock: FakeClock, weights: dict[str, float] | None = None, aging_s: float = 1e9) -> FairQueue:
    return FairQueue(3, aging_s, 256, lambda tenant: (weights or {}).get(tenant, 1.0), clock)


def anything(band: int) -> bool:
    return True


async def test_higher_classes_are_served_first_and_fifo_within_a_tenant() -> None:
    queue = fair_queue(FakeClock())
    order = [waiter("a", 2), waiter("a", 1), waiter("a", 0), waiter("a", 1)]
    for w in order:
        queue.push(w)
    served = [queue.pop(anything) for _ in order]
    assert served == [order[2], order[1], order[3], order[0]]
    assert queue.pop(anything) is None


async def test_tenants_in_a_class_share_by_tokens_not_by_calls() -> None:
    # A sends 1000-token long-forms, B 50-token intents, both always backlogged.
    queue = fair_queue(FakeClock())
    for _ in range(40):
        queue.push(waiter("a", 1, cost=1000))
    for _ in range(400):
        queue.push(waiter("b", 1, cost=50))
    tokens: dict[str, float] = {"a": 0.0, "b": 0.0}
    for _ in range(200):
        served = queue.pop(anything)
        assert served is not None
        tokens[served.tenant] += served.cost
    assert tokens["a"] / tokens["b"] == pytest.approx(1.0, rel=0.1)


async def test_a_tenants_weight_is_its_share() -> None:
    queue = fair_queue(FakeClock(), weights={"a": 3.0})
    for _ in range(300):
        queue.push(waiter("a", 1))
        queue.push(waiter("b", 1))
    served = Counter(w.tenant for w in (queue.pop(anything) for _ in range(200)) if w is not None)
    assert served["a"] / served["b"] == pytest.approx(3.0, rel=0.1)


async def test_answers_longer_than_estimated_cost_their_tenant_later_turns() -> None:
    queue = fair_queue(FakeClock())
    for _ in range(100):
        queue.push(waiter("a", 1, cost=100))
        queue.push(waiter("b", 1, cost=100))
    tokens: dict[str, float] = {"a": 0.0, "b": 0.0}
    for _ in range(100):
        served = queue.pop(anything)
        assert served is not None
        # A's answers really use 4× the estimate; B's what was estimated.
        used = 400 if served.tenant == "a" else 100
        queue.charge(served, used)
        tokens[served.tenant] += used
    assert tokens["a"] / tokens["b"] == pytest.approx(1.0, rel=0.15)


async def test_a_waiter_that_waited_long_is_served_as_a_higher_class() -> None:
    clock = FakeClock()
    queue = fair_queue(clock, aging_s=2.0)
    old = waiter("a", 2, since=clock.now)
    queue.push(old)
    clock.advance(2.5)  # one class up: standard
    newer = waiter("b", 1, since=clock.now)
    fresh = waiter("c", 2, since=clock.now)
    queue.push(newer)
    queue.push(fresh)
    assert {queue.pop(anything), queue.pop(anything)} == {old, newer}  # both standard now
    assert queue.pop(anything) is fresh
    # Again after twice as long: a sheddable call reaches the top class.
    oldest = waiter("a", 2, since=clock.now)
    queue.push(oldest)
    critical = waiter("c", 0, since=clock.now)
    clock.advance(4.1)
    queue.push(critical)
    assert {queue.pop(anything), queue.pop(anything)} == {oldest, critical}


async def test_a_class_that_may_not_take_the_slot_waits() -> None:
    queue = fair_queue(FakeClock())
    queue.push(waiter("a", 2))
    assert queue.pop(lambda band: band < 2) is None
    assert len(queue) == 1


async def test_an_idle_tenant_banks_no_credit_but_keeps_its_debt() -> None:
    queue = fair_queue(FakeClock())
    first = waiter("a", 1, cost=10)
    queue.push(first)
    assert queue.pop(anything) is first  # took its quantum (256), used 10
    queue.charge(first, 1010)  # the answer really used 1000 more
    for _ in range(5):
        queue.push(waiter("a", 1, cost=10))
        queue.push(waiter("b", 1, cost=10))
    served = [w.tenant for w in (queue.pop(anything) for _ in range(4)) if w is not None]
    assert served == ["b", "b", "b", "b"]  # a pays off its debt first


# --- the stream limit: headroom, displacement, never after the first token ---------


def classed(priority: str, deadline_s: float = 5.0, client: str = "anonymous") -> Call:
    value = {"critical": 1, "standard": 2, "sheddable": 3}[priority]
    call = a_call(deadline_s=deadline_s, priority=value)
    return dataclasses.replace(call, client_id=client)


async def test_lower_classes_leave_headroom_for_a_critical_call() -> None:
    traffic = TrafficSettings(headroom={"critical": 0.0, "standard": 0.0, "sheddable": 0.5})
    inner = FakeBackend(Step(tokens=["x"], first_delay=0.2))
    limit = StreamLimit(inner, "silver", max_streams=4, expected_s=0.2, traffic=traffic)
    running = [asyncio.ensure_future(drain(limit.generate(classed("sheddable")))) for _ in range(3)]
    await asyncio.sleep(0.01)
    assert len(inner.calls) == 2  # sheddable calls may fill only half
    critical = asyncio.ensure_future(drain(limit.generate(classed("critical"))))
    await asyncio.sleep(0.01)
    assert len(inner.calls) == 3
    assert inner.calls[-1].priority == "critical"
    await asyncio.gather(*running, critical)


def reserving(share: float) -> TrafficSettings:
    """Tenant "quiet" has `share` of each tier's slots; "flood" has none. No headroom:
    these tests are about tenants, not classes."""
    return TrafficSettings(
        headroom={"critical": 0.0, "standard": 0.0, "sheddable": 0.0},
        tenants={"quiet": TenantSettings(reserved_share=share), "flood": TenantSettings()},
    )


def calls_of(
    limit: StreamLimit, client: str, count: int, priority: str = "standard"
) -> list[asyncio.Future[list[mesh_pb2.GenerateResponse]]]:
    return [
        asyncio.ensure_future(drain(limit.generate(classed(priority, client=client)))) for _ in range(count)
    ]


async def test_a_flood_never_takes_another_tenants_reserved_slots() -> None:
    inner = FakeBackend(Step(tokens=["x"], first_delay=0.2))
    limit = StreamLimit(inner, "silver", max_streams=4, expected_s=0.2, traffic=reserving(0.5))
    flood = calls_of(limit, "flood", 6)
    await asyncio.sleep(0.01)
    assert len(inner.calls) == 2  # two of four slots are the quiet tenant's
    # The quiet tenant's burst starts at once, past the flood's four waiting calls.
    quiet = calls_of(limit, "quiet", 2)
    await asyncio.sleep(0.01)
    assert [call.client_id for call in inner.calls] == ["flood", "flood", "quiet", "quiet"]
    assert limit.wait_estimate(classed("standard", client="quiet")) > 0  # its two are in use
    await asyncio.gather(*flood, *quiet)


async def test_reserved_slots_unused_stay_idle_and_the_tenant_may_take_free_ones_beyond() -> None:
    inner = FakeBackend(Step(tokens=["x"], first_delay=0.2))
    limit = StreamLimit(inner, "silver", max_streams=4, expected_s=0.2, traffic=reserving(0.25))
    quiet = calls_of(limit, "quiet", 3)
    await asyncio.sleep(0.01)
    assert len(inner.calls) == 3  # beyond its one reserved slot, the free ones
    flood = calls_of(limit, "flood", 2)
    await asyncio.sleep(0.01)
    assert len(inner.calls) == 4
    await asyncio.gather(*quiet, *flood)
    # Once the quiet tenant is done, the flood still leaves its reservation idle.
    inner.calls.clear()
    flood = calls_of(limit, "flood", 4)
    await asyncio.sleep(0.01)
    assert len(inner.calls) == 3
    await asyncio.gather(*flood)


async def test_a_freed_slot_goes_to_the_tenant_whose_reservation_it_is() -> None:
    """A waiting flood call is passed over for a slot the quiet tenant is owed, even in
    a higher class; a slot the reservation does not cover goes by class as before."""
    inner = FakeBackend(Step(tokens=["x"], first_delay=0.1))
    limit = StreamLimit(inner, "silver", max_streams=2, expected_s=0.1, traffic=reserving(0.5))
    first = calls_of(limit, "quiet", 1)
    await asyncio.sleep(0.03)
    second = calls_of(limit, "quiet", 1)
    await asyncio.sleep(0.01)
    critical = calls_of(limit, "flood", 2, "critical")
    await asyncio.sleep(0.01)
    quiet = calls_of(limit, "quiet", 1, "sheddable")
    await asyncio.gather(*first, *second, *critical, *quiet)
    # The first slot freed is beyond the quiet tenant's reservation: the critical call
    # takes it. The second is its reserved one: its sheddable call, past the critical.
    assert [call.client_id for call in inner.calls[2:]] == ["flood", "quiet", "flood"]


async def test_a_reservation_is_the_tenants_whatever_its_classs_headroom() -> None:
    """Headroom keeps a slot for critical calls out of what is shared, not out of a
    tenant's reservation."""
    traffic = TrafficSettings(tenants={"quiet": TenantSettings(reserved_share=0.5)})  # standard: 3 of 4
    inner = FakeBackend(Step(tokens=["x"], first_delay=0.2))
    limit = StreamLimit(inner, "silver", max_streams=4, expected_s=0.2, traffic=traffic)
    flood = calls_of(limit, "flood", 3)
    await asyncio.sleep(0.01)
    quiet = calls_of(limit, "quiet", 2)
    await asyncio.sleep(0.01)
    assert [call.client_id for call in inner.calls] == ["flood", "flood", "quiet", "quiet"]
    await asyncio.gather(*flood, *quiet)


def test_reservations_are_for_named_tenants_and_fit_in_the_slots() -> None:
    with pytest.raises(ValueError, match="more than every slot"):
        TrafficSettings(
            tenants={"a": TenantSettings(reserved_share=0.6), "b": TenantSettings(reserved_share=0.6)}
        )
    with pytest.raises(ValueError, match="named tenants only"):
        TrafficSettings(default_tenant=TenantSettings(reserved_share=0.1))


async def test_a_higher_class_displaces_a_waiting_one_but_never_a_started_stream() -> None:
    traffic = TrafficSettings(queue_per_slot=1.0)
    inner = FakeBackend(Step(tokens=["x", "y"], first_delay=0.05, token_delay=0.2))
    limit = StreamLimit(inner, "silver", max_streams=1, expected_s=0.1, traffic=traffic)
    started = asyncio.ensure_future(drain(limit.generate(classed("sheddable"))))
    await asyncio.sleep(0.1)  # its first token is out
    waiting = asyncio.ensure_future(drain(limit.generate(classed("sheddable"))))
    await asyncio.sleep(0.01)
    critical = asyncio.ensure_future(drain(limit.generate(classed("critical"))))
    with pytest.raises(StatusError) as caught:
        await waiting
    assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "higher class" in caught.value.message
    assert caught.value.retry_after_s
    assert [r.text for r in await started] == ["x", "y"]  # the started stream finished whole
    assert [r.text for r in await critical] == ["x", "y"]


async def test_the_queue_serves_critical_before_earlier_standard_and_sheddable() -> None:
    inner = FakeBackend(Step(tokens=["x"], first_delay=0.05))
    limit = StreamLimit(inner, "silver", max_streams=1, expected_s=0.05)
    busy = asyncio.ensure_future(drain(limit.generate(classed("critical"))))
    await asyncio.sleep(0.01)
    order = ["sheddable", "standard", "critical"]
    queued = []
    for priority in order:
        queued.append(asyncio.ensure_future(drain(limit.generate(classed(priority)))))
        await asyncio.sleep(0.001)
    await asyncio.gather(busy, *queued)
    assert [c.priority for c in inner.calls[1:]] == ["critical", "standard", "sheddable"]


async def test_a_full_queue_of_critical_calls_refuses_the_next_critical_one() -> None:
    traffic = TrafficSettings(queue_per_slot=1.0)
    inner = FakeBackend(Step(tokens=["x"], first_delay=0.1))
    limit = StreamLimit(inner, "silver", max_streams=1, expected_s=0.1, traffic=traffic)
    calls = [asyncio.ensure_future(drain(limit.generate(classed("critical")))) for _ in range(2)]
    await asyncio.sleep(0.01)
    with pytest.raises(StatusError) as caught:
        await drain(limit.generate(classed("critical")))
    assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "calls wait" in caught.value.message
    await asyncio.gather(*calls)


async def test_with_classes_off_the_queue_is_first_come_first_served() -> None:
    inner = FakeBackend(Step(tokens=["x"], first_delay=0.05))
    limit = StreamLimit(inner, "silver", 1, 0.05, TrafficSettings(classes=False))
    busy = asyncio.ensure_future(drain(limit.generate(classed("standard"))))
    await asyncio.sleep(0.01)
    queued = []
    for priority in ["sheddable", "standard", "critical"]:
        queued.append(asyncio.ensure_future(drain(limit.generate(classed(priority)))))
        await asyncio.sleep(0.001)
    await asyncio.gather(busy, *queued)
    assert [c.priority for c in inner.calls[1:]] == ["sheddable", "standard", "critical"]


# --- priorities at the edge ------------------------------------------------------------


def test_a_call_without_priority_takes_its_tasks_default() -> None:
    assert a_call().priority == "standard"
    assert a_call(task=mesh_pb2.TASK_LONGFORM).priority == "sheddable"
    assert a_call(priority=mesh_pb2.PRIORITY_CRITICAL).priority == "critical"


def test_an_unknown_priority_is_invalid() -> None:
    from router.validation import resolve

    with pytest.raises(StatusError) as caught:
        resolve(request(priority=7), SETTINGS.router_config(), 1.0)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "priority 7" in caught.value.message
    assert "PRIORITY_CRITICAL" in caught.value.message


def test_a_conversations_priority_applies_to_turns_that_name_none() -> None:
    from router.validation import resolve

    config = SETTINGS.router_config()
    assert resolve(request(), config, 1.0, priority=mesh_pb2.PRIORITY_CRITICAL).priority == "critical"
    turn = request(priority=mesh_pb2.PRIORITY_SHEDDABLE)
    assert resolve(turn, config, 1.0, priority=mesh_pb2.PRIORITY_CRITICAL).priority == "sheddable"


# --- token quotas ----------------------------------------------------------------------


async def test_a_bucket_refuses_while_in_debt_and_refills_with_time() -> None:
    clock = FakeClock()
    quota = MemoryQuota(clock)
    limits = Limits(input_per_min=600, output_per_min=1200)  # 10 and 20 per second
    assert await quota.take("a", limits, 500, 0) == (0.0, "")
    assert await quota.take("a", limits, 500, 0) == (0.0, "")  # into debt: -400
    wait, direction = await quota.take("a", limits, 10, 0)
    assert direction == "in"
    assert wait == pytest.approx(40.0)
    assert await quota.take("b", limits, 10, 0) == (0.0, "")  # b has its own
    clock.advance(41)  # back to +10
    assert await quota.take("a", limits, 5, 0) == (0.0, "")
    # Output is charged when answers end; a tenant past it waits for it too.
    await quota.charge("a", limits, 0, 1500)
    wait, direction = await quota.take("a", limits, 10, 0)
    assert direction == "out"
    assert wait == pytest.approx(15.0)
    # Debt is never more than a bucket holds (a minute's worth by default).
    await quota.charge("a", limits, 0, 100_000)
    assert (await quota.take("a", limits, 10, 0))[0] == pytest.approx(60.0)
    # A call's max_tokens is reserved when it is admitted: calls in flight count.
    burst = Limits(input_per_min=0, output_per_min=600, burst_s=6)  # holds 60
    assert await quota.take("c", burst, 0, 50) == (0.0, "")
    assert await quota.take("c", burst, 0, 50) == (0.0, "")  # 10 left → -40
    assert (await quota.take("c", burst, 0, 50))[1] == "out"
    await quota.charge("c", burst, 0, -90)  # both answers were 5 tokens: 90 back
    assert await quota.take("c", burst, 0, 50) == (0.0, "")


class UsageBackend:
    """Answers with the usage a tier would count."""

    def __init__(self, prompt: int, completion: int) -> None:
        self.prompt, self.completion = prompt, completion

    async def generate(self, call: Call) -> AsyncIterator[mesh_pb2.GenerateResponse]:
        yield mesh_pb2.GenerateResponse(text="hi", tier=mesh_pb2.TIER_SILVER)
        done = mesh_pb2.GenerateResponse(finish_reason=mesh_pb2.FINISH_REASON_STOP, tier=mesh_pb2.TIER_SILVER)
        done.usage.prompt_tokens, done.usage.completion_tokens = self.prompt, self.completion
        yield done


async def test_a_tenant_out_of_tokens_gets_resource_exhausted_with_when() -> None:
    clock = FakeClock()
    store = MemoryQuota(clock)
    traffic = TrafficSettings(tenants={"a": TenantSettings(output_tokens_per_min=600)})
    quota = TokenQuota(UsageBackend(prompt=20, completion=700), traffic, store)
    alice = dataclasses.replace(a_call(), client_id="a")
    await drain(quota.generate(alice))
    await asyncio.sleep(0)  # the charge runs after the stream
    with pytest.raises(StatusError) as caught:
        await drain(quota.generate(alice))
    assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert caught.value.retry_after_s == pytest.approx(10.0)  # 100 over at 10/s
    assert "output tokens" in caught.value.message
    assert "10.0s" in caught.value.message
    # An unmetered tenant passes straight through.
    assert len(await drain(quota.generate(dataclasses.replace(a_call(), client_id="b")))) == 2


async def test_another_tenants_backlog_neither_sheds_nor_crowds_out_a_tenant() -> None:
    # A fills the queue; B's call is neither refused for A's backlog nor kept out by it:
    # it takes the place of A's newest waiter and is served at B's next turn.
    traffic = TrafficSettings(queue_per_slot=4.0, quantum_tokens=64)  # a call costs ~66 tokens
    inner = FakeBackend(Step(tokens=["x"], first_delay=0.1))
    limit = StreamLimit(inner, "silver", max_streams=1, expected_s=0.1, traffic=traffic)
    a_calls = [asyncio.ensure_future(drain(limit.generate(classed("standard", 2.0, "a")))) for _ in range(5)]
    await asyncio.sleep(0.01)  # one runs, four wait: the queue is full
    b_call = asyncio.ensure_future(drain(limit.generate(classed("standard", 2.0, "b"))))
    outcomes = await asyncio.gather(*a_calls, return_exceptions=True)
    assert [r.text for r in await b_call] == ["x"]
    displaced = [o for o in outcomes if isinstance(o, StatusError)]
    assert len(displaced) == 1
    assert "more calls waiting" in displaced[0].message
    assert [c.client_id for c in inner.calls][:3] == ["a", "a", "b"]  # B at its first turn


async def test_a_tenants_place_in_the_queue_counts_other_tenants_by_turns() -> None:
    queue = fair_queue(FakeClock(), weights={"b": 2.0})
    for _ in range(10):
        queue.push(waiter("a", 1))
    assert queue.ahead_of("b", 1) == pytest.approx(0.5)  # one A turn per two of B's
    assert queue.ahead_of("a", 1) == 10  # its own backlog
    assert queue.ahead_of("c", 2) == 10  # a lower class waits behind all of them
    queue.push(waiter("c", 0))
    assert queue.ahead_of("b", 1) == pytest.approx(1.5)
