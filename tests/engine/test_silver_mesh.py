"""Silver on real vLLM (SmolLM2-135M on CPU) behind the real router."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.engine.conftest import Mesh, scrape
from tests.tools import grpcurl
from tiermesh.tier.v1 import tier_pb2, tier_pb2_grpc
from tiermesh.v1 import mesh_pb2

if TYPE_CHECKING:
    from tiermesh.v1.mesh_pb2_grpc import MeshAsyncStub

pytestmark = [pytest.mark.engine, pytest.mark.asyncio(loop_scope="session")]

CANCELLED = 'tiermesh_silver_requests_total{outcome="cancelled"}'
UNFINISHED = "tiermesh_silver_engine_unfinished_requests"
RUNNING = "tiermesh_silver_requests_running"


def ask(prompt: str, **fields: object) -> mesh_pb2.GenerateRequest:
    base: dict[str, object] = {
        "npc_id": "guard-1",
        "prompt": prompt,
        "task": mesh_pb2.TASK_DIALOGUE,
        "max_tokens": 32,
        "sampling": mesh_pb2.SamplingOptions(temperature=0.0),
    }
    base.update(fields)
    return mesh_pb2.GenerateRequest(**base)  # type: ignore[arg-type]


async def reply(
    stub: MeshAsyncStub, req: mesh_pb2.GenerateRequest, deadline_s: float = 60
) -> list[mesh_pb2.GenerateResponse]:
    return [r async for r in stub.Generate(req, timeout=deadline_s)]


async def until(check: object, url: str, within_s: float = 10.0) -> dict[str, float]:
    """Scrape `url` until `check(samples)` holds; the last scrape either way."""
    assert callable(check)
    deadline = time.monotonic() + within_s
    while True:
        samples = await scrape(url)
        if check(samples) or time.monotonic() > deadline:
            return samples
        await asyncio.sleep(0.1)


async def test_dialogue_streams_coherent_text_from_silver(mesh_stub: MeshAsyncStub) -> None:
    responses = await reply(mesh_stub, ask("Have you seen anything strange near the gate tonight?"))
    text = "".join(r.text for r in responses)
    words = text.split()
    assert len(words) >= 8, text
    # Real language, not token soup: mostly alphabetic words.
    assert sum(w.strip(".,!?'\"").isalpha() for w in words) / len(words) > 0.7, text
    assert {r.tier for r in responses} == {mesh_pb2.TIER_SILVER}
    assert [r.index for r in responses] == list(range(len(responses)))
    last = responses[-1]
    assert last.finish_reason in (mesh_pb2.FINISH_REASON_STOP, mesh_pb2.FINISH_REASON_LENGTH)
    assert 0 < last.usage.completion_tokens <= 32
    assert last.usage.prompt_tokens > 20  # persona + chat template + the line
    assert last.usage.time_to_first_token.ToNanoseconds() > 0


async def test_silver_caches_prefixes_and_exports_the_counters(mesh: Mesh, mesh_stub: MeshAsyncStub) -> None:
    # The same persona and a long line twice: the second prompt's prefix is in vLLM's
    # cache. Long: vLLM caches whole blocks only (on CPU, of 128 tokens).
    line = " ".join(
        f"Last night I saw light number {i} move in the old watchtower on the hill." for i in range(30)
    )
    before = await scrape(mesh.silver_metrics)
    for _ in range(2):
        await reply(mesh_stub, ask(line, max_tokens=4))
    after = await scrape(mesh.silver_metrics)

    def total(samples: dict[str, float], name: str) -> float:
        return sum(v for k, v in samples.items() if k.startswith(f"vllm:{name}_total"))

    queried = total(after, "prefix_cache_queries") - total(before, "prefix_cache_queries")
    hits = total(after, "prefix_cache_hits") - total(before, "prefix_cache_hits")
    assert queried > 2 * 400  # both prompts' tokens
    assert hits >= 256  # most of the second prompt came from the cache


async def test_greedy_and_seeded_sampling_are_reproducible(mesh_stub: MeshAsyncStub) -> None:
    greedy = ask("What is your name?", max_tokens=16)
    seeded = ask(
        "Tell me a rumour.",
        max_tokens=16,
        sampling=mesh_pb2.SamplingOptions(temperature=0.9, seed=7),
    )
    for req in (greedy, seeded):
        first, second = await reply(mesh_stub, req), await reply(mesh_stub, req)
        assert "".join(r.text for r in first) == "".join(r.text for r in second)


async def test_persona_changes_the_answer(mesh_stub: MeshAsyncStub) -> None:
    line = "Who are you and what do you do?"
    guard = await reply(mesh_stub, ask(line, npc_id="guard-1"))
    merchant = await reply(mesh_stub, ask(line, npc_id="merchant-1"))
    assert "".join(r.text for r in guard) != "".join(r.text for r in merchant)


# The router's counters of extra tier attempts: where a second engine request came from.
ATTEMPTS = tuple(
    f"tiermesh_router_{name}_total" for name in ("retries", "hedges", "resumes", "fallbacks", "probes")
)


def attempts_changed(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """The extra-attempt counters that moved between two scrapes, by how much."""
    return {
        k: v - before.get(k, 0.0)
        for k, v in after.items()
        if k.startswith(ATTEMPTS) and v != before.get(k, 0.0)
    }


async def test_client_cancel_aborts_the_engine_request(mesh: Mesh, mesh_stub: MeshAsyncStub) -> None:
    # Counted from a quiet engine: the mesh is shared, and a call an earlier test ended
    # may still be aborting, its cancellation counted after this test's first scrape.
    quiet = await until(lambda s: not s.get(UNFINISHED) and not s.get(RUNNING), mesh.silver_metrics)
    before = quiet.get(CANCELLED, 0.0)
    router_before = await scrape(mesh.router_metrics)
    call = mesh_stub.Generate(ask("Tell me the long history of the kingdom.", max_tokens=400), timeout=60)
    received = 0
    async for _ in call:
        received += 1
        if received == 3:
            busy = await scrape(mesh.silver_metrics)
            assert busy[UNFINISHED] >= 1  # the engine is working on it now
            break
    call.cancel()
    after = await until(
        lambda s: s.get(CANCELLED, 0.0) == before + 1 and s[UNFINISHED] == 0 and s[RUNNING] == 0,
        mesh.silver_metrics,
    )
    # Should it count another cancelled request, the router's extra attempts say whence.
    assert after.get(CANCELLED, 0.0) == before + 1, attempts_changed(
        router_before, await scrape(mesh.router_metrics)
    )
    assert after[UNFINISHED] == 0, "the engine still holds the cancelled request"
    assert after[RUNNING] == 0


async def test_deadline_closes_the_answer_and_frees_the_engine(mesh: Mesh, mesh_stub: MeshAsyncStub) -> None:
    """Through the router a deadline ends the answer on a whole word, marked, and the engine lets go."""
    req = ask("Describe every street of the city in detail.", max_tokens=400)
    # 400 tokens take ~20 s here; 3 s leaves Silver time to start even when cold, so the
    # answer is Silver's, closed early. A DEADLINE_EXCEEDED from the call would fail here.
    responses = await reply(mesh_stub, req, deadline_s=3.0)
    assert {r.tier for r in responses} == {mesh_pb2.TIER_SILVER}
    assert responses[-1].finish_reason == mesh_pb2.FINISH_REASON_DEADLINE
    assert "".join(r.text for r in responses).strip()
    after = await until(lambda s: s[UNFINISHED] == 0 and s[RUNNING] == 0, mesh.silver_metrics)
    assert after[UNFINISHED] == 0, "the engine still works on an answer nobody will read"
    assert after[RUNNING] == 0


async def test_tier_deadline_aborts_the_engine_request(mesh: Mesh) -> None:
    """Silver called directly: its own deadline cancels the engine request, not just the RPC."""
    before = (await scrape(mesh.silver_metrics)).get(CANCELLED, 0.0)
    request = tier_pb2.GenerateRequest(
        request_id="deadline-1",
        messages=[tier_pb2.ChatMessage(role=tier_pb2.ROLE_USER, content="Describe every street.")],
        max_tokens=400,
        sampling=mesh_pb2.SamplingOptions(temperature=0.0),
    )
    async with grpc.aio.insecure_channel(mesh.silver) as channel:
        stub = tier_pb2_grpc.TierServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            _ = [r async for r in stub.Generate(request, timeout=1.0)]
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    after = await until(
        lambda s: s.get(CANCELLED, 0.0) >= before + 1 and s[UNFINISHED] == 0, mesh.silver_metrics
    )
    assert after.get(CANCELLED, 0.0) >= before + 1
    assert after[UNFINISHED] == 0


async def test_prompt_over_the_context_is_out_of_range(mesh_stub: MeshAsyncStub) -> None:
    long_prompt = "guard " * 2600  # ≈ 2600 tokens: under the router's character cap
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await reply(mesh_stub, ask(long_prompt))
    assert caught.value.code() == grpc.StatusCode.OUT_OF_RANGE
    assert "context of 2048 tokens" in (caught.value.details() or "")
    assert len(await reply(mesh_stub, ask("Still there?", max_tokens=4))) > 0


async def test_silver_continues_an_assistant_prefix(mesh: Mesh) -> None:
    """What the router's mid-stream resume relies on: the answer goes on, not over."""
    prefix = "Halt! The north gate is closed tonight because"
    request = tier_pb2.GenerateRequest(
        request_id="resume-1",
        messages=[
            tier_pb2.ChatMessage(role=tier_pb2.ROLE_SYSTEM, content="You are a town guard."),
            tier_pb2.ChatMessage(role=tier_pb2.ROLE_USER, content="Can I pass?"),
            tier_pb2.ChatMessage(role=tier_pb2.ROLE_ASSISTANT, content=prefix),
        ],
        max_tokens=12,
        sampling=mesh_pb2.SamplingOptions(temperature=0.0),
    )
    async with grpc.aio.insecure_channel(mesh.silver) as channel:
        stub = tier_pb2_grpc.TierServiceStub(channel)
        text = "".join([r.text async for r in stub.Generate(request, timeout=60)])
    assert text.strip()
    # A continuation, not a fresh reply: it does not restart with the greeting.
    assert not text.lstrip().startswith("Halt")


async def test_silver_rejects_a_malformed_tier_request_and_keeps_serving(mesh: Mesh) -> None:
    async with grpc.aio.insecure_channel(mesh.silver) as channel:
        stub = tier_pb2_grpc.TierServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Generate(tier_pb2.GenerateRequest(request_id="x", max_tokens=4)).read()
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        health = health_pb2_grpc.HealthStub(channel)
        status = await health.Check(health_pb2.HealthCheckRequest(service="tiermesh.tier.v1.TierService"))
        assert status.status == health_pb2.HealthCheckResponse.SERVING


async def test_grpcurl_calls_generate_by_reflection(mesh: Mesh) -> None:
    assert "tiermesh.v1.Mesh" in (await grpcurl("-plaintext", mesh.router, "list")).split()
    assert "tiermesh.tier.v1.TierService" in (await grpcurl("-plaintext", mesh.silver, "list")).split()
    body = json.dumps({"npc_id": "guard-1", "prompt": "Halt!", "task": "TASK_DIALOGUE", "max_tokens": 8})
    out = await grpcurl("-plaintext", "-max-time", "30", "-d", body, mesh.router, "tiermesh.v1.Mesh/Generate")
    messages = [json.loads(chunk) for chunk in out.replace("}\n{", "}\x00{").split("\x00")]
    assert len(messages) >= 2
    assert {m["tier"] for m in messages} == {"TIER_SILVER"}
    assert messages[-1]["finish_reason"] in ("FINISH_REASON_STOP", "FINISH_REASON_LENGTH")


async def test_cli_generate_streams_a_reply(mesh: Mesh) -> None:
    result = await asyncio.to_thread(
        mesh.tiermesh, "generate", "Good evening, guard.", "--address", mesh.router,
        "--max-tokens", "12", "--temperature", "0",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.split()) >= 3
    assert "tier=silver" in result.stderr


@pytest.mark.parametrize("npc_id", ["merchant-1", "innkeeper-1"])
async def test_silver_calls_a_game_state_tool_before_answering(mesh_stub: MeshAsyncStub, npc_id: str) -> None:
    req = ask(
        "What do you have for sale today?",
        npc_id=npc_id,
        max_tokens=24,
        tool_choice=mesh_pb2.TOOL_CHOICE_REQUIRED,
    )
    responses = await reply(mesh_stub, req)
    events = [r.tool for r in responses if r.HasField("tool")]
    assert len(events) == 2, events  # the call, then its result
    call, result = events
    assert call.name in {"get_inventory", "get_quest_log", "world_time"}
    # The game-state tools that take an NPC are asked about this call's own.
    assert json.loads(call.arguments) == ({} if call.name == "world_time" else {"npc_id": npc_id})
    assert (result.name, result.error) == (call.name, False)
    assert result.result  # real game state from the MCP server
    answer = "".join(r.text for r in responses)
    assert answer.split()  # and then the NPC answered
    assert [r.index for r in responses] == list(range(len(responses)))
    # The answer was generated from a prompt carrying the tool's result: longer than
    # the same request's prompt without tools by at least the result (≈ 4 chars/token).
    plain = await reply(mesh_stub, ask("What do you have for sale today?", npc_id=npc_id, max_tokens=1))
    grown = responses[-1].usage.prompt_tokens - plain[-1].usage.prompt_tokens
    assert grown >= len(result.result) // 6, (grown, result.result)


async def test_without_tool_choice_no_tool_is_called(mesh_stub: MeshAsyncStub) -> None:
    responses = await reply(mesh_stub, ask("Hello there.", npc_id="merchant-1", max_tokens=8))
    assert not any(r.HasField("tool") for r in responses)


async def test_validate_all_passes_against_the_local_mesh(mesh: Mesh) -> None:
    cli = [sys.executable, "-m", "ops.cli"]
    command = [*cli, "validate", "all", "--json", "--config", str(mesh.config)]
    result = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, timeout=180)
    report = json.loads(result.stdout)
    assert result.returncode == 0, [c for c in report["checks"] if not c["ok"]]
    names = {(c["tier"], c["name"]) for c in report["checks"]}
    assert {("gold", "latency SLO"), ("silver", "inference"), ("bronze", "endpoint in service")} <= names
