"""Operations on the real local mesh: a real Prometheus scrapes it, every series the
dashboards and alerts read exists and every query they run evaluates; `tiermesh
cost` reads that Prometheus; the ghz-format load tests hold their SLOs; the engines
leave the router its cores."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from ops import dashboards
from ops.cost import api, instant
from ops.observability import rule_expressions, used_series
from tests.engine.conftest import PROMETHEUS, ROUTER, Mesh, scrape
from tests.fakes import request
from tiermesh.process_group import group_members
from tiermesh.v1 import mesh_pb2

if TYPE_CHECKING:
    from tiermesh.v1.mesh_pb2_grpc import MeshAsyncStub

pytestmark = pytest.mark.engine
REPORTS = Path("reports/load")


def promql(expr: str) -> list[dict[str, Any]]:
    """An instant query's result; a query Prometheus refuses raises PrometheusError."""
    return instant(PROMETHEUS, expr)


async def until(condition: Any, within_s: float = 20.0) -> None:
    async with asyncio.timeout(within_s):
        while not await asyncio.to_thread(condition):  # noqa: ASYNC110  (polling another process)
            await asyncio.sleep(0.5)


async def traffic(stub: MeshAsyncStub) -> None:
    """A little of each task, so histograms and token counters have samples."""
    intent = request(npc_id="guard-1", task=mesh_pb2.TASK_INTENT, prompt="A wolf howls outside the gate.")
    dialogue = request(prompt="Good evening.", max_tokens=8)
    for req in (intent, dialogue):
        [r async for r in stub.Generate(req, timeout=60)]


async def test_prometheus_scrapes_every_series_the_dashboards_and_alerts_read(
    mesh: Mesh, mesh_stub: MeshAsyncStub
) -> None:
    await traffic(mesh_stub)
    jobs = {"tiermesh-router", "tiermesh-silver", "tiermesh-gold", "tiermesh-bronze"}
    await until(lambda: {r["metric"]["job"] for r in promql("up == 1")} >= jobs)
    await until(lambda: bool(promql('tiermesh_router_tokens_total{direction="out"} > 0')))
    missing = [name for name in sorted(used_series()) if not promql(f"count({name})")]
    assert missing == []


def test_every_dashboard_query_and_rule_evaluates(mesh: Mesh) -> None:
    expressions = rule_expressions() + [q.replace("$__rate_interval", "1m") for q in dashboards.queries()]
    for expr in expressions:
        promql(expr)  # a parse or evaluation error fails here
    rules = api(PROMETHEUS, "rules")
    assert isinstance(rules, dict)
    loaded = {rule["name"] for group in rules["groups"] for rule in group["rules"]}
    assert {"TiermeshGoldLatencyHigh", "TiermeshBronzeBacklogOld"} <= loaded


async def test_cost_reads_the_real_prometheus(mesh: Mesh, mesh_stub: MeshAsyncStub) -> None:
    await until(lambda: bool(promql('tiermesh_router_requests_total{code="OK"} > 0')))
    await asyncio.sleep(2)  # two scrapes: increase() needs a before and an after
    command = [sys.executable, "-m", "ops.cli", "cost", "--config", str(mesh.config)]
    command += ["--prometheus", PROMETHEUS, "--window", "1h"]
    result = await asyncio.to_thread(subprocess.run, [*command, "--json"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    tiers = {row["tier"]: row for row in report["tiers"]}
    assert tiers["silver"]["usage"]["replicas"] == pytest.approx(1.0)
    assert tiers["silver"]["cost_usd"] > 0
    assert 0 < report["window_s"] <= 3600  # the time Prometheus has data for, not the whole hour
    assert report["total"]["monthly_usd"] > report["total"]["daily_usd"] > 0
    table = await asyncio.to_thread(
        subprocess.run, command, capture_output=True, text=True, env={"COLUMNS": "200"}
    )
    assert "silver" in table.stdout
    assert "total" in table.stdout


async def test_costs_calls_agree_with_the_routers_counters(mesh: Mesh, mesh_stub: MeshAsyncStub) -> None:
    # Counted with increase() it said 5 Gold calls where the router's counter said 7:
    # extrapolation, and the calls made before Prometheus's first scrape.
    for prompt in ("The player waves.", "The player draws a sword."):
        await drain_call(mesh_stub, prompt)
    await asyncio.sleep(2.5)  # the last calls scraped (every 1 s here)
    router = await scrape(mesh.router_metrics)
    counted: dict[str, float] = {}
    for key, value in router.items():
        if key.startswith("tiermesh_router_requests_total{") and 'code="OK"' in key:
            tier = key.split('tier="')[1].split('"')[0]
            counted[tier] = counted.get(tier, 0.0) + value
    command = [sys.executable, "-m", "ops.cli", "cost", "--config", str(mesh.config)]
    command += ["--prometheus", PROMETHEUS, "--window", "24h", "--json"]
    result = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    usage = {row["tier"]: row["usage"]["requests"] for row in json.loads(result.stdout)["tiers"]}
    assert counted.get("gold", 0) > 0
    for tier in ("gold", "silver", "bronze"):
        assert usage.get(tier, 0.0) == pytest.approx(counted.get(tier, 0.0)), (tier, usage, counted)


async def drain_call(stub: MeshAsyncStub, prompt: str) -> None:
    call = stub.Generate(
        request(npc_id="guard-1", prompt=prompt, task=mesh_pb2.TASK_INTENT, bypass_cache=True), timeout=5
    )
    async for _ in call:
        pass


@pytest.mark.parametrize("name", ["intent", "dialogue"])
def test_ghz_load_test_holds_its_slo(mesh: Mesh, name: str) -> None:
    """The short load tests CI runs on every build; reports kept in reports/load/."""
    out = REPORTS / f"{name}.json"
    command = [sys.executable, "-m", "ops.cli", "load", f"tests/load/{name}.json"]
    command += ["--host", ROUTER, "--out", str(out), "--slo", "tests/load/slo.yaml"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    print(result.stdout, result.stderr)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())
    assert report["statusCodeDistribution"] == {"OK": report["count"]}
    check = [sys.executable, "-m", "ops.cli", "load-check", str(out), "--slo", "tests/load/slo.yaml"]
    assert subprocess.run(check, capture_output=True, check=False).returncode == 0


def test_the_engines_take_only_the_cpu_the_router_leaves(mesh: Mesh) -> None:
    """Locally the engines share the router's cores: they run SCHED_IDLE, with every
    thread and child process they start (vLLM's engine core and worker, Triton and its
    Python stubs); the router and what serves beside it keep the normal class."""
    pids: dict[str, int] = json.loads((mesh.run_dir / "mesh.json").read_text())
    engines = {"gold", "silver", "container"}

    def threads(pid: int) -> list[int]:
        try:
            return [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
        except FileNotFoundError:
            return []  # gone meanwhile

    def policy(tid: int) -> int | None:
        try:
            return os.sched_getscheduler(tid)
        except ProcessLookupError:
            return None

    # Each component leads its own process group, which holds what it started.
    policies = {
        name: {policy(tid) for p in group_members(pid) for tid in threads(p)} - {None}
        for name, pid in pids.items()
    }
    assert all(policies[name] == {os.SCHED_IDLE} for name in engines & policies.keys()), policies
    assert policies["router"] == {os.SCHED_OTHER}, policies
    assert len(group_members(pids["silver"])) > 1, "vLLM's engine core runs in a child process"
    # Where Linux weighs each session as one against the others (autogroup), the
    # engines' sessions are the least: else an engine's class decides nothing beside the
    # router's own session (bench/results/engine-share.md).
    autogroups = {name: Path(f"/proc/{pid}/autogroup") for name, pid in pids.items()}
    if autogroups["router"].exists():
        niceness = {name: f.read_text().split()[-1] for name, f in autogroups.items() if f.exists()}
        assert all(niceness[name] == "19" for name in engines & niceness.keys()), niceness
        assert niceness["router"] == "0", niceness
