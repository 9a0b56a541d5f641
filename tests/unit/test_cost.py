"""Cost: prices × usage, from a metrics snapshot (the Prometheus path runs in the
engine tests, against a real Prometheus that scraped the local mesh)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ops.cli import app
from ops.cost import costs, from_snapshot
from ops.settings import CostSettings, TierPrice

STARTED = 1_700_000_000.0
ROUTER_SNAPSHOT = f"""
# TYPE process_start_time_seconds gauge
process_start_time_seconds {STARTED}
# TYPE tiermesh_router_replicas gauge
tiermesh_router_replicas{{tier="silver"}} 2.0
tiermesh_router_replicas{{tier="gold"}} 1.0
# TYPE tiermesh_router_requests counter
tiermesh_router_requests_total{{task="dialogue",tier="silver",code="OK"}} 90.0
tiermesh_router_requests_total{{task="bark",tier="silver",code="OK"}} 10.0
tiermesh_router_requests_total{{task="dialogue",tier="none",code="UNAVAILABLE"}} 7.0
# TYPE tiermesh_router_tokens counter
tiermesh_router_tokens_total{{task="dialogue",tier="silver",direction="in"}} 20000.0
tiermesh_router_tokens_total{{task="dialogue",tier="silver",direction="out"}} 4848.0
"""
BRONZE_SNAPSHOT = """
# TYPE tiermesh_bronze_jobs counter
tiermesh_bronze_jobs_total{state="SUCCEEDED"} 30.0
tiermesh_bronze_jobs_total{state="FAILED"} 2.0
# TYPE tiermesh_bronze_job_duration_seconds histogram
tiermesh_bronze_job_duration_seconds_sum{state="SUCCEEDED"} 1500.0
tiermesh_bronze_job_duration_seconds_sum{state="FAILED"} 300.0
"""
PRICES = CostSettings(
    prices={
        "gold": TierPrice(instance_type="g5.xlarge", hourly_usd=1.0),
        "silver": TierPrice(instance_type="g5.2xlarge", hourly_usd=1.212),
        "bronze": TierPrice(instance_type="ml.g5.xlarge", hourly_usd=1.408),
    }
)


@pytest.fixture
def snapshot(tmp_path: Path) -> list[Path]:
    router, bronze = tmp_path / "router.prom", tmp_path / "bronze.prom"
    router.write_text(ROUTER_SNAPSHOT)
    bronze.write_text(BRONZE_SNAPSHOT)
    for path in (router, bronze):
        os.utime(path, (STARTED + 7200, STARTED + 7200))  # taken two hours after start
    return [router, bronze]


def test_node_tiers_cost_price_times_replicas_times_hours(snapshot: list[Path]) -> None:
    usage = from_snapshot(snapshot)
    assert usage.window_s == 7200
    rows = {row.tier: row for row in costs(usage, PRICES)}
    silver = rows["silver"]
    assert silver.cost_usd == pytest.approx(1.212 * 2 * 2)
    assert silver.usage.requests == 100  # OK calls only
    assert silver.per_1k_tokens_usd == pytest.approx(4.848 / 4848 * 1000)
    assert silver.per_request_usd == pytest.approx(4.848 / 100)
    assert silver.daily_usd == pytest.approx(1.212 * 2 * 24)
    assert silver.monthly_usd == pytest.approx(1.212 * 2 * 24 * 30)
    assert rows["gold"].per_request_usd is None  # no calls: no per-call figure


def test_bronze_costs_busy_instance_hours_or_a_price_per_job(snapshot: list[Path]) -> None:
    usage = from_snapshot(snapshot)
    bronze = {row.tier: row for row in costs(usage, PRICES)}["bronze"]
    assert bronze.cost_usd == pytest.approx(1.408 * 1800 / 3600)
    per_job = PRICES.model_copy(deep=True)
    per_job.prices["bronze"].per_job_usd = 0.01
    assert {r.tier: r for r in costs(usage, per_job)}["bronze"].cost_usd == pytest.approx(0.30)


def test_a_snapshot_period_can_be_given(snapshot: list[Path]) -> None:
    assert from_snapshot(snapshot, period_s=3600).window_s == 3600


def test_cost_command_prints_a_table_and_json(snapshot: list[Path]) -> None:
    args = ["cost", *[arg for path in snapshot for arg in ("--snapshot", str(path))]]
    table = CliRunner().invoke(app, args, env={"COLUMNS": "160"})
    assert table.exit_code == 0, table.output
    assert "silver" in table.output
    assert "total" in table.output
    report = json.loads(CliRunner().invoke(app, [*args, "--json"]).output)
    tiers = {row["tier"]: row for row in report["tiers"]}
    assert set(tiers) == {"gold", "silver", "bronze"}
    assert report["total"]["cost_usd"] == pytest.approx(sum(row["cost_usd"] for row in report["tiers"]))


def test_cost_command_says_when_prometheus_is_unreachable() -> None:
    result = CliRunner().invoke(app, ["cost", "--prometheus", "http://127.0.0.1:1", "--window", "1h"])
    assert result.exit_code == 1
    assert "unreachable" in result.output


def test_cost_tables_fit_80_columns_without_cutting_a_cell(snapshot: list[Path]) -> None:
    args = ["cost", *[arg for path in snapshot for arg in ("--snapshot", str(path))]]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "…" not in result.output  # rich marks a truncated cell so
    assert "$/month" in result.output
    assert "tokens out" in result.output
