"""`tiermesh load` against the router over real gRPC (scripted tier behind it)."""

from __future__ import annotations

import pytest

from ops.load import GhzConfig, check, run
from router.app import Router
from tests.doubles import Script, ScriptedTier

pytestmark = pytest.mark.asyncio(loop_scope="session")


def config(**overrides: object) -> GhzConfig:
    base: dict[str, object] = {
        "call": "tiermesh.v1.Mesh.Generate",
        "total": 12,
        "concurrency": 3,
        "timeout": "5s",
        "data": {"npc_id": "guard-1", "task": "TASK_DIALOGUE", "prompt": "Hello {{.RequestNumber}}"},
    }
    return GhzConfig.model_validate(base | overrides)


async def test_report_has_ghz_fields_and_ttft(router: Router, silver: ScriptedTier) -> None:
    report = await run(config(), f"127.0.0.1:{router.port}")
    assert report["count"] == 12
    assert report["statusCodeDistribution"] == {"OK": 12}
    assert report["errorDistribution"] == {}
    assert [d["percentage"] for d in report["latencyDistribution"]] == [10, 25, 50, 75, 90, 95, 99]
    assert 0 < report["fastest"] <= report["average"] <= report["slowest"] < report["total"]
    assert sum(bucket["count"] for bucket in report["histogram"]) == 12
    assert 0 < report["ttft"]["average"] <= report["average"]
    prompts = {seen.request.messages[-1].content for seen in silver.seen}
    assert prompts == {f"Hello {n}" for n in range(12)}  # {{.RequestNumber}} rendered


async def test_failed_calls_are_counted_by_status_and_message(router: Router, silver: ScriptedTier) -> None:
    bad = {"npc_id": "no spaces allowed", "task": "TASK_DIALOGUE", "prompt": "Hi"}
    good = {"npc_id": "guard-1", "task": "TASK_DIALOGUE", "prompt": "Hi"}
    report = await run(config(data=[good, bad], total=10), f"127.0.0.1:{router.port}")
    assert report["statusCodeDistribution"] == {"OK": 5, "INVALID_ARGUMENT": 5}
    [(message, count)] = report["errorDistribution"].items()
    assert message.startswith("rpc error: code = INVALID_ARGUMENT desc = npc_id")
    assert count == 5
    verdict = check(report, p95_ms=None, max_error_rate=0.1)
    assert not verdict.ok
    assert "error rate 50.0%" in verdict.problems[0]


async def test_a_slow_tier_breaches_the_latency_slo(router: Router, silver: ScriptedTier) -> None:
    silver.reset(Script(delay=0.02))
    report = await run(config(total=4, concurrency=2), f"127.0.0.1:{router.port}")
    assert check(report, p95_ms=5000, max_error_rate=0).ok
    verdict = check(report, p95_ms=50, max_error_rate=0)
    assert not verdict.ok
    assert "over the 50 ms SLO" in verdict.problems[0]


async def test_duration_and_rate_bound_the_run(router: Router, silver: ScriptedTier) -> None:
    report = await run(config(duration="1s", rps=20, concurrency=4), f"127.0.0.1:{router.port}")
    assert 15 <= report["count"] <= 21  # 20/s for one second, open schedule
