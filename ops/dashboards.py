"""Grafana dashboards, generated from code (grafana-foundation-sdk), never hand-kept.

`tiermesh dashboards` writes them into the Helm chart (helm/tiermesh/files/
dashboards/), which ships them as ConfigMaps for Grafana's sidecar; a test checks
the committed files are what this code generates, and the engine tests check every
series they query exists in a real Prometheus scraping the local mesh.
"""

from __future__ import annotations

import json
from pathlib import Path

from grafana_foundation_sdk.builders import common as common_builder
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model

OUT = Path("helm/tiermesh/files/dashboards")
DATASOURCE = model.DataSourceRef(type_val="prometheus", uid="${datasource}")
# The SLOs the alert rules page on (helm/tiermesh/files/prometheus/tiermesh-rules.yaml).
GOLD_SLO_S = 0.016
SILVER_TTFT_SLO_S = 0.25


def query(expr: str, legend: str) -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(expr).legend_format(legend).datasource(DATASOURCE)


def quantile(q: float, metric: str, by: str = "tier") -> str:
    return f"histogram_quantile({q}, sum by ({by}, le) (rate({metric}_bucket[$__rate_interval])))"


def rate(selector: str, by: str = "tier") -> str:
    return f"sum by ({by}) (rate({selector}[$__rate_interval]))"


def graph(title: str, unit: str, *queries: prometheus.Dataquery, width: int = 12) -> timeseries.Panel:
    panel = timeseries.Panel().title(title).unit(unit).datasource(DATASOURCE).span(width).height(8)
    for ref, q in zip("ABCDEFGH", queries, strict=False):
        panel = panel.with_target(q.ref_id(ref))
    return panel


def slo_lines(panel: timeseries.Panel, *slos: tuple[float, str]) -> timeseries.Panel:
    """Draw SLOs as dashed threshold lines (Grafana colours what crosses them)."""
    steps = [model.Threshold(value=None, color="green")]
    steps += [model.Threshold(value=value, color=color) for value, color in slos]
    return panel.thresholds(
        dash.ThresholdsConfig().mode(model.ThresholdsMode.ABSOLUTE).steps(steps)
    ).thresholds_style(
        common_builder.GraphThresholdsStyleConfig().mode(common.GraphThresholdsStyleMode.DASHED)
    )


def number(title: str, unit: str, expr: str, width: int = 6) -> stat.Panel:
    return (
        stat.Panel()
        .title(title)
        .unit(unit)
        .datasource(DATASOURCE)
        .span(width)
        .height(4)
        .with_target(query(expr, title).ref_id("A"))
    )


def base(uid: str, title: str) -> dash.Dashboard:
    return (
        dash.Dashboard(title)
        .uid(uid)
        .tags(["tiermesh"])
        .refresh("30s")
        .time("now-1h", "now")
        .with_variable(dash.DatasourceVariable("datasource").label("Prometheus").type("prometheus"))
    )


def overview() -> dash.Dashboard:
    requests = "tiermesh_router_requests_total"
    return (
        base("tiermesh-overview", "tiermesh — tiers, latency vs SLO, fallbacks, caches")
        .with_row(dash.Row("Latency against the SLOs"))
        .with_panel(
            slo_lines(
                graph(
                    "p95 time to first token by tier",
                    "s",
                    query(quantile(0.95, "tiermesh_router_time_to_first_token_seconds"), "{{tier}}"),
                ),
                (GOLD_SLO_S, "orange"),
                (SILVER_TTFT_SLO_S, "red"),
            )
        )
        .with_panel(
            slo_lines(
                graph(
                    "p95 request duration by tier (Gold SLO: 16 ms)",
                    "s",
                    query(quantile(0.95, "tiermesh_router_request_duration_seconds"), "{{tier}}"),
                ),
                (GOLD_SLO_S, "red"),
            )
        )
        .with_panel(
            graph(
                "Mean inter-token gap, p50 of streams",
                "s",
                query(quantile(0.5, "tiermesh_router_inter_token_seconds"), "{{tier}}"),
            )
        )
        .with_row(dash.Row("Throughput"))
        .with_panel(
            graph(
                "Calls/s by tier and status",
                "reqps",
                query(rate(requests, "tier, code"), "{{tier}} {{code}}"),
            )
        )
        .with_panel(
            graph(
                "Tokens/s by tier",
                "short",
                query(
                    rate("tiermesh_router_tokens_total", "tier, direction"),
                    "{{tier}} {{direction}}",
                ),
            )
        )
        .with_row(dash.Row("The deadline promise"))
        .with_panel(
            graph(
                "Calls answered before their deadline, by task",
                "percentunit",
                query("task:tiermesh_router_answered_in_time:ratio_5m", "{{task}}"),
            )
        )
        .with_panel(
            graph(
                "Deadline outcomes/s by task",
                "reqps",
                query(
                    rate("tiermesh_router_deadline_outcomes_total", "task, outcome"),
                    "{{task}} {{outcome}}",
                ),
            )
        )
        .with_row(dash.Row("Resilience"))
        .with_panel(
            graph(
                "Fallbacks/s by tier and reason",
                "reqps",
                query(
                    rate("tiermesh_router_fallbacks_total", "tier, reason"),
                    "{{tier}} {{reason}}",
                ),
                query("sum(rate(tiermesh_router_canned_total[$__rate_interval]))", "canned answer"),
            )
        )
        .with_panel(
            graph(
                "Retries, hedges, resumes, sheds /s",
                "reqps",
                query(rate("tiermesh_router_retries_total"), "retry {{tier}}"),
                query(
                    rate("tiermesh_router_hedges_total", "tier, outcome"),
                    "hedge {{tier}} {{outcome}}",
                ),
                query(rate("tiermesh_router_resumes_total"), "resume {{tier}}"),
                query(rate("tiermesh_router_shed_total"), "shed {{tier}}"),
            )
        )
        .with_panel(
            graph(
                "Replicas: known, not serving, ejected",
                "short",
                query("max by (tier) (tiermesh_router_replicas)", "known {{tier}}"),
                query("max by (tier) (tiermesh_router_replicas_not_serving)", "not serving {{tier}}"),
                query("max by (tier) (tiermesh_router_replicas_ejected)", "ejected {{tier}}"),
            )
        )
        .with_panel(
            graph(
                "Queued calls by tier",
                "short",
                query("sum by (tier) (tiermesh_router_queue_depth)", "{{tier}}"),
            )
        )
        .with_panel(
            slo_lines(
                graph(
                    "Router loop lag p99 by instance (deadlines' timers run this late)",
                    "s",
                    query(quantile(0.99, "tiermesh_router_loop_lag_seconds", "instance"), "{{instance}}"),
                ),
                (0.016, "red"),
            )
        )
        .with_row(dash.Row("Caches"))
        .with_panel(
            graph(
                "Hit ratio by cache",
                "percentunit",
                query(
                    rate('tiermesh_router_cache_requests_total{result=~"hit|near_hit"}', "cache")
                    + " / "
                    + rate('tiermesh_router_cache_requests_total{result=~"hit|near_hit|miss"}', "cache"),
                    "{{cache}}",
                ),
            )
        )
        .with_row(dash.Row("Bronze jobs"))
        .with_panel(
            graph(
                "Jobs entering each state /s",
                "reqps",
                query(rate("tiermesh_bronze_jobs_total", "state"), "{{state}}"),
            )
        )
        .with_panel(
            graph(
                "Backlog and oldest unfinished job",
                "short",
                query("sum(tiermesh_bronze_backlog_jobs)", "backlog"),
                query("max(tiermesh_bronze_oldest_unfinished_job_age_seconds)", "oldest (s)"),
            )
        )
    )


def cost() -> dash.Dashboard:
    # Every router replica reports the same figure: take one, not their sum.
    hourly = "max by (tier) (tiermesh_router_tier_cost_per_hour_dollars)"
    tokens_per_hour = 'sum by (tier) (rate(tiermesh_router_tokens_total{direction="out"}[1h])) * 3600'
    calls_per_hour = 'sum by (tier) (rate(tiermesh_router_requests_total{code="OK"}[1h])) * 3600'
    return (
        base("tiermesh-cost", "tiermesh — cost")
        .with_panel(number("Running cost, $/hour", "currencyUSD", f"sum({hourly})"))
        .with_panel(number("Projected, $/day", "currencyUSD", f"sum({hourly}) * 24"))
        .with_panel(number("Projected, $/month (30 d)", "currencyUSD", f"sum({hourly}) * 24 * 30"))
        .with_panel(
            number(
                "Bronze busy hours today",
                "h",
                "sum(increase(tiermesh_bronze_job_duration_seconds_sum[1d])) / 3600",
            )
        )
        .with_panel(graph("$/hour by tier", "currencyUSD", query(hourly, "{{tier}}")))
        .with_panel(
            graph(
                "$ per 1k tokens by tier",
                "currencyUSD",
                query(f"{hourly} / clamp_min({tokens_per_hour}, 1) * 1000", "{{tier}}"),
            )
        )
        .with_panel(
            graph(
                "$ per call by tier",
                "currencyUSD",
                query(f"{hourly} / clamp_min({calls_per_hour}, 1)", "{{tier}}"),
            )
        )
    )


DASHBOARDS = {"tiermesh-overview": overview, "tiermesh-cost": cost}


def render() -> dict[str, str]:
    """File name → dashboard JSON."""
    return {
        f"{name}.json": json.dumps(build().build(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"
        for name, build in DASHBOARDS.items()
    }


def write(out: Path = OUT) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render().items():
        path = out / name
        path.write_text(text)
        written.append(path)
    return written


def queries() -> list[str]:
    """Every PromQL expression the dashboards run."""
    found: list[str] = []
    for text in render().values():
        for panel in json.loads(text).get("panels", []):
            found += [target["expr"] for target in panel.get("targets", []) if "expr" in target]
    return found
