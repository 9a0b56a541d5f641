"""Router metrics: recorded once per stream, never per token (hot path)."""

from prometheus_client import Counter, Gauge, Histogram

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
CANNED = Counter("tiermesh_router_canned", "Calls answered with the persona's canned line", ["task"])
SHED = Counter(
    "tiermesh_router_shed",
    "Calls refused because a tier's queue could not meet the deadline",
    ["tier"],
)
RATE_LIMITED = Counter("tiermesh_router_rate_limited", "Calls refused by a client's rate limit")
QUEUE_DEPTH = Gauge("tiermesh_router_queue_depth", "Calls waiting for a tier stream slot", ["tier"])
REPLICAS = Gauge("tiermesh_router_replicas", "Replicas known per tier", ["tier"])
CACHE = Counter(
    "tiermesh_router_cache_requests",
    "Cache lookups by cache and result (hit | miss | bypass)",
    ["cache", "result"],
)
SESSION_STORE_ERRORS = Counter(
    "tiermesh_router_session_store_errors",
    "Session reads or writes that failed (the turn was served without memory)",
    ["operation"],
)
