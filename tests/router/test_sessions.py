"""NPC session state through the real router: memory across turns and tiers, the
session API, concurrency, and a store that is down. Redis tests use a real
redis-server (Debian's), started here."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc
import pytest
import pytest_asyncio
from redis.asyncio import Redis

from ops.settings import Settings
from router.app import Router, start_router
from router.settings import (
    Persona,
    RouterSettings,
    StateSettings,
    TaskPolicy,
    TierSettings,
    TrafficSettings,
)
from tests.doubles import Script, ScriptedTier, start_scripted_tier
from tiermesh.serving import Serving
from tiermesh.tier.v1 import tier_pb2
from tiermesh.v1 import mesh_pb2, mesh_pb2_grpc

if TYPE_CHECKING:
    from tiermesh.v1.mesh_pb2_grpc import MeshAsyncStub


def settings(silver: list[str], gold: list[str], state: StateSettings) -> Settings:
    def task(tiers: list[str]) -> TaskPolicy:
        return TaskPolicy(tiers=tiers, default_max_tokens=32, max_tokens_limit=64, default_deadline_s=5,  # type: ignore[arg-type]
                          history_tokens=4096)  # fmt: skip

    return Settings(
        router=RouterSettings(
            listen="127.0.0.1:0",
            metrics_port=0,
            tiers={
                "silver": TierSettings(endpoints=silver, health_retry_s=0.2, expected_ttft_s=0.05),
                "gold": TierSettings(endpoints=gold, health_retry_s=0.2, expected_ttft_s=0.01),
            },
            tasks={t: task(["silver", "gold"]) for t in ("intent", "bark", "dialogue", "longform")},
        ),
        personas={"guard-1": Persona(system="You guard the gate.")},
        state=state,
    )


class Fleet:
    def __init__(self) -> None:
        self.silver = ScriptedTier(mesh_pb2.TIER_SILVER)
        self.gold = ScriptedTier(mesh_pb2.TIER_GOLD)
        self.servers: list[Serving] = []
        self.routers: list[Router] = []
        self.channels: list[grpc.aio.Channel] = []

    async def start(
        self, state: StateSettings, routers: int = 1, traffic: TrafficSettings | None = None
    ) -> list[MeshAsyncStub]:
        for tier in (self.silver, self.gold):
            self.servers.append(await start_scripted_tier(tier))
        silver, gold = (f"127.0.0.1:{s.port}" for s in self.servers)
        stubs = []
        for _ in range(routers):
            config = settings([silver], [gold], state)
            if traffic is not None:
                config.router.traffic = traffic
            router = await start_router(config.router_config())
            self.routers.append(router)
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{router.port}")
            self.channels.append(channel)
            stubs.append(mesh_pb2_grpc.MeshStub(channel))
        return stubs

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()
        for router in self.routers:
            await router.close(None)
        for server in self.servers:
            await server.server.stop(None)


@pytest_asyncio.fixture
async def fleet() -> AsyncIterator[Fleet]:
    fleet = Fleet()
    yield fleet
    await fleet.close()


def turn(prompt: str, session: str = "s-1") -> mesh_pb2.GenerateRequest:
    return mesh_pb2.GenerateRequest(
        npc_id="guard-1", session_id=session, prompt=prompt, task=mesh_pb2.TASK_DIALOGUE
    )


async def say(stub: MeshAsyncStub, request: mesh_pb2.GenerateRequest) -> str:
    return "".join([r.text async for r in stub.Generate(request, timeout=5)])


def conversation(seen: tier_pb2.GenerateRequest) -> list[tuple[int, str]]:
    return [(m.role, m.content) for m in seen.messages[1:]]


async def test_a_fallback_mid_conversation_keeps_the_context(fleet: Fleet) -> None:
    [stub] = await fleet.start(StateSettings())
    fleet.silver.reset(Script(tokens=["I am ", "Brom."]))
    assert await say(stub, turn("Who are you?")) == "I am Brom."
    fleet.silver.reset(Script(fail_at=0))  # Silver fails: Gold answers the next turn
    fleet.gold.reset(Script(tokens=["Still Brom."]))
    assert await say(stub, turn("And your name again?")) == "Still Brom."
    assert conversation(fleet.gold.seen[-1].request) == [
        (tier_pb2.ROLE_USER, "Who are you?"),
        (tier_pb2.ROLE_ASSISTANT, "I am Brom."),
        (tier_pb2.ROLE_USER, "And your name again?"),
    ]
    session = (await stub.GetSession(mesh_pb2.GetSessionRequest(npc_id="guard-1", session_id="s-1"))).session
    assert [(t.speaker, t.text, t.tier) for t in session.turns] == [
        (mesh_pb2.SPEAKER_PLAYER, "Who are you?", mesh_pb2.TIER_UNSPECIFIED),
        (mesh_pb2.SPEAKER_NPC, "I am Brom.", mesh_pb2.TIER_SILVER),
        (mesh_pb2.SPEAKER_PLAYER, "And your name again?", mesh_pb2.TIER_UNSPECIFIED),
        (mesh_pb2.SPEAKER_NPC, "Still Brom.", mesh_pb2.TIER_GOLD),
    ]
    assert session.version == 2


async def test_disposition_and_facts_reach_the_prompt_and_reset_forgets(fleet: Fleet) -> None:
    [stub] = await fleet.start(StateSettings())
    update = mesh_pb2.UpdateSessionRequest(npc_id="guard-1", session_id="s-2", disposition="wary",
                                           facts={"player_gold": "12", "quest": "lost ring"})  # fmt: skip
    session = (await stub.UpdateSession(update)).session
    assert (session.disposition, dict(session.facts), session.version) == (
        "wary",
        {"player_gold": "12", "quest": "lost ring"},
        1,
    )
    await say(stub, turn("Can I pass?", "s-2"))
    system = fleet.silver.seen[-1].request.messages[0].content
    assert "wary" in system
    assert "quest: lost ring" in system
    stale = mesh_pb2.UpdateSessionRequest(
        npc_id="guard-1", session_id="s-2", disposition="friendly", expected_version=1
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.UpdateSession(stale)
    assert caught.value.code() == grpc.StatusCode.ABORTED
    assert (
        await stub.DeleteSession(mesh_pb2.DeleteSessionRequest(npc_id="guard-1", session_id="s-2"))
    ).deleted
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetSession(mesh_pb2.GetSessionRequest(npc_id="guard-1", session_id="s-2"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetSession(mesh_pb2.GetSessionRequest(npc_id="guard 1", session_id="s-2"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_history_is_trimmed_to_the_task_budget(fleet: Fleet) -> None:
    [stub] = await fleet.start(StateSettings())
    for i in range(30):
        await say(stub, turn(f"Line number {i} " + "blah " * 40, "s-3"))
    prompt_chars = sum(len(m.content) for m in fleet.silver.seen[-1].request.messages)
    assert prompt_chars < 4 * 4096 + 1000  # ≈ the 4096-token budget, not all 60 turns


async def test_50_concurrent_turns_on_one_session_lose_no_update_in_redis(
    fleet: Fleet, redis_server: str
) -> None:
    await Redis.from_url(redis_server).flushdb()
    stubs = await fleet.start(StateSettings(backend="redis", redis_url=redis_server), routers=2)
    fleet.silver.reset(Script(tokens=["ok"], delay=0.01))
    await asyncio.gather(*(say(stubs[i % 2], turn(f"turn {i}", "busy")) for i in range(50)))
    session = (
        await stubs[0].GetSession(mesh_pb2.GetSessionRequest(npc_id="guard-1", session_id="busy"))
    ).session
    assert session.version == 50
    players = sorted(t.text for t in session.turns if t.speaker == mesh_pb2.SPEAKER_PLAYER)
    assert players == sorted(f"turn {i}" for i in range(50))


async def test_redis_down_degrades_to_stateless(fleet: Fleet) -> None:
    [stub] = await fleet.start(StateSettings(backend="redis", redis_url="redis://127.0.0.1:1/0"))
    assert await say(stub, turn("Hello?", "s-4")) == "Halt! Who goes there?"  # answered, without memory
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetSession(mesh_pb2.GetSessionRequest(npc_id="guard-1", session_id="s-4"))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_corrupted_state_starts_the_session_over(fleet: Fleet, redis_server: str) -> None:
    redis = Redis.from_url(redis_server)
    await redis.set("tiermesh:session:guard-1:s-5", b"\xff\xfe not a session")
    [stub] = await fleet.start(StateSettings(backend="redis", redis_url=redis_server))
    assert await say(stub, turn("Hello?", "s-5"))
    session = (await stub.GetSession(mesh_pb2.GetSessionRequest(npc_id="guard-1", session_id="s-5"))).session
    assert len(session.turns) == 2
    await redis.aclose()


async def test_converse_streams_turns_and_state_and_survives_a_bad_turn(fleet: Fleet) -> None:
    [stub] = await fleet.start(StateSettings())
    # Tokens 10 ms apart, as an engine's: back to back, the router may merge them into one
    # delta (coalescing), and this counts deltas.
    fleet.silver.reset(Script(tokens=["Aye", "."], delay=0.01))
    turns = [
        turn("Good evening.", "talk"),
        turn("", "talk"),  # bad: empty prompt
        turn("Any news?", "talk"),
    ]

    async def requests() -> AsyncIterator[mesh_pb2.ConverseRequest]:
        for t in turns:
            yield mesh_pb2.ConverseRequest(turn=t)

    events = [(r.turn, r.WhichOneof("event"), r) async for r in stub.Converse(requests(), timeout=10)]
    kinds = [(n, kind) for n, kind, _ in events]
    assert kinds == [(0, "delta"), (0, "delta"), (0, "session"), (1, "error"),
                     (2, "delta"), (2, "delta"), (2, "session")]  # fmt: skip
    assert events[3][2].error.code == "INVALID_ARGUMENT"
    final = events[-1][2].session
    assert [t.text for t in final.turns] == ["Good evening.", "Aye.", "Any news?", "Aye."]
    # The second answered turn saw the first one.
    assert [m.content for m in fleet.silver.seen[-1].request.messages[1:]] == [
        "Good evening.",
        "Aye.",
        "Any news?",
    ]
