"""What the dashboards and alert rules read: their PromQL, and the metric names in it.

Used by the tests (every name is defined by our code or by Triton, and exists in a
real Prometheus scraping the local mesh) and by the local mesh's Prometheus."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from ops.settings import Settings

RULES = Path("helm/tiermesh/files/prometheus/tiermesh-rules.yaml")
# A metric name, not part of a recording rule's level:metric:operations name.
METRIC = re.compile(r"(?<![\w:])((?:tiermesh|nv)_\w+)(?![\w:])")
SUFFIXES = ("_bucket", "_sum", "_count", "_total")


def rule_expressions(path: Path = RULES) -> list[str]:
    groups = yaml.safe_load(path.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def series_names(expressions: list[str]) -> set[str]:
    """The metric names (as exposed, suffixes included) that `expressions` select."""
    return {name for expr in expressions for name in METRIC.findall(expr)}


def family(name: str) -> str:
    """A series name's metric family: tiermesh_x_total → tiermesh_x."""
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    return name


def used_series() -> set[str]:
    from ops import dashboards  # grafana-foundation-sdk: only when asked

    return series_names(rule_expressions() + dashboards.queries())


def scrape_targets(settings: Settings) -> dict[str, str]:
    """job → host:port of each metrics endpoint the local mesh serves."""
    tiers = settings.router.tiers
    targets = {}
    if settings.router.metrics_port:
        targets["tiermesh-router"] = f"127.0.0.1:{settings.router.metrics_port}"
    if "silver" in tiers and settings.silver.metrics_port:
        targets["tiermesh-silver"] = f"127.0.0.1:{settings.silver.metrics_port}"
    if "gold" in tiers:
        targets["tiermesh-gold"] = f"{settings.gold.host}:{settings.gold.metrics_port}"  # Triton's own
    if "bronze" in tiers and settings.bronze.metrics_port:
        targets["tiermesh-bronze"] = f"127.0.0.1:{settings.bronze.metrics_port}"
    return targets


def prometheus_config(settings: Settings, rules: Path) -> dict[str, Any]:
    """A prometheus.yml scraping the local mesh, with the chart's rules loaded."""
    interval = f"{settings.mesh.scrape_interval_s:g}s"
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(rules.resolve())],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": [target]}]}
            for job, target in scrape_targets(settings).items()
        ],
    }
