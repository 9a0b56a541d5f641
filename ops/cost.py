"""`tiermesh cost`: what each tier costs, from the price table and real usage.

Usage comes from a Prometheus that scraped the mesh (its HTTP API, over a window)
or from a metrics snapshot (a saved /metrics page: counters since the process
started). Gold and Silver are billed per node-hour (price × replicas × hours);
Bronze per SageMaker instance-hour while jobs run, or per job when priced so.
"""

from __future__ import annotations

import json
import math
import time
import urllib.parse
import urllib.request
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from rich.table import Table

from ops.settings import CostSettings
from tiermesh.config import TierName

TIERS: tuple[TierName, ...] = ("gold", "silver", "bronze")
HOUR = 3600.0


@dataclass
class TierUsage:
    replicas: float = 0.0  # average over the window
    requests: float = 0.0  # answered OK
    tokens_in: float = 0.0
    tokens_out: float = 0.0
    busy_s: float = 0.0  # Bronze: time jobs took on the endpoint
    jobs: float = 0.0  # Bronze: jobs that succeeded


@dataclass
class Usage:
    source: str
    window_s: float
    tiers: dict[str, TierUsage] = field(default_factory=lambda: defaultdict(TierUsage))


@dataclass
class TierCost:
    tier: str
    instance_type: str
    usage: TierUsage
    cost_usd: float
    per_1k_tokens_usd: float | None
    per_request_usd: float | None
    daily_usd: float
    weekly_usd: float
    monthly_usd: float


# --- usage from a real Prometheus ---------------------------------------------------


class PrometheusError(RuntimeError):
    pass


def api(url: str, endpoint: str, **params: object) -> object:
    """One call to Prometheus's HTTP API: its `data`."""
    query = urllib.parse.urlencode(params)
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/api/v1/{endpoint}?{query}", timeout=10) as response:
            body = json.loads(response.read())
    except OSError as e:
        raise PrometheusError(f"Prometheus at {url} unreachable: {e}") from None
    if body.get("status") != "success":
        raise PrometheusError(f"{endpoint} {params} failed: {body.get('error')}")
    return body["data"]


def instant(url: str, promql: str) -> list[dict[str, object]]:
    data = api(url, "query", query=promql)
    assert isinstance(data, dict)
    result: list[dict[str, object]] = data["result"]
    return result


def first_sample(url: str, selector: str, window_s: float) -> float | None:
    """When, within the last `window_s`, Prometheus first has `selector`, to the second:
    a range query at ~1000 steps finds the step, then one within that step finds the
    second (a 24 h window's steps are 86 s: one pass alone put a mesh up for minutes
    at "1 s of data", and counted nothing)."""
    end = time.time()
    start = end - window_s
    step = max(window_s / 1000, 1.0)
    found: float | None = None
    while True:
        data = api(url, "query_range", query=selector, start=start, end=end, step=step)
        assert isinstance(data, dict)
        times = [float(series["values"][0][0]) for series in data["result"] if series["values"]]
        if not times:
            # The finer pass's steps can all fall before a sample that lies just before
            # the coarser pass's step: the coarser answer stands.
            return found
        found = min(times)
        if step <= 1.0:
            return found
        start, end, step = max(start, found - step), found, max(step / 1000, 1.0)


def by_tier(url: str, promql: str, label: str = "tier") -> dict[str, float]:
    found = {}
    for sample in instant(url, promql):
        metric = sample["metric"]
        value = sample["value"]
        assert isinstance(metric, dict)
        assert isinstance(value, list)
        found[str(metric.get(label, ""))] = float(value[1])
    return found


def counted(selector: str, window: str, by: str = "") -> str:
    """PromQL for what the counters in `selector` counted within `window`, exactly, as
    the processes' own counters say: each series' value now less its value at the
    window's start (0 for a series that began within it: a process started in it).
    increase() would extrapolate to the window's edges and miss what a series counted
    before Prometheus first scraped it, so a short run's calls would not add up. A series
    that went down (its process restarted) counts what it has counted since."""
    grouping = f" by ({by})" if by else ""
    # Arithmetic drops the metric name (+ 0, * 0) on both sides of each `or`, so its
    # sides match by their labels alone.
    start = f"(({selector} offset {window}) + 0 or {selector} * 0)"
    return f"sum{grouping} (({selector} - {start}) >= 0 or {selector} + 0)"


def from_prometheus(url: str, window_s: float) -> Usage:
    """Usage over the last `window_s`, or over the time Prometheus has data for, if
    shorter (so a mesh up for ten minutes is not billed for an hour)."""
    first = first_sample(url, 'up{job="tiermesh-router"}', window_s)
    if first is None:
        raise PrometheusError(f"Prometheus at {url} has no tiermesh-router target data")
    age = time.time() - first
    covered = min(window_s, max(age, 1.0))
    usage = Usage(source=url, window_s=covered)
    c = f"{int(covered)}s"
    # Counted from the window's start; when Prometheus's data begins inside the window,
    # from before its first scrape (the offset finds no sample there, so a counter counts
    # from 0): the calls made before that scrape count too. Beside a mesh started with
    # its Prometheus that is every call; beside one Prometheus joined late, it counts
    # what its processes did before, as of their start.
    since = c if age >= window_s else f"{math.ceil(age) + 1}s"
    for tier, value in by_tier(url, f"max by (tier) (avg_over_time(tiermesh_router_replicas[{c}]))").items():
        usage.tiers[tier].replicas = value
    ok = counted('tiermesh_router_requests_total{code="OK"}', since, "tier")
    for tier, value in by_tier(url, ok).items():
        if tier in TIERS:
            usage.tiers[tier].requests = value
    for direction in ("in", "out"):
        tokens = counted(f'tiermesh_router_tokens_total{{direction="{direction}"}}', since, "tier")
        for tier, value in by_tier(url, tokens).items():
            if tier in TIERS:
                setattr(usage.tiers[tier], f"tokens_{direction}", value)
    busy = by_tier(url, counted("tiermesh_bronze_job_duration_seconds_sum", since))
    jobs = by_tier(url, counted('tiermesh_bronze_jobs_total{state="SUCCEEDED"}', since))
    usage.tiers["bronze"].busy_s = sum(busy.values())
    usage.tiers["bronze"].jobs = sum(jobs.values())
    return usage


# --- usage from a metrics snapshot ---------------------------------------------------


def from_snapshot(paths: list[Path], period_s: float | None = None) -> Usage:
    """Usage from saved /metrics pages (router, and Bronze's for its jobs). Counters
    run from process start: the period is `period_s`, or file time − process start."""
    samples: list[tuple[str, dict[str, str], float]] = []
    started: list[float] = []
    taken = max(path.stat().st_mtime for path in paths)
    for path in paths:
        for metric_family in text_string_to_metric_families(path.read_text()):
            for s in metric_family.samples:
                samples.append((s.name, s.labels, s.value))
                if s.name == "process_start_time_seconds":
                    started.append(s.value)
    if period_s is None:
        if not started:
            raise ValueError("the snapshot has no process_start_time_seconds: give --period")
        period_s = max(taken - min(started), 1.0)
    usage = Usage(source=", ".join(str(p) for p in paths), window_s=period_s)
    for name, labels, value in samples:
        tier = labels.get("tier", "")
        if name == "tiermesh_router_replicas" and tier in TIERS:
            usage.tiers[tier].replicas = value
        elif name == "tiermesh_router_requests_total" and tier in TIERS and labels.get("code") == "OK":
            usage.tiers[tier].requests += value
        elif name == "tiermesh_router_tokens_total" and tier in TIERS:
            t = usage.tiers[tier]
            if labels.get("direction") == "in":
                t.tokens_in += value
            else:
                t.tokens_out += value
        elif name == "tiermesh_bronze_job_duration_seconds_sum":
            usage.tiers["bronze"].busy_s += value
        elif name == "tiermesh_bronze_jobs_total" and labels.get("state") == "SUCCEEDED":
            usage.tiers["bronze"].jobs += value
    return usage


# --- prices × usage ----------------------------------------------------------------


def costs(usage: Usage, prices: CostSettings) -> list[TierCost]:
    hours = usage.window_s / HOUR
    rows = []
    for tier in TIERS:
        if tier not in usage.tiers or tier not in prices.prices:
            continue
        u, price = usage.tiers[tier], prices.prices[tier]
        if tier == "bronze":
            cost = price.per_job_usd * u.jobs if price.per_job_usd else price.hourly_usd * u.busy_s / HOUR
        else:
            cost = price.hourly_usd * u.replicas * hours
        per_hour = cost / hours if hours else 0.0
        rows.append(
            TierCost(
                tier=tier,
                instance_type=price.instance_type,
                usage=u,
                cost_usd=cost,
                per_1k_tokens_usd=cost / u.tokens_out * 1000 if u.tokens_out else None,
                per_request_usd=cost / u.requests if u.requests else None,
                daily_usd=per_hour * 24,
                weekly_usd=per_hour * 24 * 7,
                monthly_usd=per_hour * 24 * 30,
            )
        )
    return rows


def report(usage: Usage, rows: list[TierCost]) -> dict[str, object]:
    total = {
        key: sum(getattr(row, key) for row in rows)
        for key in ("cost_usd", "daily_usd", "weekly_usd", "monthly_usd")
    }
    return {
        "source": usage.source,
        "window_s": usage.window_s,
        "tiers": [asdict(row) for row in rows],
        "total": total,
    }


# --- the terminal report -------------------------------------------------------------


def usd(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"${value:,.{digits}f}"


def cost_tables(usage: Usage, rows: list[TierCost]) -> list[Table]:
    """The report for people, in two tables that each fit an 80-column terminal (one
    table of eleven columns truncated every cell there): what was used, then what it
    cost. `--json` has every figure, weekly too."""
    hours = f"{usage.window_s / 3600:.2f} h"
    used = Table(title=f"tiermesh usage over {hours} ({usage.source})")
    for column in ("tier", "instance", "replicas", "calls", "tokens out"):
        used.add_column(column, justify="left" if column in ("tier", "instance") else "right")
    priced = Table(title=f"tiermesh cost over {hours}")
    for column in ("tier", "cost", "$/1k tokens", "$/call", "$/day", "$/month"):
        priced.add_column(column, justify="left" if column == "tier" else "right")
    for row in rows:
        u = row.usage
        replicas = f"{u.busy_s / 3600:.2f} h busy" if row.tier == "bronze" else f"{u.replicas:.1f}"
        used.add_row(row.tier, row.instance_type, replicas, f"{u.requests:,.0f}", f"{u.tokens_out:,.0f}")
        priced.add_row(
            row.tier, usd(row.cost_usd, 4), usd(row.per_1k_tokens_usd, 4), usd(row.per_request_usd, 5),
            usd(row.daily_usd), usd(row.monthly_usd),
        )  # fmt: skip
    total = report(usage, rows)["total"]
    assert isinstance(total, dict)
    priced.add_row(
        "total", usd(total["cost_usd"], 4), "", "", usd(total["daily_usd"]), usd(total["monthly_usd"]),
        style="bold",
    )  # fmt: skip
    return [used, priced]
