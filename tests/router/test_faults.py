"""Fault injection: several scripted replicas per tier behind the real router.

The replicas are test doubles (tests/doubles.py) so faults can be injected on cue;
everything between them and the client is the real router over real gRPC.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import grpc
import pytest
import pytest_asyncio
from google.rpc import error_details_pb2, status_pb2
from prometheus_client import REGISTRY

from ops.settings import Settings
from router.app import Router
from router.settings import (
    AdmissionSettings,
    BreakerSettings,
    Persona,
    RouterSettings,
    TaskPolicy,
    TierSettings,
)
from tests.doubles import Script, ScriptedTier, start_scripted_tier
from tests.router.conftest import start_on
from tiermesh.serving import Serving
from tiermesh.v1 import mesh_pb2, mesh_pb2_grpc

if TYPE_CHECKING:
    from tiermesh.v1.mesh_pb2_grpc import MeshAsyncStub

pytestmark = pytest.mark.asyncio(loop_scope="session")
CANNED = "Move along, citizen."


@dataclass
class Replica:
    tier: ScriptedTier
    serving: Serving | None
    port: int

    async def kill(self) -> None:
        """Stop at once: in-flight streams break, new connections are refused."""
        assert self.serving is not None
        await self.serving.server.stop(None)
        self.serving = None

    async def restart(self) -> None:
        self.serving = await start_scripted_tier(self.tier, f"127.0.0.1:{self.port}")


@dataclass
class Fleet:
    silver: list[Replica]
    gold: list[Replica]
    router: Router
    stub: MeshAsyncStub
    channel: grpc.aio.Channel = field(repr=False)


async def replicas(count: int, tier: mesh_pb2.Tier.ValueType) -> list[Replica]:
    fleet = []
    for _ in range(count):
        double = ScriptedTier(tier)
        serving = await start_scripted_tier(double)
        fleet.append(Replica(double, serving, serving.port))
    return fleet


def settings(
    silver: list[str], gold: list[str], *, silver_tier: dict[str, object] | None = None, **router: object
) -> Settings:
    def tier(endpoints: list[str], **overrides: object) -> TierSettings:
        base: dict[str, object] = {"endpoints": endpoints, "health_retry_s": 0.2, "expected_ttft_s": 0.05}
        return TierSettings.model_validate(base | overrides)

    def task(tiers: list[str], **overrides: object) -> TaskPolicy:
        base = {
            "tiers": tiers,
            "default_max_tokens": 64,
            "max_tokens_limit": 512,
            "default_deadline_s": 5,
            "on_midstream_failure": "resume",
            "canned": True,
        }
        return TaskPolicy.model_validate(base | overrides)

    return Settings(
        router=RouterSettings(
            listen="127.0.0.1:0",
            metrics_port=0,
            tiers={"silver": tier(silver, **(silver_tier or {})), "gold": tier(gold)},
            tasks={
                "dialogue": task(["silver", "gold"]),
                "bark": task(["silver"], canned=False, on_midstream_failure="fail"),
                "intent": task(["gold", "silver"]),
                "longform": task(["silver"]),
            },
            breaker=BreakerSettings(failures_to_open=3, base_ejection_s=0.3, max_ejection_s=1.0),
            **router,  # type: ignore[arg-type]
        ),
        personas={"guard-1": Persona(system="You guard the gate.", fallback_line=CANNED)},
    )


# On both data planes (data_path.edge and tier_client): grpc.aio's and nghttp2's.
@pytest_asyncio.fixture(loop_scope="session", params=["grpc", "native"])
async def make_fleet(request: pytest.FixtureRequest) -> AsyncIterator[object]:
    fleets: list[Fleet] = []

    async def make(silver: int = 3, gold: int = 1, extra_silver: tuple[str, ...] = (), **kw: object) -> Fleet:
        s, g = await replicas(silver, mesh_pb2.TIER_SILVER), await replicas(gold, mesh_pb2.TIER_GOLD)
        endpoints = [f"127.0.0.1:{r.port}" for r in s] + list(extra_silver)
        config = settings(endpoints, [f"127.0.0.1:{r.port}" for r in g], **kw)  # type: ignore[arg-type]
        router = await start_on(request.param, config)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{router.port}")
        fleet = Fleet(s, g, router, mesh_pb2_grpc.MeshStub(channel), channel)
        fleets.append(fleet)
        return fleet

    yield make
    for fleet in fleets:
        await fleet.channel.close()
        await fleet.router.close(None)
        for replica in fleet.silver + fleet.gold:
            if replica.serving is not None:
                await replica.serving.server.stop(None)


def ask(task: mesh_pb2.Task.ValueType = mesh_pb2.TASK_DIALOGUE) -> mesh_pb2.GenerateRequest:
    return mesh_pb2.GenerateRequest(npc_id="guard-1", prompt="Who goes there?", task=task)


@dataclass
class Outcome:
    code: grpc.StatusCode
    responses: list[mesh_pb2.GenerateResponse]
    seconds: float
    error: grpc.aio.AioRpcError | None = None

    @property
    def tiers(self) -> set[int]:
        return {r.tier for r in self.responses}


async def call(
    stub: MeshAsyncStub,
    req: mesh_pb2.GenerateRequest | None = None,
    deadline_s: float = 3.0,
    metadata: tuple[tuple[str, str], ...] = (),
) -> Outcome:
    started = time.monotonic()
    responses: list[mesh_pb2.GenerateResponse] = []
    try:
        async for response in stub.Generate(req or ask(), timeout=deadline_s, metadata=metadata):
            responses.append(response)
    except grpc.aio.AioRpcError as e:
        return Outcome(e.code(), responses, time.monotonic() - started, e)
    return Outcome(grpc.StatusCode.OK, responses, time.monotonic() - started)


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def retry_delay(error: grpc.aio.AioRpcError) -> float:
    """The google.rpc.RetryInfo delay carried in the status details."""
    raw = dict(error.trailing_metadata() or ())["grpc-status-details-bin"]
    status = status_pb2.Status.FromString(raw)
    info = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(info)
    return float(info.retry_delay.ToNanoseconds() / 1e9)


async def test_a_task_with_slots_of_its_own_is_not_queued_behind_a_full_tier(make_fleet: object) -> None:
    # Barks here stand for Gold's intents: answered from capacity the other tasks do not use.
    fleet: Fleet = await make_fleet(  # type: ignore[operator]
        silver=1, silver_tier={"max_streams": 1, "max_streams_by_task": {"bark": 2}}
    )
    fleet.silver[0].tier.reset(Script(tokens=["tok"] * 20, delay=0.02))  # 0.4 s streams
    assert (await call(fleet.stub, ask(mesh_pb2.TASK_DIALOGUE))).code == grpc.StatusCode.OK  # learns 0.4 s
    busy = asyncio.ensure_future(call(fleet.stub, ask(mesh_pb2.TASK_DIALOGUE), deadline_s=5.0))
    await fleet.silver[0].tier.wait_for_streams(2)
    bark = asyncio.ensure_future(call(fleet.stub, ask(mesh_pb2.TASK_BARK), deadline_s=2.0))
    await fleet.silver[0].tier.wait_for_streams(3)
    assert not busy.done()  # the bark started beside the dialogue, not after it
    assert (await bark).code == grpc.StatusCode.OK
    assert bark.result().tiers == {mesh_pb2.TIER_SILVER}
    assert (await busy).code == grpc.StatusCode.OK


async def test_replica_killed_mid_load_loses_no_stream(make_fleet: object) -> None:
    fleet: Fleet = await make_fleet()  # type: ignore[operator]
    for replica in fleet.silver:
        replica.tier.reset(Script(tokens=["tok"] * 20, delay=0.01))
    resumes = metric("tiermesh_router_resumes_total", tier="silver")
    calls = [asyncio.ensure_future(call(fleet.stub, deadline_s=5.0)) for _ in range(60)]
    # Kill once a stream is surely mid-way: its first token went out 30 ms ago, 16 remain.
    # A fixed sleep raced a slow machine, where no stream had a token yet (retries, not resumes).
    await fleet.silver[0].tier.wait_for_token(3)
    await fleet.silver[0].kill()
    outcomes = await asyncio.gather(*calls)
    assert [o.code for o in outcomes] == [grpc.StatusCode.OK] * 60
    assert all(o.responses[-1].finish_reason for o in outcomes)
    # Streams cut mid-way were continued elsewhere with their text as a prefix.
    assert metric("tiermesh_router_resumes_total", tier="silver") > resumes
    prefixed = [seen for r in fleet.silver[1:] for seen in r.tier.seen if seen.request.messages[-1].role == 3]
    assert prefixed
    assert all(seen.request.messages[-1].content.startswith("tok") for seen in prefixed)


async def test_hanging_replica_is_beaten_by_a_hedge(make_fleet: object) -> None:
    # Round-robin gives the hung replica every other primary: only a hedge saves those.
    fleet: Fleet = await make_fleet(  # type: ignore[operator]
        silver=2, silver_tier={"hedge": True, "hedge_min_samples": 10, "balancer": "round_robin"}
    )
    for _ in range(20):  # observed time to first token: the hedge delay
        assert (await call(fleet.stub)).code == grpc.StatusCode.OK
    fleet.silver[0].tier.reset(Script(hang=True))
    hedges = metric("tiermesh_router_hedges_total", tier="silver", outcome="hedge_won")
    outcomes = [await call(fleet.stub, deadline_s=2.0) for _ in range(10)]
    assert all(o.code == grpc.StatusCode.OK and o.tiers == {mesh_pb2.TIER_SILVER} for o in outcomes)
    assert max(o.seconds for o in outcomes) < 1.0
    assert metric("tiermesh_router_hedges_total", tier="silver", outcome="hedge_won") > hedges
    # The losing attempt was cancelled at the tier.
    await asyncio.wait_for(fleet.silver[0].tier.cancelled_event.wait(), 2.0)


async def test_slow_replica_gets_a_small_share(make_fleet: object) -> None:
    fleet: Fleet = await make_fleet()  # type: ignore[operator]
    fleet.silver[0].tier.reset(Script(delay=0.08))  # 80 ms per token: the tail
    for replica in fleet.silver[1:]:
        replica.tier.reset(Script(delay=0.002))

    async def worker() -> None:
        for _ in range(25):
            assert (await call(fleet.stub)).code == grpc.StatusCode.OK

    await asyncio.gather(*(worker() for _ in range(4)))
    counts = [len(r.tier.seen) for r in fleet.silver]
    assert counts[0] / sum(counts) < 0.2, counts


async def test_replica_returning_errors_is_retried_around_and_ejected(make_fleet: object) -> None:
    # Round-robin sends the broken replica its share for sure: only the breaker stops it.
    fleet: Fleet = await make_fleet(silver_tier={"balancer": "round_robin"})  # type: ignore[operator]
    fleet.silver[0].tier.reset(Script(fail_at=0, fail_code=grpc.StatusCode.INTERNAL))
    ejections = metric("tiermesh_router_ejections_total", tier="silver", reason="failures")
    outcomes = [await call(fleet.stub) for _ in range(30)]
    assert all(o.code == grpc.StatusCode.OK and o.tiers == {mesh_pb2.TIER_SILVER} for o in outcomes)
    assert metric("tiermesh_router_ejections_total", tier="silver", reason="failures") > ejections
    assert len(fleet.silver[0].tier.seen) <= 6  # three to open, then trial calls only


async def test_whole_tier_down_falls_back_within_the_deadline_and_recovers(make_fleet: object) -> None:
    fleet: Fleet = await make_fleet(silver=2)  # type: ignore[operator]
    fallbacks = metric("tiermesh_router_fallbacks_total", task="dialogue", tier="silver", reason="failed")
    for replica in fleet.silver:
        await replica.kill()
    outcomes = [await call(fleet.stub, deadline_s=1.0) for _ in range(5)]
    assert all(o.code == grpc.StatusCode.OK and o.tiers == {mesh_pb2.TIER_GOLD} for o in outcomes)
    assert all(o.seconds < 1.0 for o in outcomes)
    assert (
        metric("tiermesh_router_fallbacks_total", task="dialogue", tier="silver", reason="failed") > fallbacks
    )
    for replica in fleet.silver:
        await replica.restart()
    recovered = False
    for _ in range(40):  # breakers half-open after 0.3-1 s; health watch reconnects
        if (await call(fleet.stub)).tiers == {mesh_pb2.TIER_SILVER}:
            recovered = True
            break
        await asyncio.sleep(0.1)
    assert recovered, "traffic did not return to silver after it came back"


async def test_refused_endpoint_among_replicas_costs_nothing(make_fleet: object) -> None:
    fleet: Fleet = await make_fleet(silver=2, extra_silver=("127.0.0.1:1",))  # type: ignore[operator]
    outcomes = [await call(fleet.stub) for _ in range(20)]
    assert all(o.code == grpc.StatusCode.OK and o.tiers == {mesh_pb2.TIER_SILVER} for o in outcomes)


async def test_everything_down_gives_the_canned_line_or_a_fast_unavailable(make_fleet: object) -> None:
    fleet: Fleet = await make_fleet(silver=1, gold=1)  # type: ignore[operator]
    for replica in fleet.silver + fleet.gold:
        await replica.kill()
    canned = await call(fleet.stub, deadline_s=1.0)
    assert canned.code == grpc.StatusCode.OK
    assert [(r.text, r.tier) for r in canned.responses] == [(CANNED, mesh_pb2.TIER_FALLBACK)]
    bark = await call(fleet.stub, ask(mesh_pb2.TASK_BARK), deadline_s=2.0)  # no canned line for barks
    assert bark.code == grpc.StatusCode.UNAVAILABLE
    assert bark.seconds < 1.0


async def test_full_tier_answers_resource_exhausted_with_retry_info_before_the_deadline(
    make_fleet: object,
) -> None:
    fleet: Fleet = await make_fleet(silver=1, silver_tier={"max_streams": 1})  # type: ignore[operator]
    fleet.silver[0].tier.reset(Script(tokens=["tok"] * 20, delay=0.02))  # 0.4 s streams
    assert (await call(fleet.stub, ask(mesh_pb2.TASK_BARK))).code == grpc.StatusCode.OK  # learns 0.4 s
    busy = asyncio.ensure_future(call(fleet.stub, ask(mesh_pb2.TASK_BARK), deadline_s=5.0))
    await fleet.silver[0].tier.wait_for_streams(2)
    full = await call(fleet.stub, ask(mesh_pb2.TASK_BARK), deadline_s=0.3)
    assert full.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert full.error is not None
    # Shed at once on the expected wait, not after queueing until the deadline.
    assert "expected wait" in (full.error.details() or "")
    assert retry_delay(full.error) > 0
    # A wait that fits the deadline queues instead, and is served.
    assert (await call(fleet.stub, ask(mesh_pb2.TASK_BARK), deadline_s=3.0)).code == grpc.StatusCode.OK
    # Dialogue can fall back to gold instead of being refused.
    busy_again = asyncio.ensure_future(call(fleet.stub, ask(mesh_pb2.TASK_BARK), deadline_s=5.0))
    await fleet.silver[0].tier.wait_for_streams(4)
    assert (await call(fleet.stub, deadline_s=0.3)).tiers == {mesh_pb2.TIER_GOLD}
    assert (await busy).code == grpc.StatusCode.OK
    assert (await busy_again).code == grpc.StatusCode.OK


async def test_rate_limited_client_gets_retry_info(make_fleet: object) -> None:
    fleet: Fleet = await make_fleet(  # type: ignore[operator]
        silver=1, admission=AdmissionSettings(rate_per_s=1.0, burst=2)
    )
    alice = (("x-client-id", "alice"),)
    assert (await call(fleet.stub, metadata=alice)).code == grpc.StatusCode.OK
    assert (await call(fleet.stub, metadata=alice)).code == grpc.StatusCode.OK
    limited = await call(fleet.stub, metadata=alice)
    assert limited.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert limited.error is not None
    assert 0 < retry_delay(limited.error) <= 1.0
    assert (await call(fleet.stub, metadata=(("x-client-id", "bob"),))).code == grpc.StatusCode.OK


async def test_client_cancel_cancels_every_attempt(make_fleet: object) -> None:
    fleet: Fleet = await make_fleet(  # type: ignore[operator]
        silver=2, silver_tier={"hedge": True, "hedge_min_samples": 5}
    )
    for _ in range(10):
        await call(fleet.stub)
    for replica in fleet.silver:
        replica.tier.reset(Script(hang=True))
    pending = fleet.stub.Generate(ask(), timeout=5.0)
    consumer = asyncio.ensure_future(pending.read())
    for replica in fleet.silver:  # the primary and its hedge
        await replica.tier.wait_for_streams(1)
    pending.cancel()
    await asyncio.gather(consumer, return_exceptions=True)
    for replica in fleet.silver:
        await asyncio.wait_for(replica.tier.cancelled_event.wait(), 2.0)
