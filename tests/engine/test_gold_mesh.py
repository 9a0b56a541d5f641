"""Gold on a real Triton (PyTriton) with llama.cpp and the intent encoder on CPU, behind
the real router.

Intents are labelled by the encoder (deterministic): the held-out part of the labelled set
must stay above a floor. Barks come from the 135M stand-in LLM, which is no judge: those
tests check the paths, not the words.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest
import yaml
from tritonclient.grpc.aio import InferenceServerClient

from tests.engine.conftest import Mesh, scrape, start_mesh, stop_mesh
from tiermesh.v1 import mesh_pb2, mesh_pb2_grpc

if TYPE_CHECKING:
    from tiermesh.v1.mesh_pb2_grpc import MeshAsyncStub

pytestmark = [pytest.mark.engine, pytest.mark.asyncio(loop_scope="session")]

GUARD_INTENTS = {"GREET", "WARN", "ATTACK", "IGNORE", "FLEE"}
ENSEMBLE = Path("services/gold/model_repository/ensemble")
SITUATIONS = [
    f"{who} {what} {where}"
    for who in ("A drunk farmer", "A masked stranger", "The king's herald", "A crying child", "An orc")
    for what in ("draws a blade", "asks for directions", "offers a bribe", "throws a stone", "runs")
    for where in ("at the gate.", "in the rain at midnight.")
]


def intent(situation: str, **fields: object) -> mesh_pb2.GenerateRequest:
    base: dict[str, object] = {"npc_id": "guard-1", "prompt": situation, "task": mesh_pb2.TASK_INTENT}
    base.update(fields)
    return mesh_pb2.GenerateRequest(**base)  # type: ignore[arg-type]


async def answer(
    stub: MeshAsyncStub, req: mesh_pb2.GenerateRequest, deadline_s: float = 10.0
) -> tuple[str, set[int]]:
    responses = [r async for r in stub.Generate(req, timeout=deadline_s)]
    return "".join(r.text for r in responses), {r.tier for r in responses}


async def test_triton_and_the_ensemble_model_are_ready(mesh: Mesh) -> None:
    client = InferenceServerClient(mesh.gold)
    try:
        assert await client.is_server_ready()
        assert await client.is_model_ready("ensemble")
        metadata = await client.get_model_metadata("ensemble", as_json=True)
        assert {i["name"] for i in metadata["inputs"]} >= {"text_input", "max_tokens", "stream"}
        # The same outputs as the production ensemble (model_repository/ensemble) declares.
        config = (ENSEMBLE / "config.pbtxt").read_text()
        declared = re.findall(r'name: "(\w+)"', config.partition("output [")[2].partition("]\n")[0])
        assert declared == ["text_output", "prompt_tokens"]
        assert [o["name"] for o in metadata["outputs"]] == declared
    finally:
        await client.close()


async def test_the_intent_encoder_is_served_beside_the_ensemble(mesh: Mesh) -> None:
    client = InferenceServerClient(mesh.gold)
    try:
        assert await client.is_model_ready("intent_encoder")
        metadata = await client.get_model_metadata("intent_encoder", as_json=True)
        assert [i["name"] for i in metadata["inputs"]] == ["text"]
        assert [(o["name"], o["shape"]) for o in metadata["outputs"]] == [("embedding", ["-1", "384"])]
    finally:
        await client.close()


# Measured 83.1% (64/77) with the tuned 4-layer int8 encoder when the floor was set, 81.8% since
# its weights are quantised per output channel (its fp32 graph also scores 81.8%). Tuning is
# seeded and the guides fixed, but `make model` tunes on the machine that runs the tests, and
# one whose CPU sums floats in another order tunes a slightly different model: the variants
# measured side by side ranged 81.8–85.7%. Below this floor (the published encoder scores
# 72.7%) the tuning, the guides or the path has regressed.
HELD_OUT_FLOOR = 0.78


async def test_held_out_intents_stay_above_the_accuracy_floor(mesh_stub: MeshAsyncStub) -> None:
    from ops.evaluate import Report, load_set, router_asker, run

    report = Report(await run(router_asker(mesh_stub, 5.0), load_set(split="held_out")))
    assert {a.tier for a in report.answers} == {"TIER_GOLD"}
    assert all(a.score is not None and -1.0 <= a.score <= 1.0 for a in report.answers)
    assert report.accuracy >= HELD_OUT_FLOOR, report.lines()


async def test_an_unknown_label_set_is_scored_by_the_encoder(mesh_stub: MeshAsyncStub) -> None:
    """Labels with no guide are described by their names: still one of them, from Gold, scored."""
    req = intent("A huge dragon lands on the gate.", intents=["RUN_AWAY", "SAY_HELLO"], bypass_cache=True)
    [reply] = [r async for r in mesh_stub.Generate(req, timeout=10)]
    assert reply.text in {"RUN_AWAY", "SAY_HELLO"}
    assert reply.tier == mesh_pb2.TIER_GOLD
    assert reply.HasField("score")


async def test_a_situation_longer_than_the_encoder_window_is_answered(mesh_stub: MeshAsyncStub) -> None:
    long = "An orc warrior charges at the gate with his axe raised. " + "The crowd murmurs. " * 200
    text, tiers = await answer(mesh_stub, intent(long, bypass_cache=True))
    assert text in GUARD_INTENTS
    assert tiers == {mesh_pb2.TIER_GOLD}


async def test_a_bark_streams_from_gold(mesh_stub: MeshAsyncStub) -> None:
    req = mesh_pb2.GenerateRequest(
        npc_id="guard-1", prompt="A thief runs past with a stolen purse.", task=mesh_pb2.TASK_BARK,
        max_tokens=12, sampling=mesh_pb2.SamplingOptions(temperature=0.0),
    )  # fmt: skip
    responses = [r async for r in mesh_stub.Generate(req, timeout=10)]
    assert {r.tier for r in responses} == {mesh_pb2.TIER_GOLD}
    assert len(responses) >= 4  # streamed token by token
    assert "".join(r.text for r in responses).split()
    assert responses[-1].finish_reason in (mesh_pb2.FINISH_REASON_LENGTH, mesh_pb2.FINISH_REASON_STOP)
    assert 0 < responses[-1].usage.completion_tokens <= 12
    # The persona's system text and the situation, in the chat template: dozens of tokens.
    assert responses[-1].usage.prompt_tokens > 20


async def test_every_intent_is_a_member_of_the_set_for_50_situations(mesh_stub: MeshAsyncStub) -> None:
    tiers: list[int] = []
    for situation in SITUATIONS:
        text, served = await answer(mesh_stub, intent(situation, bypass_cache=True))
        assert text in GUARD_INTENTS, (situation, text)
        tiers.extend(served)
    assert tiers.count(mesh_pb2.TIER_GOLD) >= 40  # Gold answers; Silver only if Gold is full


async def test_intents_given_in_the_request_are_respected(mesh_stub: MeshAsyncStub) -> None:
    text, _ = await answer(
        mesh_stub,
        intent("A merchant waves from his cart.", intents=["BUY", "SELL", "LEAVE"], bypass_cache=True),
    )
    assert text in {"BUY", "SELL", "LEAVE"}


async def test_32_concurrent_callers_are_all_answered(mesh_stub: MeshAsyncStub) -> None:
    calls = [
        answer(mesh_stub, intent(f"Wave {i}: {SITUATIONS[i]}", bypass_cache=True), deadline_s=20.0)
        for i in range(32)
    ]
    answers = await asyncio.gather(*calls)
    assert all(text in GUARD_INTENTS for text, _ in answers)


async def test_a_repeated_situation_is_a_cache_hit(mesh: Mesh, mesh_stub: MeshAsyncStub) -> None:
    situation = f"A bard sings loudly under the gate arch at {time.time()}."
    first, tiers = await answer(mesh_stub, intent(situation))
    assert tiers <= {mesh_pb2.TIER_GOLD, mesh_pb2.TIER_SILVER}
    hits = (await scrape(mesh.router_metrics)).get(
        'tiermesh_router_cache_requests_total{cache="intent",result="hit"}', 0.0
    )
    again, tiers = await answer(mesh_stub, intent("  " + situation.upper().rstrip(".") + "!!"))
    assert (again, tiers) == (first, {mesh_pb2.TIER_CACHE})
    after = await scrape(mesh.router_metrics)
    assert after['tiermesh_router_cache_requests_total{cache="intent",result="hit"}'] == hits + 1
    _, tiers = await answer(mesh_stub, intent(situation, bypass_cache=True))
    assert mesh_pb2.TIER_CACHE not in tiers


async def test_a_bark_longer_than_gold_answers_goes_to_silver(mesh_stub: MeshAsyncStub) -> None:
    req = mesh_pb2.GenerateRequest(
        npc_id="guard-1", prompt="Warn the crowd about the fire.", task=mesh_pb2.TASK_BARK, max_tokens=24
    )
    responses = [r async for r in mesh_stub.Generate(req, timeout=20)]
    assert {r.tier for r in responses} == {mesh_pb2.TIER_SILVER}


@pytest.fixture
def gold_alone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A Gold of its own (the session's mesh stays untouched) and a router that sends
    every task to Gold only: (router address, run dir)."""
    config = yaml.safe_load(Path("config/mesh.yaml").read_text())
    config["router"].update(listen="127.0.0.1:50251", metrics_port=0)
    gold = config["router"]["tiers"]["gold"] | {"endpoints": ["127.0.0.1:8201"], "health_retry_s": 0.2}
    config["router"]["tiers"] = {"gold": gold}
    config["router"]["tasks"] = {
        task: {"tiers": ["gold"], "default_max_tokens": 8, "max_tokens_limit": 16, "default_deadline_s": 5}
        for task in ("intent", "bark", "dialogue", "longform")
    }
    config["gold"].update(grpc_port=8201, http_port=8200, metrics_port=8202, instances=1)
    run_dir = tmp_path_factory.mktemp("gold-alone")
    path = start_mesh(config, run_dir)
    yield "127.0.0.1:50251", run_dir
    stop_mesh(path)


async def test_stopped_triton_is_a_fast_unavailable(gold_alone: tuple[str, Path]) -> None:
    router, run_dir = gold_alone
    async with grpc.aio.insecure_channel(router) as channel:
        stub = mesh_pb2_grpc.MeshStub(channel)
        text, _ = await answer(stub, intent("An orc charges.", bypass_cache=True))
        assert text in GUARD_INTENTS
        pids = json.loads(await asyncio.to_thread((run_dir / "mesh.json").read_text))
        os.killpg(pids["gold"], signal.SIGTERM)
        await asyncio.sleep(3)  # Triton is gone; the router's readiness poll notices
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await answer(stub, intent("An orc charges again.", bypass_cache=True), deadline_s=5.0)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "gold" in (caught.value.details() or "")
        assert time.monotonic() - started < 2.5  # fails fast: never hangs until the deadline
    # The deployment check says so too, naming what failed.
    config = str(run_dir / "mesh.yaml")
    validate = [sys.executable, "-m", "ops.cli", "validate", "gold", "--json", "--config", config]
    result = await asyncio.to_thread(subprocess.run, validate, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    failed = [(c["tier"], c["name"]) for c in json.loads(result.stdout)["checks"] if not c["ok"]]
    assert ("gold", "health") in failed
