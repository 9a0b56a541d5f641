"""Router metrics: recorded once per stream, never per token (hot path)."""

from prometheus_client import Counter, Histogram

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
