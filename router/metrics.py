"""Router metrics: recorded once per stream, never per token (hot path).

Labels are bounded: task, tier, status code, reason, cache. Never npc_id or
session_id (one series per NPC would sink Prometheus)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from tiermesh.config import PRIORITIES

if TYPE_CHECKING:
    from router.replicas import ReplicaSet
    from router.settings import RouterSettings
    from tiermesh.config import TierName

M = TypeVar("M", Counter, Gauge, Histogram)
_SERIES: dict[tuple[Any, ...], Any] = {}


def series(metric: M, *labels: str) -> M:
    """`metric.labels(*labels)`, looked up once: for series a call records on its way
    (every call records about ten at its end), where prometheus_client's checked, locked
    `labels()` is a measurable share of the router's time. The labels are bounded (see
    above), and so is this."""
    key = (metric, *labels)
    child = _SERIES.get(key)
    if child is None:
        child = _SERIES[key] = metric.labels(*labels)
    return child


# Fine below 16 ms for Gold's SLO, coarse up to Bronze's seconds.
LATENCY_BUCKETS = (
    0.002, 0.004, 0.006, 0.008, 0.010, 0.012, 0.016, 0.025, 0.05, 0.08, 0.1, 0.15,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip

REQUESTS = Counter(
    "tiermesh_router_requests",
    "Generate calls by task, serving tier and final gRPC status",
    ["task", "tier", "code"],
)
TIME_TO_FIRST_TOKEN = Histogram(
    "tiermesh_router_time_to_first_token_seconds",
    "From the request reaching the router to the first delta leaving it",
    ["task", "tier"],
    buckets=LATENCY_BUCKETS,
)
REQUEST_DURATION = Histogram(
    "tiermesh_router_request_duration_seconds",
    "From the request reaching the router to the end of its stream (Gold's 16 ms SLO is on this)",
    ["task", "tier"],
    buckets=LATENCY_BUCKETS,
)
INTER_TOKEN = Histogram(
    "tiermesh_router_inter_token_seconds",
    "Mean gap between a stream's deltas, observed once per stream of two or more",
    ["task", "tier"],
    buckets=LATENCY_BUCKETS,
)
TOKENS = Counter(
    "tiermesh_router_tokens",
    "Tokens in (prompt) and out (completion) as the serving tier counted them",
    ["task", "tier", "direction"],  # in | out
)
STREAM_MESSAGES = Counter(
    "tiermesh_router_stream_messages",
    "Response messages relayed to callers",
    ["task", "tier"],
)
EJECTIONS = Counter(
    "tiermesh_router_ejections",
    "Replicas ejected by the breaker, by tier and reason (failures | latency)",
    ["tier", "reason"],
)
RETRIES = Counter(
    "tiermesh_router_retries",
    "Attempts retried on another replica before the first token",
    ["tier"],
)
BUDGET_EXHAUSTED = Counter(
    "tiermesh_router_retry_budget_exhausted",
    "Retries or hedges not made because the retry budget was spent",
    ["tier", "kind"],
)
HEDGES = Counter(
    "tiermesh_router_hedges",
    "Hedged attempts started, and which attempt won",
    ["tier", "outcome"],  # started | hedge_won | primary_won
)
RESUMES = Counter(
    "tiermesh_router_resumes",
    "Streams continued on another replica after a mid-stream failure",
    ["tier"],
)
FALLBACKS = Counter(
    "tiermesh_router_fallbacks",
    "Tiers given up on for a call, by tier and reason",
    ["task", "tier", "reason"],  # slow | failed | shed | skipped
)
DEADLINE_OUTCOMES = Counter(
    "tiermesh_router_deadline_outcomes",
    "What each Generate call's deadline came to: answered (whole, by a tier or a cache), "
    "shaped (ended cleanly at the deadline), canned, missed (DEADLINE_EXCEEDED), failed",
    ["task", "outcome"],
)
PROBES = Counter(
    "tiermesh_router_probes",
    "Calls that tried a tier its record said was too slow, with a canned answer to fall back on",
    ["task", "tier"],
)
LATE_ANSWERS = Counter(
    "tiermesh_router_late_answers",
    "Streamed answers from a tier given up on to keep time for a later one, which answered after all",
    ["task", "tier"],
)
LOOP_LAG = Histogram(
    "tiermesh_router_loop_lag_seconds",
    "How late the event loop's heartbeat ran (router/heartbeat.py): what a due timer, the "
    "deadlines' included, waits for a core or behind other callbacks",
    buckets=(0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.5, 2.0),
)
CANNED = Counter("tiermesh_router_canned", "Calls answered with the persona's canned line", ["task"])
SHED = Counter(
    "tiermesh_router_shed",
    "Calls refused because a tier's queue could not meet the deadline",
    ["tier"],
)
EDGE_REFUSED = Counter(
    "tiermesh_router_edge_refused",
    "Streams and connections the native edge refused before a call began, by reason "
    "(header_limit | buffered_limit | body_timeout | timeout | connection_limit | protocol_error)",
    ["reason"],
)
# Traffic classes: priority is one of three; tenant is a configured tenant's name or
# "other" (router.traffic.tenants), so both stay bounded.
CLASS_REQUESTS = Counter(
    "tiermesh_router_class_requests",
    "Generate calls by traffic class, tenant and final gRPC status",
    ["priority", "tenant", "code"],
)
CLASS_TIME_TO_FIRST_TOKEN = Histogram(
    "tiermesh_router_class_time_to_first_token_seconds",
    "From the request reaching the router to its first delta leaving it, by traffic class",
    ["priority"],
    buckets=LATENCY_BUCKETS,
)
CLASS_TOKENS = Counter(
    "tiermesh_router_class_tokens",
    "Tokens served (prompt in, completion out) by tenant and traffic class",
    ["priority", "tenant", "direction"],
)
CLASS_SHED = Counter(
    "tiermesh_router_class_shed",
    "Calls a tier's queue refused or gave up on, by class and why (full | deadline | displaced)",
    ["tier", "priority", "reason"],
)
QUEUE_WAIT = Histogram(
    "tiermesh_router_queue_wait_seconds",
    "Time a call waited for a tier stream slot before it got one, by traffic class",
    ["tier", "priority"],
    buckets=LATENCY_BUCKETS,
)
QUOTA_EXCEEDED = Counter(
    "tiermesh_router_quota_exceeded",
    "Calls refused because their tenant was out of tokens (in | out)",
    ["tenant", "direction"],
)
RATE_LIMITED = Counter("tiermesh_router_rate_limited", "Calls refused by a client's rate limit")
QUEUE_DEPTH = Gauge("tiermesh_router_queue_depth", "Calls waiting for a tier stream slot", ["tier"])
CACHE = Counter(
    "tiermesh_router_cache_requests",
    "Cache lookups by cache and result (hit | near_hit | miss | bypass)",
    ["cache", "result"],
)
SESSION_STORE_ERRORS = Counter(
    "tiermesh_router_session_store_errors",
    "Session reads or writes that failed (the turn was served without memory)",
    ["operation"],
)
PLACEMENTS = Counter(
    "tiermesh_router_placements",
    "Conversation turns by where prefix affinity sent them: kept (on the remembered "
    "replica), placed (a first turn) or moved (its replica full or gone: a cold prefix)",
    ["tier", "outcome"],
)


class ReplicaCollector(Collector):
    """Replica state read at scrape time: breaker ejections end on a clock, not on an
    event, so a gauge set on events would go stale. Also the tier's running cost by
    the hour (price table × replicas), which the cost dashboard sums."""

    def __init__(
        self, replica_sets: Mapping[TierName, ReplicaSet], hourly_usd: Mapping[TierName, float]
    ) -> None:
        self._sets = replica_sets
        self._hourly = hourly_usd

    def collect(self) -> Iterator[GaugeMetricFamily]:
        known = GaugeMetricFamily("tiermesh_router_replicas", "Replicas known per tier", labels=["tier"])
        ejected = GaugeMetricFamily(
            "tiermesh_router_replicas_ejected",
            "Replicas whose breaker is open or half-open",
            labels=["tier"],
        )
        unhealthy = GaugeMetricFamily(
            "tiermesh_router_replicas_not_serving",
            "Replicas whose health check says NOT_SERVING",
            labels=["tier"],
        )
        cost = GaugeMetricFamily(
            "tiermesh_router_tier_cost_per_hour_dollars",
            "The tier's replicas × its node price per hour (config cost.prices)",
            labels=["tier"],
        )
        for tier, replica_set in self._sets.items():
            replicas = replica_set.replicas
            known.add_metric([tier], len(replicas))
            ejected.add_metric([tier], sum(r.breaker.state != "closed" for r in replicas))
            unhealthy.add_metric([tier], sum(not r.serving for r in replicas))
            cost.add_metric([tier], len(replicas) * self._hourly.get(tier, 0.0))
        yield from (known, ejected, unhealthy, cost)


def initialise(router: RouterSettings) -> None:
    """Create the series every dashboard and alert reads, at zero, so rate() and
    ratios work from the first scrape instead of appearing with the first event."""
    for task, policy in router.tasks.items():
        for tier in policy.tiers:
            REQUESTS.labels(task, tier, "OK")
            for reason in ("slow", "failed", "shed", "skipped"):
                FALLBACKS.labels(task, tier, reason)
            for direction in ("in", "out"):
                TOKENS.labels(task, tier, direction)
            TIME_TO_FIRST_TOKEN.labels(task, tier)
            REQUEST_DURATION.labels(task, tier)
            INTER_TOKEN.labels(task, tier)
        CANNED.labels(task)
        for outcome in ("answered", "shaped", "canned", "missed", "failed"):
            DEADLINE_OUTCOMES.labels(task, outcome)
    for priority in PRIORITIES:
        CLASS_TIME_TO_FIRST_TOKEN.labels(priority)
        for tenant in (*router.traffic.tenants, "other"):
            CLASS_REQUESTS.labels(priority, tenant, "OK")
        for tier in router.tiers:
            QUEUE_WAIT.labels(tier, priority)
            for reason in ("full", "deadline", "displaced"):
                CLASS_SHED.labels(tier, priority, reason)
    for tier in router.tiers:
        SHED.labels(tier)
        QUEUE_DEPTH.labels(tier)
        RETRIES.labels(tier)
        RESUMES.labels(tier)
        for outcome in ("started", "hedge_won", "primary_won"):
            HEDGES.labels(tier, outcome)
        if router.tiers[tier].balancer == "prefix_affine":
            for outcome in ("kept", "placed", "moved"):
                PLACEMENTS.labels(tier, outcome)
        for reason in ("failures", "latency"):
            EJECTIONS.labels(tier, reason)
    for reason in (
        "header_limit",
        "buffered_limit",
        "body_timeout",
        "timeout",
        "connection_limit",
        "protocol_error",
    ):
        EDGE_REFUSED.labels(reason)
    for cache in ("intent", "result"):
        for result in ("hit", "miss", "bypass"):
            CACHE.labels(cache, result)
    CACHE.labels("intent", "near_hit")
