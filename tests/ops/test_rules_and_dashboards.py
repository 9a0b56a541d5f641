"""Alert rules under the real promtool, and dashboards as their generator makes them."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from prometheus_client import REGISTRY

import router.metrics  # noqa: F401  (registers the router's metrics)
import services.bronze.bridge  # noqa: F401  (registers Bronze's)
from ops import dashboards
from ops.observability import RULES, family, used_series

RULES_TEST = Path("tests/ops/rules-test.yaml")
ROUTER_COLLECTED = {
    "tiermesh_router_replicas",
    "tiermesh_router_replicas_ejected",
    "tiermesh_router_replicas_not_serving",
    "tiermesh_router_tier_cost_per_hour_dollars",
}


def promtool(*args: str) -> str:
    done = subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_rules_pass_promtool_check() -> None:
    assert "SUCCESS" in promtool("check", "rules", str(RULES))


def test_alert_unit_tests_pass() -> None:
    assert "SUCCESS" in promtool("test", "rules", str(RULES_TEST))


def test_every_alert_the_brief_asks_for_has_a_unit_test() -> None:
    tested = RULES_TEST.read_text()
    for alert in (
        "TiermeshGoldLatencyHigh",
        "TiermeshSilverTTFTHigh",
        "TiermeshErrorRatioHigh",
        "TiermeshFallbackRatioHigh",
        "TiermeshCriticalShed",
        "TiermeshBreakerOpen",
        "TiermeshBronzeBacklogOld",
        "TiermeshTierDown",
    ):
        assert f"alertname: {alert}" in tested


def test_committed_dashboards_are_what_the_code_generates() -> None:
    for name, text in dashboards.render().items():
        committed = dashboards.OUT / name
        assert committed.read_text() == text, f"{committed} is stale: run `tiermesh dashboards`"


def test_dashboards_query_prometheus_through_the_datasource_variable() -> None:
    for text in dashboards.render().values():
        board = json.loads(text)
        assert board["templating"]["list"][0]["type"] == "datasource"
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                assert target["datasource"]["uid"] == "${datasource}"
                assert target["refId"]


def test_every_series_read_is_one_our_code_exports() -> None:
    defined = {metric.name for metric in REGISTRY.collect()} | ROUTER_COLLECTED
    used = {family(name) for name in used_series()}
    assert used - defined == set()
