"""Each router policy alone, over fake backends. Each test fails without its policy."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from types import SimpleNamespace
from typing import cast

import grpc
import pytest
from prometheus_client import REGISTRY

from router.call import Call
from router.estimates import TierEstimates
from router.pipeline import Backend
from router.policies import shaping
from router.policies.admission import Admission
from router.policies.cache import IntentCache
from router.policies.canned import CannedAnswers
from router.policies.fallback import Fallback
from router.policies.hedge import Hedge
from router.policies.limit import StreamLimit, StreamLimits
from router.policies.planner import RESERVE_FLOOR_S, RESERVE_SLACK, TierPlanner
from router.policies.result_cache import ResultCache
from router.policies.resume import Resume
from router.policies.retry import Retry
from router.policies.session import SessionContext, Window
from router.settings import Persona, StateSettings
from router.state.store import MemoryStore
from router.stats import RetryBudget
from router.streams import close
from tests.fakes import FakeBackend, FakeClock, Step, a_call, drain, unavailable
from tiermesh.config import TaskName, TierName
from tiermesh.errors import StatusError
from tiermesh.v1 import mesh_pb2


def generous_budget() -> RetryBudget:
    return RetryBudget(ratio=1.0, min_per_s=100.0)


def texts(responses: list[mesh_pb2.GenerateResponse]) -> str:
    return "".join(r.text for r in responses)


# --- retry -------------------------------------------------------------------------


async def test_retry_repeats_a_failure_before_the_first_token() -> None:
    inner = FakeBackend(Step(fail_before=unavailable()), Step(tokens=["ok"]))
    out = await drain(Retry(inner, "silver", generous_budget(), max_attempts=3).generate(a_call()))
    assert texts(out) == "ok"
    assert len(inner.calls) == 2


async def test_retry_never_repeats_after_a_token_was_sent() -> None:
    inner = FakeBackend(Step(fail_after=1), Step())
    with pytest.raises(StatusError):
        await drain(Retry(inner, "silver", generous_budget(), max_attempts=3).generate(a_call()))
    assert len(inner.calls) == 1


async def test_retry_leaves_caller_faults_alone() -> None:
    bad = StatusError(grpc.StatusCode.INVALID_ARGUMENT, "no")
    inner = FakeBackend(Step(fail_before=bad))
    with pytest.raises(StatusError):
        await drain(Retry(inner, "silver", generous_budget(), max_attempts=3).generate(a_call()))
    assert len(inner.calls) == 1


async def test_retry_stops_when_the_budget_is_spent() -> None:
    inner = FakeBackend(Step(fail_before=unavailable()))
    retry = Retry(inner, "silver", RetryBudget(ratio=0.0, min_per_s=0.0), max_attempts=5)
    with pytest.raises(StatusError):
        await drain(retry.generate(a_call()))
    assert len(inner.calls) == 1


async def test_retry_gives_up_after_max_attempts() -> None:
    inner = FakeBackend(Step(fail_before=unavailable()))
    with pytest.raises(StatusError):
        await drain(Retry(inner, "silver", generous_budget(), max_attempts=3).generate(a_call()))
    assert len(inner.calls) == 3


# --- hedging -----------------------------------------------------------------------


async def test_hedge_starts_a_second_attempt_when_the_first_token_is_late() -> None:
    inner = FakeBackend(Step(tokens=["slow"], first_delay=1.0), Step(tokens=["fast"]))
    hedge = Hedge(inner, "silver", lambda _call: 0.05, generous_budget())
    started = time.monotonic()
    out = await drain(hedge.generate(a_call()))
    assert texts(out) == "fast"
    assert time.monotonic() - started < 0.5
    assert len(inner.calls) == 2
    assert inner.cancelled == 1  # the loser was cancelled


async def test_no_hedge_when_the_first_token_is_on_time() -> None:
    inner = FakeBackend(Step(tokens=["on", "time"]))
    out = await drain(Hedge(inner, "silver", lambda _call: 0.5, generous_budget()).generate(a_call()))
    assert texts(out) == "ontime"
    assert len(inner.calls) == 1


async def test_no_hedge_without_a_delay_estimate_or_budget() -> None:
    slow = Step(tokens=["x"], first_delay=0.1)
    inner = FakeBackend(slow)
    await drain(Hedge(inner, "silver", lambda _call: None, generous_budget()).generate(a_call()))
    spent = RetryBudget(ratio=0.0, min_per_s=0.0)
    await drain(Hedge(inner, "silver", lambda _call: 0.01, spent).generate(a_call()))
    assert len(inner.calls) == 2  # one each: no hedges


async def test_hedge_survives_a_failing_primary() -> None:
    inner = FakeBackend(
        Step(first_delay=0.1, fail_before=unavailable()), Step(tokens=["b"], first_delay=0.15)
    )
    out = await drain(Hedge(inner, "silver", lambda _call: 0.05, generous_budget()).generate(a_call()))
    assert texts(out) == "b"


async def test_closing_a_hedged_stream_cancels_every_attempt() -> None:
    inner = FakeBackend(Step(tokens=["x"] * 50, first_delay=0.2), Step(tokens=["y"] * 50, first_delay=0.2))
    stream = Hedge(inner, "silver", lambda _call: 0.01, generous_budget()).generate(a_call())
    consumer = asyncio.ensure_future(drain(stream))
    await asyncio.sleep(0.05)
    consumer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await consumer
    assert inner.cancelled == 2


# --- mid-stream resume -------------------------------------------------------------


async def test_resume_continues_with_the_text_so_far_as_prefix() -> None:
    inner = FakeBackend(Step(tokens=["Halt", "!", " Who"], fail_after=2), Step(tokens=[" goes"]))
    resume = Resume(inner, "silver", {"dialogue": "resume"})
    out = await drain(resume.generate(a_call()))
    assert texts(out) == "Halt! goes"
    first, second = inner.calls
    assert second.messages[-1].role == "assistant"
    assert second.messages[-1].content == "Halt!"
    assert second.messages[:-1] == first.messages
    assert second.max_tokens == first.max_tokens - 2


async def test_fail_policy_ends_the_stream_with_the_error() -> None:
    inner = FakeBackend(Step(fail_after=2), Step())
    with pytest.raises(StatusError) as caught:
        await drain(Resume(inner, "silver", {"dialogue": "fail"}).generate(a_call()))
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert len(inner.calls) == 1


# --- stream limit and shedding -----------------------------------------------------


async def test_full_tier_sheds_at_once_when_the_wait_cannot_fit() -> None:
    inner = FakeBackend(Step(tokens=["x"], first_delay=0.3))
    limit = StreamLimit(inner, "silver", max_streams=1, expected_s=1.0)
    busy = asyncio.ensure_future(drain(limit.generate(a_call())))
    await asyncio.sleep(0.01)
    with pytest.raises(StatusError) as caught:
        await drain(limit.generate(a_call(deadline_s=0.5)))
    assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert caught.value.retry_after_s is not None
    assert "expected wait" in caught.value.message  # shed at once, not queued until the deadline
    await busy


async def test_full_tier_queues_when_the_wait_fits() -> None:
    inner = FakeBackend(Step(tokens=["x"], first_delay=0.05))
    limit = StreamLimit(inner, "silver", max_streams=1, expected_s=0.05)
    results = await asyncio.gather(*(drain(limit.generate(a_call(deadline_s=2.0))) for _ in range(3)))
    assert [texts(r) for r in results] == ["x", "x", "x"]


async def test_a_task_with_slots_of_its_own_does_not_wait_behind_the_others() -> None:
    # Gold: intents are labelled by an encoder beside the LLM that writes barks. One bark
    # holds the LLM's only slot; an intent must not queue behind it.
    inner = FakeBackend(Step(tokens=["bark"], first_delay=0.3), Step(tokens=["GREET"]))
    shared = StreamLimit(inner, "gold", max_streams=1, expected_s=0.3)
    intents = StreamLimit(inner, "gold", max_streams=4, expected_s=0.03)
    limits = StreamLimits(inner, shared, {"intent": intents})
    bark = asyncio.ensure_future(drain(limits.generate(a_call(mesh_pb2.TASK_BARK))))
    await asyncio.sleep(0.01)
    assert limits.wait_estimate(a_call(mesh_pb2.TASK_BARK)) > 0  # the planner sees the queue
    intent = a_call(mesh_pb2.TASK_INTENT, npc_id="guard-1")
    assert limits.wait_estimate(intent) == 0.0
    assert texts(await drain(limits.generate(intent))) == "GREET"
    assert not bark.done()  # answered in its own slot, while the bark holds the other
    assert texts(await bark) == "bark"


async def test_a_tiers_queues_add_up_in_its_depth() -> None:
    def depth() -> float:
        return REGISTRY.get_sample_value("tiermesh_router_queue_depth", {"tier": "gold"}) or 0.0

    inner = FakeBackend(Step(tokens=["x"], first_delay=0.2))
    shared = StreamLimit(inner, "gold", max_streams=1, expected_s=0.2)
    intents = StreamLimit(inner, "gold", max_streams=1, expected_s=0.2)
    limits = StreamLimits(inner, shared, {"intent": intents})
    before = depth()
    calls = [a_call(mesh_pb2.TASK_BARK), a_call(mesh_pb2.TASK_INTENT, npc_id="guard-1")] * 2
    running = asyncio.gather(*(drain(limits.generate(call)) for call in calls))
    await asyncio.sleep(0.05)
    assert depth() - before == 2  # one waiting in each queue
    await running
    assert depth() == before


# --- admission ---------------------------------------------------------------------


async def test_rate_limit_refuses_with_retry_info_and_refills() -> None:
    clock = FakeClock()
    admission = Admission(FakeBackend(), rate_per_s=2.0, burst=2, clock=clock)
    alice = dataclasses.replace(a_call(), client_id="alice")
    await drain(admission.generate(alice))
    await drain(admission.generate(alice))
    with pytest.raises(StatusError) as caught:
        await drain(admission.generate(alice))
    assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert caught.value.retry_after_s == pytest.approx(0.5)
    await drain(admission.generate(dataclasses.replace(a_call(), client_id="bob")))  # own bucket
    clock.advance(0.5)
    await drain(admission.generate(alice))


# --- tier choice and fallback ------------------------------------------------------
# Each planner test plays the case its name gives, on a fake clock, with tiers whose
# records say how fast they are (the local mesh's figures: Gold answers an intent whole in
# ~120 ms, Silver streams its first token in ~150 ms and then ~60 ms a token, Bronze makes
# a long-form answer in ~1.8 s).


def estimates(clock: FakeClock, **tiers: tuple[float, float]) -> dict[TierName, TierEstimates]:
    """Per tier: (seconds to the first token, or to a whole intent; seconds per token)."""
    del clock  # estimates carry no clock; the planner reads one
    return {cast(TierName, name): TierEstimates(ttft, token) for name, (ttft, token) in tiers.items()}


def planner(
    routes: dict[str, list[str]],
    tiers: dict[TierName, TierEstimates],
    clock: FakeClock,
    **options: object,
) -> TierPlanner:
    return TierPlanner(
        cast(dict[TaskName, list[TierName]], routes),
        tiers,
        min_tokens={"bark": 4, "dialogue": 8, "longform": 16},
        clock=clock,
        **options,  # type: ignore[arg-type]
    )


def timed_call(clock: FakeClock, task: mesh_pb2.Task.ValueType, deadline_s: float, **fields: object) -> Call:
    call = a_call(task, deadline_s, **fields)
    return dataclasses.replace(call, received_at=clock.now, deadline=clock.now + deadline_s)


MESH = {"gold": (0.12, 0.02), "silver": (0.15, 0.06), "bronze": (1.8, 0.007)}
INTENT = {"intent": ["gold", "silver"]}


def test_a_500ms_intent_goes_to_gold_without_reserving_time_for_silver() -> None:
    # Today's planner kept 2 × Silver's p95 for Silver and skipped Gold.
    clock = FakeClock()
    plan = planner(INTENT, estimates(clock, **MESH), clock)
    step, skipped = plan.next_step(timed_call(clock, mesh_pb2.TASK_INTENT, 0.5), [], clock.now + 0.49)
    assert step is not None
    assert (step.tier, skipped) == ("gold", [])
    # Silver's p95 (0.15, with slack) leaves Gold 0.30 s: Gold fits beside it, so that
    # time is kept for Silver.
    assert step.start_by == pytest.approx(clock.now + 0.49 - RESERVE_SLACK * 0.15 - RESERVE_FLOOR_S)


def test_the_best_tier_keeps_the_whole_time_when_it_does_not_fit_beside_the_next() -> None:
    clock = FakeClock()
    plan = planner(INTENT, estimates(clock, **MESH), clock)
    step, _ = plan.next_step(timed_call(clock, mesh_pb2.TASK_INTENT, 0.2), [], clock.now + 0.19)
    assert step is not None
    assert step.tier == "gold"
    assert step.start_by == pytest.approx(clock.now + 0.19)  # nothing kept for Silver


def test_a_tier_that_cannot_finish_is_never_handed_time() -> None:
    clock = FakeClock()
    plan = planner(INTENT, estimates(clock, **MESH), clock)
    step, skipped = plan.next_step(timed_call(clock, mesh_pb2.TASK_INTENT, 0.1), [], clock.now + 0.09)
    assert step is None  # the canned answer comes next
    assert [tier for tier, _ in skipped] == ["gold", "silver"]


def test_long_form_goes_to_bronze_which_finishes_in_time() -> None:
    # Today's planner skipped Bronze as "slow" to keep time for Silver's first token.
    clock = FakeClock()
    plan = planner({"longform": ["bronze", "silver"]}, estimates(clock, **MESH), clock)
    call = timed_call(clock, mesh_pb2.TASK_LONGFORM, 5.0, max_tokens=256)
    step, skipped = plan.next_step(call, [], clock.now + 4.99)
    assert step is not None
    assert (step.tier, skipped) == ("bronze", [])
    assert step.max_tokens == 256  # 256 tokens at 7 ms fit


def test_the_best_tier_is_given_up_on_no_sooner_than_its_p95_with_slack() -> None:
    # Bronze makes every long-form answer in ~3.3 s. At 5 s, Silver's reserve (p95 1.05 s,
    # with slack 1.32) leaves Bronze 3.63 s, just past its p95: the old rule gave it up
    # there, before the answers that run a little long (docs/history.md, #22).
    clock = FakeClock()
    slow = planner(
        {"longform": ["bronze", "silver"]}, estimates(clock, bronze=(3.3, 0.001), silver=(0.15, 0.06)), clock
    )
    call = timed_call(clock, mesh_pb2.TASK_LONGFORM, 5.0, max_tokens=256)
    step, _ = slow.next_step(call, [], clock.now + 4.95)
    assert step is not None
    assert (step.tier, step.keeps_reserve) == ("bronze", False)
    assert step.start_by == pytest.approx(clock.now + 4.95 - 15 * 0.001)  # the whole time
    # A Bronze that fits beside Silver's reserve with slack still keeps it.
    quick = planner(
        {"longform": ["bronze", "silver"]}, estimates(clock, bronze=(2.5, 0.001), silver=(0.15, 0.06)), clock
    )
    step, _ = quick.next_step(call, [], clock.now + 4.95)
    assert step is not None
    assert (step.tier, step.keeps_reserve) == ("bronze", True)
    assert step.start_by == pytest.approx(
        clock.now + 4.95 - RESERVE_SLACK * (0.15 + 15 * 0.06) - RESERVE_FLOOR_S
    )


def test_a_queue_makes_a_tier_slower() -> None:
    clock = FakeClock()
    waiting = {"gold": lambda call: 0.3}
    plan = planner(INTENT, estimates(clock, **MESH), clock, queue_wait=waiting)
    step, skipped = plan.next_step(timed_call(clock, mesh_pb2.TASK_INTENT, 0.4), [], clock.now + 0.39)
    assert step is not None
    assert step.tier == "silver"
    [(tier, need)] = skipped
    assert tier == "gold"
    assert need.full(0.39)  # only its queue kept it out: full, not slow


def test_a_streamed_answer_is_shortened_to_what_fits() -> None:
    clock = FakeClock()
    plan = planner({"dialogue": ["silver"]}, estimates(clock, **MESH), clock)
    step, _ = plan.next_step(
        timed_call(clock, mesh_pb2.TASK_DIALOGUE, 2.0, max_tokens=64), [], clock.now + 1.99
    )
    assert step is not None
    assert step.max_tokens == 1 + int((1.99 - 0.15) / 0.06)  # 31 of 64
    # Too little time even for its minimal answer (8 tokens): not started at all.
    step, skipped = plan.next_step(timed_call(clock, mesh_pb2.TASK_DIALOGUE, 0.5), [], clock.now + 0.49)
    assert step is None
    assert [tier for tier, _ in skipped] == ["silver"]


def test_planning_learns_each_tasks_own_speed() -> None:
    clock = FakeClock()
    tiers = estimates(clock, **MESH)
    for _ in range(10):
        tiers["gold"].task("intent").observe_first(0.4)  # Gold under load
    plan = planner(INTENT, tiers, clock)
    step, skipped = plan.next_step(timed_call(clock, mesh_pb2.TASK_INTENT, 0.3), [], clock.now + 0.29)
    assert step is not None
    assert step.tier == "silver"
    assert [tier for tier, _ in skipped] == ["gold"]
    assert tiers["gold"].task("bark").ttft(0.5) == 0.12  # barks keep their own record


def test_a_tier_passed_over_on_a_burst_record_is_probed_one_call_at_a_time() -> None:
    # Silver's dialogue record was taken under 16 callers (1.5 s to the first token):
    # alone again, it would be passed over, idle, for the 30 s the samples live, and
    # every 2 s dialogue canned at once. With a canned answer to fall back on, one call
    # at a time tries it.
    clock = FakeClock()
    tiers = estimates(clock, silver=(0.25, 0.07))
    for _ in range(5):
        tiers["silver"].task("dialogue").observe_first(1.5)
        tiers["silver"].task("dialogue").observe_rest(8, 7 * 0.3)
    plan = planner({"dialogue": ["silver"]}, tiers, clock)
    call = timed_call(clock, mesh_pb2.TASK_DIALOGUE, 2.0, max_tokens=64)
    cut_at = clock.now + 1.99
    assert plan.next_step(call, [], cut_at)[0] is None  # no last resort: no probe
    step, passed = plan.next_step(call, [], cut_at, last_resort=True)
    assert step is not None
    assert (step.tier, step.probe, passed) == ("silver", True, [])
    assert step.start_by == pytest.approx(cut_at - 7 * 0.07)  # its minimal answer at the prior rate
    assert step.max_tokens == 1 + int((1.99 - 0.25) / 0.07)  # 25 of 64: what fits at that rate
    assert plan.next_step(call, [], cut_at, last_resort=True)[0] is None  # one at a time
    tiers["silver"].task("dialogue").end_probe()
    step, _ = plan.next_step(call, [], cut_at, last_resort=True)
    assert step is not None
    assert step.probe


def test_no_probe_where_the_priors_cannot_answer_or_a_queue_keeps_the_tier_out() -> None:
    clock = FakeClock()
    plan = planner(INTENT, estimates(clock, **MESH), clock)
    step, passed = plan.next_step(timed_call(clock, mesh_pb2.TASK_INTENT, 0.1), [], clock.now + 0.09, True)
    assert step is None  # Gold's prior (0.12 s) does not fit either: canned at once
    assert [tier for tier, _ in passed] == ["gold", "silver"]
    tiers = estimates(clock, **MESH)
    for _ in range(5):
        tiers["gold"].task("intent").observe_first(0.5)
    plan = planner(INTENT, tiers, clock, queue_wait={"gold": lambda call: 0.2})
    step, _ = plan.next_step(timed_call(clock, mesh_pb2.TASK_INTENT, 0.14), [], clock.now + 0.139, True)
    assert step is None  # callers are waiting on Gold: its record is current


def test_planner_routes_long_answers_past_a_short_answer_tier() -> None:
    clock = FakeClock()
    plan = planner({"bark": ["gold", "silver"]}, estimates(clock, **MESH), clock, max_tokens={"gold": 16})
    assert plan.chain(a_call(mesh_pb2.TASK_BARK, max_tokens=8)) == ["gold", "silver"]
    assert plan.chain(a_call(mesh_pb2.TASK_BARK, max_tokens=32)) == ["silver"]


def fallback(
    silver: FakeBackend,
    gold: FakeBackend,
    canned: bool = False,
    task: TaskName = "dialogue",
    margin_s: float = 0.01,
) -> Fallback:
    tiers: dict[TierName, TierEstimates] = {
        "silver": TierEstimates(0.05, 0.01),
        "gold": TierEstimates(0.01, 0.005),
    }
    return Fallback(
        TierPlanner({task: ["silver", "gold"]}, tiers, min_tokens={"dialogue": 2}),
        {"silver": silver, "gold": gold},
        tiers,
        CannedAnswers(
            {"guard-1": Persona(system="x", fallback_line="Move along.")}, frozenset({task} if canned else ())
        ),
        margin_s,
    )


def test_cut_off_allows_for_the_margin_and_a_rounded_up_timeout() -> None:
    plan = fallback(FakeBackend(), FakeBackend(), margin_s=0.025)
    for budget, before in ((3.0, 0.025 + 0.03), (0.2, 0.025 + 0.002), (0.05, 0.01 + 0.0005)):
        call = a_call(deadline_s=budget)
        call = dataclasses.replace(call, deadline=call.received_at + budget)
        assert plan.cut_at(call) == pytest.approx(call.deadline - before)


async def test_fallback_to_the_next_tier_when_the_first_fails() -> None:
    silver, gold = FakeBackend(Step(fail_before=unavailable())), FakeBackend(tier=mesh_pb2.TIER_GOLD)
    out = await drain(fallback(silver, gold).generate(a_call()))
    assert {r.tier for r in out} == {mesh_pb2.TIER_GOLD}


async def test_fallback_when_the_first_token_misses_its_budget() -> None:
    silver = FakeBackend(Step(first_delay=5.0))
    gold = FakeBackend(tier=mesh_pb2.TIER_GOLD)
    call = a_call(deadline_s=0.5)
    out = await drain(reserving_for_gold(fallback(silver, gold)).generate(call))
    assert {r.tier for r in out} == {mesh_pb2.TIER_GOLD}
    assert time.monotonic() < call.deadline
    assert silver.cancelled == 1


async def test_canned_answer_when_every_tier_fails() -> None:
    down = Step(fail_before=unavailable())
    out = await drain(fallback(FakeBackend(down), FakeBackend(down), canned=True).generate(a_call()))
    assert [(r.text, r.tier) for r in out] == [("Move along.", mesh_pb2.TIER_FALLBACK)]
    assert out[0].finish_reason == mesh_pb2.FINISH_REASON_STOP


async def test_canned_answer_comes_before_the_deadline_when_tiers_hang() -> None:
    # Today the canned line was tried only after the last tier used the whole deadline.
    hung = Step(first_delay=10.0)
    call = a_call(deadline_s=0.2)
    out = await drain(fallback(FakeBackend(hung), FakeBackend(hung), canned=True).generate(call))
    assert [(r.text, r.tier) for r in out] == [("Move along.", mesh_pb2.TIER_FALLBACK)]
    assert time.monotonic() < call.deadline


async def test_a_canned_intent_is_one_of_the_calls_labels() -> None:
    hung = Step(first_delay=10.0)
    policy = fallback(FakeBackend(hung), FakeBackend(hung), canned=True, task="intent")
    call = a_call(mesh_pb2.TASK_INTENT, 0.1, intents=["WARN", "ATTACK"])
    out = await drain(policy.generate(call))
    assert [(r.text, r.tier) for r in out] == [("WARN", mesh_pb2.TIER_FALLBACK)]
    persona = Persona(system="x", intents=["WARN", "ATTACK"], default_intent="ATTACK")
    assert CannedAnswers({"guard-1": persona}, frozenset({"intent"}))(call).text == "ATTACK"  # type: ignore[union-attr]


async def test_an_intent_is_sent_whole_or_not_at_all() -> None:
    # Silver streams a label in pieces; one that will not finish in time is never sent in
    # part: the canned label goes instead.
    pieces = Step(tokens=["IGN", "ORE"])
    policy = fallback(FakeBackend(pieces), FakeBackend(pieces), canned=True, task="intent")
    call = a_call(mesh_pb2.TASK_INTENT, 1.0, intents=["IGNORE", "ATTACK"])
    out = await drain(policy.generate(call))
    assert [(r.text, r.tier) for r in out] == [("IGNORE", mesh_pb2.TIER_SILVER)]  # one message, whole
    stalled = FakeBackend(Step(tokens=["IGN", "ORE"], token_delay=5.0))
    policy = fallback(stalled, stalled, canned=True, task="intent")
    out = await drain(policy.generate(a_call(mesh_pb2.TASK_INTENT, 0.3, intents=["IGNORE", "ATTACK"])))
    assert [(r.text, r.tier) for r in out] == [("IGNORE", mesh_pb2.TIER_FALLBACK)]


async def test_an_answer_that_is_not_a_label_is_a_tier_failure() -> None:
    silver = FakeBackend(Step(tokens=["DANCE"]))
    gold = FakeBackend(Step(tokens=["ATTACK"]), tier=mesh_pb2.TIER_GOLD)
    out = await drain(
        fallback(silver, gold, task="intent").generate(a_call(mesh_pb2.TASK_INTENT, intents=["ATTACK"]))
    )
    assert [(r.text, r.tier) for r in out] == [("ATTACK", mesh_pb2.TIER_GOLD)]


async def test_a_streamed_answer_that_cannot_finish_ends_cleanly_before_the_deadline() -> None:
    # Today: DEADLINE_EXCEEDED mid-word. Now: OK, FINISH_REASON_DEADLINE, no half word.
    words = ["Halt", "!", " The", " kind", " of", " thing", " you", " don", "'t", " want", " here"]
    silver = FakeBackend(Step(tokens=words, token_delay=0.05))
    call = a_call(deadline_s=0.3, max_tokens=64)
    out = await drain(fallback(silver, FakeBackend(Step(fail_before=unavailable()))).generate(call))
    assert time.monotonic() < call.deadline
    assert out[-1].finish_reason == mesh_pb2.FINISH_REASON_DEADLINE
    text = texts(out)
    assert text
    assert "".join(words).startswith(text)
    assert text.endswith(("!", " "))  # a sentence's end, or whole words only


async def test_an_answer_cut_after_its_first_token_ends_marked_with_its_tier() -> None:
    # The router's closing message carried TIER_UNSPECIFIED when no message came after
    # the first one.
    silver = FakeBackend(Step(tokens=["Halt.", " Who"], token_delay=5.0))
    call = a_call(deadline_s=0.3, max_tokens=64)
    out = await drain(fallback(silver, FakeBackend(Step(fail_before=unavailable()))).generate(call))
    assert [(r.text, r.tier, r.finish_reason) for r in out] == [
        ("Halt.", mesh_pb2.TIER_SILVER, mesh_pb2.FINISH_REASON_UNSPECIFIED),
        ("", mesh_pb2.TIER_SILVER, mesh_pb2.FINISH_REASON_DEADLINE),
    ]


async def test_caller_faults_do_not_fall_back() -> None:
    bad = StatusError(grpc.StatusCode.OUT_OF_RANGE, "prompt too long")
    gold = FakeBackend()
    with pytest.raises(StatusError) as caught:
        await drain(fallback(FakeBackend(Step(fail_before=bad)), gold).generate(a_call()))
    assert caught.value.code == grpc.StatusCode.OUT_OF_RANGE
    assert gold.calls == []


async def test_without_a_canned_answer_every_tier_failing_is_unavailable() -> None:
    down = Step(fail_before=unavailable("boom"))
    with pytest.raises(StatusError) as caught:
        await drain(fallback(FakeBackend(down), FakeBackend(down)).generate(a_call()))
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert "boom" in caught.value.message


async def test_every_tier_full_is_resource_exhausted_with_retry_info() -> None:
    full = Step(fail_before=StatusError(grpc.StatusCode.RESOURCE_EXHAUSTED, "full", retry_after_s=0.3))
    with pytest.raises(StatusError) as caught:
        await drain(fallback(FakeBackend(full), FakeBackend(full)).generate(a_call()))
    assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert caught.value.retry_after_s == pytest.approx(0.3)


async def test_a_tier_given_up_on_is_observed_as_at_least_that_slow() -> None:
    silver = FakeBackend(Step(first_delay=5.0))
    policy = reserving_for_gold(fallback(silver, FakeBackend(tier=mesh_pb2.TIER_GOLD)))
    await drain(policy.generate(a_call(deadline_s=0.5)))
    record = policy._estimates["silver"].task("dialogue")
    assert record.samples == 1
    assert record.ttft(0.5) >= 0.1  # a censored sample: at least the time it had


async def test_a_tiers_record_leaves_out_the_wait_for_its_stream_slot() -> None:
    # One slot, held ~0.3 s by the first call: the second waits for it, then its first
    # token comes at once. The planner adds a queue's expected wait itself (per tenant and
    # class); a record with the wait in it kept a tenant with a free reserved slot off the
    # tier, as too slow, while another tenant's flood queued.
    inner = FakeBackend(Step(tokens=["a", "b", "c", "d"], token_delay=0.1))
    limit = StreamLimit(inner, "silver", max_streams=1, expected_s=0.05)
    tiers: dict[TierName, TierEstimates] = {"silver": TierEstimates(0.05, 0.01)}
    waits: dict[TierName, Callable[[Call], float]] = {"silver": limit.wait_estimate}
    planner = TierPlanner({"dialogue": ["silver"]}, tiers, min_tokens={"dialogue": 2}, queue_wait=waits)
    policy = Fallback(
        planner,
        {"silver": limit},
        tiers,
        CannedAnswers({"guard-1": Persona(system="x")}, frozenset()),
        0.01,
    )
    first = asyncio.create_task(drain(policy.generate(a_call(deadline_s=2.0))))
    await asyncio.sleep(0.02)
    started = time.monotonic()
    await drain(policy.generate(a_call(deadline_s=2.0)))
    assert time.monotonic() - started >= 0.2  # it waited for the slot
    await first
    record = tiers["silver"].task("dialogue")
    assert record.samples == 2
    assert record.ttft(0.95) < 0.1


def reserving_for_gold(policy: Fallback) -> Fallback:
    """Gold's record says 0.15 s to its first token: a 0.5 s call gives Silver until
    ~0.29 s, keeping ~0.2 s for Gold."""
    for _ in range(5):
        policy._estimates["gold"].task("dialogue").observe_first(0.15)
    return policy


def late_answers(tier: str) -> float:
    return (
        REGISTRY.get_sample_value("tiermesh_router_late_answers_total", {"task": "dialogue", "tier": tier})
        or 0.0
    )


async def test_a_tier_given_up_on_still_answers_if_it_starts_first() -> None:
    # Silver's first token comes at 0.35 s, after its planned 0.29; Gold then hangs. It
    # ended DEADLINE_EXCEEDED: Silver was cancelled when Gold started.
    silver, gold = (
        FakeBackend(Step(first_delay=0.35)),
        FakeBackend(Step(first_delay=5.0), tier=mesh_pb2.TIER_GOLD),
    )
    before = late_answers("silver")
    call = a_call(deadline_s=0.5)
    out = await drain(reserving_for_gold(fallback(silver, gold)).generate(call))
    assert texts(out) == "abc"
    assert {r.tier for r in out} == {mesh_pb2.TIER_SILVER}
    assert time.monotonic() < call.deadline
    assert (silver.cancelled, gold.cancelled) == (0, 1)  # the later attempt lost, at its tier
    assert late_answers("silver") == before + 1


async def test_what_still_runs_has_until_the_cut_off_when_no_tier_is_left() -> None:
    silver = FakeBackend(Step(first_delay=0.35))
    gold = FakeBackend(Step(fail_before=unavailable()), tier=mesh_pb2.TIER_GOLD)
    out = await drain(reserving_for_gold(fallback(silver, gold)).generate(a_call(deadline_s=0.5)))
    assert {r.tier for r in out} == {mesh_pb2.TIER_SILVER}
    hung = FakeBackend(Step(first_delay=5.0))
    with pytest.raises(StatusError) as caught:
        await drain(reserving_for_gold(fallback(hung, gold)).generate(a_call(deadline_s=0.5)))
    assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert hung.cancelled == 1  # not left running past the call


async def test_a_worse_tiers_first_token_waits_while_the_better_one_still_may_answer() -> None:
    # Gold starts at once when Silver is given up on (~0.29 s); Silver answers at 0.4 s,
    # before the latest time Gold could start (~0.48 s): the answer is Silver's.
    silver = FakeBackend(Step(first_delay=0.4))
    gold = FakeBackend(Step(tokens=["g"]), tier=mesh_pb2.TIER_GOLD)
    out = await drain(reserving_for_gold(fallback(silver, gold)).generate(a_call(deadline_s=0.5)))
    assert {r.tier for r in out} == {mesh_pb2.TIER_SILVER}
    assert gold.cancelled == 1
    # Silver never answers: Gold's held answer goes out by its latest start, in time.
    hung = FakeBackend(Step(first_delay=5.0))
    call = a_call(deadline_s=0.5)
    out = await drain(reserving_for_gold(fallback(hung, gold)).generate(call))
    assert {r.tier for r in out} == {mesh_pb2.TIER_GOLD}
    assert texts(out) == "g"
    assert time.monotonic() < call.deadline
    assert hung.cancelled == 1


async def test_a_tier_late_for_its_own_minimal_answer_does_not_run_on() -> None:
    # Gold streams a token every 0.1 s: it must start by ~0.88 s to stream its minimal
    # 2 tokens by the 0.98 s cut-off. It starts at ~0.93 s: a stub of an answer, no more.
    silver = FakeBackend(Step(first_delay=5.0))
    gold = FakeBackend(Step(first_delay=0.27), tier=mesh_pb2.TIER_GOLD)
    policy = reserving_for_gold(fallback(silver, gold))
    policy._estimates["gold"].task("dialogue").observe_rest(tokens=11, seconds=1.0)
    with pytest.raises(StatusError) as caught:
        await drain(policy.generate(a_call(deadline_s=1.0)))
    assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert gold.cancelled == 1


async def test_with_a_canned_answer_a_tier_given_up_on_is_cancelled() -> None:
    # The canned line keeps the promise; run on, Silver would hold capacity from others.
    silver, gold = (
        FakeBackend(Step(first_delay=0.35)),
        FakeBackend(Step(first_delay=5.0), tier=mesh_pb2.TIER_GOLD),
    )
    out = await drain(
        reserving_for_gold(fallback(silver, gold, canned=True)).generate(a_call(deadline_s=0.5))
    )
    assert [r.tier for r in out] == [mesh_pb2.TIER_FALLBACK]
    assert silver.cancelled == 1


def running(*tiers: FakeBackend) -> int:
    """Tier calls started and not yet unwound."""
    return sum(len(tier.calls) - tier.cancelled for tier in tiers)


async def test_the_canned_answer_leaves_before_the_late_tier_is_unwound() -> None:
    # Unwinding a tier call (its cancellation, its layers' bookkeeping) takes time the
    # caller's answer, due at the cut-off, does not wait for.
    calls: dict[TaskName, Callable[[], Call]] = {
        "dialogue": lambda: a_call(deadline_s=0.5),
        "intent": lambda: a_call(mesh_pb2.TASK_INTENT, 0.5, intents=["WARN"]),
    }
    for task, call in calls.items():
        silver = FakeBackend(Step(first_delay=10.0))
        gold = FakeBackend(Step(first_delay=10.0), tier=mesh_pb2.TIER_GOLD)
        # A wide margin: a VM's stall at the cut-off is not what this test is about.
        stream = fallback(silver, gold, canned=True, task=task, margin_s=0.05).generate(call())
        answer = await anext(stream)
        assert answer.tier == mesh_pb2.TIER_FALLBACK, task
        assert running(silver, gold) == 1, task  # the last tier tried, not yet unwound
        assert await drain(stream) == []
        assert running(silver, gold) == 0, task


async def test_a_caller_that_leaves_while_a_tier_is_awaited_ends_its_tier_call() -> None:
    silver = FakeBackend(Step(first_delay=10.0))
    policy = fallback(silver, FakeBackend(tier=mesh_pb2.TIER_GOLD), canned=True)
    caller = asyncio.ensure_future(drain(policy.generate(a_call(deadline_s=2.0))))
    await asyncio.wait_for(silver.called.wait(), 5.0)  # its first token is due in 10 s
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert silver.cancelled == 1


async def test_a_probe_that_answers_renews_the_record_for_the_calls_after_it() -> None:
    silver = FakeBackend(Step(tokens=["Halt.", " Who", " goes", " there?"]))
    policy = fallback(silver, FakeBackend(Step(fail_before=unavailable())), canned=True)
    record = policy._estimates["silver"].task("dialogue")
    for _ in range(3):
        record.observe_first(5.0)  # a burst's record: 5 s to the first token
        policy._estimates["gold"].task("dialogue").observe_first(5.0)
    out = await drain(policy.generate(a_call(deadline_s=1.0)))
    assert {r.tier for r in out} == {mesh_pb2.TIER_SILVER}  # the probe answered
    for _ in range(3):
        out = await drain(policy.generate(a_call(deadline_s=1.0)))
        assert {r.tier for r in out} == {mesh_pb2.TIER_SILVER}
    assert record.ttft(0.5) < 0.1  # planned on fresh samples again, not probed


# --- intent cache ------------------------------------------------------------------


def intent_call(prompt: str = "The player draws a sword!", **kw: object) -> Call:
    call = a_call(mesh_pb2.TASK_INTENT, prompt=prompt, intents=["ATTACK", "FLEE"])
    return dataclasses.replace(call, **kw)  # type: ignore[arg-type]


async def test_intent_cache_serves_a_repeat_from_cache() -> None:
    gold = FakeBackend(Step(tokens=["ATT", "ACK"]), tier=mesh_pb2.TIER_GOLD)
    cache = IntentCache(gold, max_entries=10, ttl_s=60)
    first = await drain(cache.generate(intent_call()))
    again = await drain(cache.generate(intent_call("  the PLAYER draws a sword ")))
    assert texts(first) == "ATTACK"
    assert [(r.text, r.tier) for r in again] == [("ATTACK", mesh_pb2.TIER_CACHE)]
    assert len(gold.calls) == 1


async def test_intent_cache_expires_and_is_bounded() -> None:
    clock = FakeClock()
    gold = FakeBackend(Step(tokens=["FLEE"]), tier=mesh_pb2.TIER_GOLD)
    cache = IntentCache(gold, max_entries=2, ttl_s=10, clock=clock)
    for prompt in ("one", "two", "three"):
        await drain(cache.generate(intent_call(prompt)))
    assert len(cache) == 2  # "one" was evicted
    clock.advance(11)
    await drain(cache.generate(intent_call("three")))
    assert len(gold.calls) == 4  # expired: asked again


async def test_intent_cache_keeps_only_valid_model_answers() -> None:
    canned = FakeBackend(Step(tokens=["Move along."]), tier=mesh_pb2.TIER_CACHE)
    cache = IntentCache(canned, max_entries=10, ttl_s=60)
    await drain(cache.generate(intent_call()))
    invalid = IntentCache(FakeBackend(Step(tokens=["DANCE"]), tier=mesh_pb2.TIER_GOLD), 10, 60)
    await drain(invalid.generate(intent_call()))
    assert len(cache) == 0
    assert len(invalid) == 0


async def test_a_situation_of_symbols_only_is_not_cached() -> None:
    gold = FakeBackend(Step(tokens=["ATTACK"]), Step(tokens=["FLEE"]), tier=mesh_pb2.TIER_GOLD)
    cache = IntentCache(gold, max_entries=10, ttl_s=60)
    await drain(cache.generate(intent_call("🗡️🗡️!")))
    out = await drain(cache.generate(intent_call("🐉🔥?")))  # the same key, were symbols dropped
    assert [(r.text, r.tier) for r in out] == [("FLEE", mesh_pb2.TIER_GOLD)]
    assert len(cache) == 0


async def test_bypass_skips_the_cache() -> None:
    gold = FakeBackend(Step(tokens=["ATTACK"]), tier=mesh_pb2.TIER_GOLD)
    cache = IntentCache(gold, max_entries=10, ttl_s=60)
    await drain(cache.generate(intent_call()))
    out = await drain(cache.generate(intent_call(bypass_cache=True)))
    assert out[0].tier == mesh_pb2.TIER_GOLD
    assert len(gold.calls) == 2


async def test_the_intent_set_and_persona_are_part_of_the_key() -> None:
    gold = FakeBackend(Step(tokens=["FLEE"]), tier=mesh_pb2.TIER_GOLD)
    cache = IntentCache(gold, max_entries=10, ttl_s=60)
    await drain(cache.generate(intent_call()))
    await drain(cache.generate(intent_call(intents=("FLEE", "HIDE"))))
    assert len(gold.calls) == 2


async def test_policies_with_nothing_to_do_leave_the_stream_as_it_is() -> None:
    """No wrapping layer (a generator step per message) where a policy does not apply."""
    call = a_call()  # dialogue, no session, no bypass
    inner = FakeBackend()
    stream = inner.generate(call)
    below = cast(Backend, SimpleNamespace(generate=lambda _: stream))

    async def no_lookup(_: Call) -> None:
        raise AssertionError("dialogue is not a cached task")

    policies: list[Backend] = [
        IntentCache(below, 8, 60.0),
        Resume(below, "silver", {"dialogue": "fail"}),
        SessionContext(below, MemoryStore(StateSettings()), {}),
        ResultCache(below, no_lookup, frozenset({"longform"})),
    ]
    for policy in policies:
        assert policy.generate(call) is stream, type(policy).__name__
    assert [r.text for r in await drain(stream)] == ["a", "b", "c"]


async def test_earlier_tiers_get_a_start_by_and_none_gets_past_the_cut_off() -> None:
    silver, gold = FakeBackend(Step(fail_before=unavailable())), FakeBackend(tier=mesh_pb2.TIER_GOLD)
    call = a_call()
    await drain(fallback(silver, gold).generate(call))
    assert silver.calls[0].first_token_by is not None
    assert silver.calls[0].first_token_by < call.deadline
    assert gold.calls[0].first_token_by is not None
    assert gold.calls[0].first_token_by <= call.deadline - 0.01


@pytest.mark.parametrize(
    ("held", "sentence_seen", "end"),
    [
        ("Halt! Who goes", False, "Halt!"),  # the last sentence end
        ("Halt! Who goes there?", True, "Halt! Who goes there?"),  # it ends one: all of it
        (" and then the", True, ""),  # an unfinished sentence after a finished one: dropped
        (" and then the gua", False, " and then the "),  # no sentence in sight: whole words
        ("Halt.\n", False, "Halt.\n"),
    ],
)
def test_a_cut_answer_ends_at_a_sentence_or_at_least_a_word(held: str, sentence_seen: bool, end: str) -> None:
    assert shaping.ending(held, sentence_seen) == end


async def test_in_the_closing_window_text_goes_out_a_sentence_at_a_time() -> None:
    words = ["The", " gate", " is", " shut", ".", " Come", " back", " at", " dawn", ".", " Now", " go"]
    silver = FakeBackend(Step(tokens=words, token_delay=0.03))  # 0.33 s: longer than the deadline
    call = a_call(deadline_s=0.28, max_tokens=64)
    policy = fallback(silver, FakeBackend(Step(fail_before=unavailable())))
    out = await drain(policy.generate(call))
    assert out[-1].finish_reason == mesh_pb2.FINISH_REASON_DEADLINE
    text = texts(out)
    assert text.endswith(".")  # whole sentences, the unfinished one dropped
    assert "".join(words).startswith(text)


class FinalThenBusy:
    """A tier that sends its final message, then still has work of its own that never
    ends here (a stream's close, a connection's bookkeeping)."""

    async def generate(self, call: Call) -> AsyncIterator[mesh_pb2.GenerateResponse]:
        yield mesh_pb2.GenerateResponse(text="ATTACK", tier=mesh_pb2.TIER_GOLD)
        yield mesh_pb2.GenerateResponse(tier=mesh_pb2.TIER_GOLD, finish_reason=mesh_pb2.FINISH_REASON_STOP)
        await asyncio.Event().wait()


async def up_to_the_final_message(stream: AsyncIterator[mesh_pb2.GenerateResponse]) -> None:
    """Read a stream until its final message and no further: the edge sends the caller's
    trailers there, and runs the rest of the stream out afterwards (streams.run_out)."""
    async for response in stream:
        if response.finish_reason:
            return
    raise AssertionError("no final message")


async def test_what_a_callers_next_call_depends_on_is_done_before_the_final_message() -> None:
    # Each first stream is held open past its final message, as the edge holds it.
    # The slot: free for the next call although the tier's stream has not ended.
    limit = StreamLimit(FinalThenBusy(), "gold", max_streams=1, expected_s=0.05)
    held = [limit.generate(intent_call())]
    await up_to_the_final_message(held[-1])
    await asyncio.wait_for(up_to_the_final_message(limit.generate(intent_call())), 1)
    # The label: a repeat is a cache hit.
    cache = IntentCache(FinalThenBusy(), max_entries=10, ttl_s=60)
    held.append(cache.generate(intent_call()))
    await up_to_the_final_message(held[-1])
    hit = await asyncio.wait_for(drain(cache.generate(intent_call())), 1)
    assert [(r.text, r.tier) for r in hit] == [("ATTACK", mesh_pb2.TIER_CACHE)]
    # The turn: in the session.
    store = MemoryStore(StateSettings())
    session = SessionContext(FinalThenBusy(), store, {"intent": Window(64)})
    held.append(session.generate(intent_call(session_id="s1")))
    await up_to_the_final_message(held[-1])
    remembered = await store.get("guard-1", "s1")
    assert remembered is not None
    assert [turn.text for turn in remembered.turns] == ["The player draws a sword!", "ATTACK"]
    for stream in held:
        await close(stream)
