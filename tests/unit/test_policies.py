"""Each router policy alone, over fake backends. Each test fails without its policy."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from types import SimpleNamespace
from typing import cast

import grpc
import pytest

from router.call import Call
from router.pipeline import Backend
from router.policies.admission import Admission
from router.policies.cache import IntentCache
from router.policies.fallback import Fallback
from router.policies.hedge import Hedge
from router.policies.limit import StreamLimit
from router.policies.planner import TierPlanner
from router.policies.result_cache import ResultCache
from router.policies.resume import Resume
from router.policies.retry import Retry
from router.policies.session import SessionContext
from router.state.store import MemoryStore
from router.stats import RetryBudget, TierLatency
from tests.fakes import FakeBackend, FakeClock, Step, a_call, drain, unavailable
from tiermesh.config import StateSettings, TierName
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
    hedge = Hedge(inner, "silver", lambda: 0.05, generous_budget())
    started = time.monotonic()
    out = await drain(hedge.generate(a_call()))
    assert texts(out) == "fast"
    assert time.monotonic() - started < 0.5
    assert len(inner.calls) == 2
    assert inner.cancelled == 1  # the loser was cancelled


async def test_no_hedge_when_the_first_token_is_on_time() -> None:
    inner = FakeBackend(Step(tokens=["on", "time"]))
    out = await drain(Hedge(inner, "silver", lambda: 0.5, generous_budget()).generate(a_call()))
    assert texts(out) == "ontime"
    assert len(inner.calls) == 1


async def test_no_hedge_without_a_delay_estimate_or_budget() -> None:
    slow = Step(tokens=["x"], first_delay=0.1)
    inner = FakeBackend(slow)
    await drain(Hedge(inner, "silver", lambda: None, generous_budget()).generate(a_call()))
    spent = RetryBudget(ratio=0.0, min_per_s=0.0)
    await drain(Hedge(inner, "silver", lambda: 0.01, spent).generate(a_call()))
    assert len(inner.calls) == 2  # one each: no hedges


async def test_hedge_survives_a_failing_primary() -> None:
    inner = FakeBackend(
        Step(first_delay=0.1, fail_before=unavailable()), Step(tokens=["b"], first_delay=0.15)
    )
    out = await drain(Hedge(inner, "silver", lambda: 0.05, generous_budget()).generate(a_call()))
    assert texts(out) == "b"


async def test_closing_a_hedged_stream_cancels_every_attempt() -> None:
    inner = FakeBackend(Step(tokens=["x"] * 50, first_delay=0.2), Step(tokens=["y"] * 50, first_delay=0.2))
    stream = Hedge(inner, "silver", lambda: 0.01, generous_budget()).generate(a_call())
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


def latency(**expected: float) -> dict[TierName, TierLatency]:
    return {cast(TierName, tier): TierLatency(seconds) for tier, seconds in expected.items()}


def test_planner_keeps_time_for_the_next_tier() -> None:
    planner = TierPlanner({"dialogue": ["silver", "gold"]}, latency(silver=0.2, gold=0.01))
    call = a_call(deadline_s=1.0)
    steps, skipped = planner.plan(call)
    assert [s.tier for s in steps] == ["silver", "gold"]
    assert steps[0].first_token_by == pytest.approx(call.deadline - 0.02)
    assert steps[1].first_token_by == call.deadline
    assert skipped == []


def test_planner_skips_a_tier_too_slow_for_the_deadline() -> None:
    planner = TierPlanner({"dialogue": ["silver", "gold"]}, latency(silver=0.2, gold=0.01))
    steps, skipped = planner.plan(a_call(deadline_s=0.1))
    assert [s.tier for s in steps] == ["gold"]
    assert skipped == ["silver"]


def test_planner_tries_the_last_tier_when_nothing_comes_after() -> None:
    planner = TierPlanner({"dialogue": ["silver"]}, latency(silver=0.2))
    steps, _ = planner.plan(a_call(deadline_s=0.1))
    assert [s.tier for s in steps] == ["silver"]
    assert planner.plan(a_call(deadline_s=0.1), has_last_resort=True)[0] == []


def fallback(silver: FakeBackend, gold: FakeBackend, line: str = "") -> Fallback:
    lat = latency(silver=0.05, gold=0.01)
    return Fallback(
        TierPlanner({"dialogue": ["silver", "gold"]}, lat),
        {"silver": silver, "gold": gold},
        lat,
        canned_line=lambda call: line,
        canned_tasks=frozenset({"dialogue"}),
    )


async def test_fallback_to_the_next_tier_when_the_first_fails() -> None:
    silver, gold = FakeBackend(Step(fail_before=unavailable())), FakeBackend(tier=mesh_pb2.TIER_GOLD)
    out = await drain(fallback(silver, gold).generate(a_call()))
    assert {r.tier for r in out} == {mesh_pb2.TIER_GOLD}


async def test_fallback_when_the_first_token_misses_its_budget() -> None:
    silver = FakeBackend(Step(first_delay=5.0))
    gold = FakeBackend(tier=mesh_pb2.TIER_GOLD)
    started = time.monotonic()
    out = await drain(fallback(silver, gold).generate(a_call(deadline_s=0.3)))
    assert {r.tier for r in out} == {mesh_pb2.TIER_GOLD}
    assert time.monotonic() - started < 0.3
    assert silver.cancelled == 1


async def test_the_last_tier_timing_out_at_the_deadline_counts_as_slow() -> None:
    # The last step has the whole deadline and no timer of its own: the tier call ends
    # at the deadline with DEADLINE_EXCEEDED, and that is the tier being slow.
    late = StatusError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
    lat = latency(silver=0.05)
    silver = FakeBackend(Step(first_delay=0.2, fail_before=late))
    policy = Fallback(
        TierPlanner({"dialogue": ["silver"]}, lat),
        {"silver": silver},
        lat,
        canned_line=lambda call: "",
        canned_tasks=frozenset(),
    )
    with pytest.raises(StatusError) as caught:
        await drain(policy.generate(a_call(deadline_s=0.2)))
    assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "silver gave no first token within" in caught.value.message
    assert lat["silver"].samples == 1
    assert lat["silver"].quantile(0.5) >= 0.2  # a censored sample: at least this long


async def test_canned_line_when_every_tier_fails() -> None:
    down = Step(fail_before=unavailable())
    out = await drain(fallback(FakeBackend(down), FakeBackend(down), "Move along.").generate(a_call()))
    assert [(r.text, r.tier) for r in out] == [("Move along.", mesh_pb2.TIER_CACHE)]
    assert out[0].finish_reason == mesh_pb2.FINISH_REASON_STOP


async def test_without_a_canned_line_every_tier_failing_is_unavailable() -> None:
    down = Step(fail_before=unavailable("boom"))
    with pytest.raises(StatusError) as caught:
        await drain(fallback(FakeBackend(down), FakeBackend(down)).generate(a_call()))
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert "boom" in caught.value.message


async def test_caller_faults_do_not_fall_back() -> None:
    bad = StatusError(grpc.StatusCode.OUT_OF_RANGE, "prompt too long")
    gold = FakeBackend()
    with pytest.raises(StatusError) as caught:
        await drain(fallback(FakeBackend(Step(fail_before=bad)), gold).generate(a_call()))
    assert caught.value.code == grpc.StatusCode.OUT_OF_RANGE
    assert gold.calls == []


async def test_every_tier_full_is_resource_exhausted_with_retry_info() -> None:
    full = Step(fail_before=StatusError(grpc.StatusCode.RESOURCE_EXHAUSTED, "full", retry_after_s=0.3))
    with pytest.raises(StatusError) as caught:
        await drain(fallback(FakeBackend(full), FakeBackend(full)).generate(a_call()))
    assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert caught.value.retry_after_s == pytest.approx(0.3)


def test_planner_routes_long_answers_past_a_short_answer_tier() -> None:
    planner = TierPlanner(
        {"bark": ["gold", "silver"]}, latency(gold=0.01, silver=0.2), max_tokens={"gold": 16}
    )
    assert planner.chain(a_call(mesh_pb2.TASK_BARK, max_tokens=8)) == ["gold", "silver"]
    assert planner.chain(a_call(mesh_pb2.TASK_BARK, max_tokens=32)) == ["silver"]


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


async def test_the_last_tier_gets_the_call_itself_and_earlier_ones_a_first_token_budget() -> None:
    silver, gold = FakeBackend(Step(fail_before=unavailable())), FakeBackend(tier=mesh_pb2.TIER_GOLD)
    call = a_call()
    await drain(fallback(silver, gold).generate(call))
    assert silver.calls[0].first_token_by is not None
    assert silver.calls[0].first_token_by < call.deadline
    assert gold.calls[0] is call
