"""The router process: its policies composed as one list (outermost first, each with why
it sits there), its tiers' replicas, and the edge callers reach."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from prometheus_client import REGISTRY

from router import metrics
from router.auth import client_quotas
from router.backends import TierAdapter, adapter
from router.backends.intent_encoder import IntentLabeller
from router.call import Call
from router.edge import Edge, coalescing, start_edge
from router.estimates import TierEstimates
from router.heartbeat import Heartbeat
from router.jobs import Jobs
from router.pipeline import Backend, Layer, compose, describe
from router.policies.admission import Admission
from router.policies.balancer import Balancer, picker
from router.policies.cache import IntentCache, near_match
from router.policies.canned import CannedAnswers
from router.policies.fallback import Fallback
from router.policies.hedge import Hedge
from router.policies.limit import StreamLimit, StreamLimits
from router.policies.planner import TierPlanner
from router.policies.quota import TokenQuota
from router.policies.result_cache import ResultCache
from router.policies.resume import Resume
from router.policies.retry import Retry
from router.policies.session import SessionContext, Window
from router.replicas import ReplicaSet
from router.server import MeshServicer
from router.settings import RouterConfig, TierSettings
from router.state.placement import Placements, placement_store
from router.state.quota import MemoryQuota, QuotaStore, quota_store
from router.state.store import SessionStore
from router.state.store import store as session_store
from router.stats import RetryBudget
from tiermesh.config import TierName
from tiermesh.serving import Serving, start_metrics, wait_for_signal
from tiermesh.tracing import setup_tracing

log = logging.getLogger(__name__)


def build_pipeline(
    config: RouterConfig,
    replicas: Mapping[TierName, ReplicaSet],
    jobs: Jobs | None = None,
    sessions: SessionStore | None = None,
    quotas: QuotaStore | None = None,
    placements: Placements | None = None,
) -> Backend:
    """The router's policies, composed from the lists below (outermost first)."""
    router = config.router
    estimates = {
        name: TierEstimates(tier.expected_ttft_s, tier.expected_token_s, tier.expected_ttft_by_task)
        for name, tier in router.tiers.items()
    }
    tiers: dict[TierName, Backend] = {}
    queue_wait: dict[TierName, Callable[[Call], float]] = {}
    for name, tier in router.tiers.items():
        layers = tier_layers(config, name, estimates[name], queue_wait)
        pick = picker(tier.balancer, replicas[name], tier.affinity, placements)
        tiers[name] = compose(layers, Balancer(replicas[name], pick))
        log.info("%s tier: %s → balancer → replicas", name, describe(layers))
    planner = TierPlanner(
        {task: policy.tiers for task, policy in router.tasks.items()},
        estimates,
        max_tokens={name: tier.max_tokens for name, tier in router.tiers.items()},
        min_tokens={task: policy.min_tokens for task, policy in router.tasks.items()},
        queue_wait=queue_wait,
    )
    canned = frozenset(task for task, policy in router.tasks.items() if policy.canned)
    fallback = Fallback(
        planner, tiers, estimates, CannedAnswers(config.personas, canned), router.deadline_margin_s
    )
    layers = call_layers(config, jobs, sessions, quotas)
    log.info("pipeline: %s → fallback over the tiers", describe(layers))
    return compose(layers, fallback)


def call_layers(
    config: RouterConfig,
    jobs: Jobs | None,
    sessions: SessionStore | None,
    token_store: QuotaStore | None = None,
) -> list[Layer]:
    """What every call passes before a tier is chosen, outermost first."""
    router = config.router
    traffic = router.traffic
    metered = any(
        t.input_tokens_per_min or t.output_tokens_per_min
        for t in (*traffic.tenants.values(), traffic.default_tenant)
    )
    tokens = token_store if token_store is not None else MemoryQuota()
    tasks = router.tasks
    quotas = client_quotas(config.auth)
    admitted = bool(router.admission.rate_per_s or quotas)
    # Unlimited by default when only some clients have quotas.
    rate = router.admission.rate_per_s or float("inf")
    cached = frozenset(task for task, policy in tasks.items() if policy.result_cache)
    windows = {
        task: Window(policy.history_tokens, int(policy.history_tokens * policy.history_step))
        for task, policy in tasks.items()
    }
    cache = router.intent_cache
    return [
        Layer(
            "session",
            "outermost: every cache and tier answers with the conversation in the prompt, and the "
            "turn is recorded whatever answered it (a cached intent too)",
            (lambda inner: SessionContext(inner, sessions, windows)) if sessions is not None else None,
        ),
        Layer(
            "intent cache",
            "before admission and tiers: a repeated situation, or a near-duplicate of one, costs no "
            "quota and no tier call",
            (lambda inner: IntentCache(inner, cache.max_entries, cache.ttl_s, near=near_match(cache)))
            if cache.enabled
            else None,
        ),
        Layer(
            "result cache",
            "before admission and tiers: content Bronze already made is served as it is",
            (lambda inner: ResultCache(inner, jobs.lookup, cached)) if jobs is not None and cached else None,
        ),
        Layer(
            "admission",
            "before any tier work: a client over its rate is refused before it costs a tier anything",
            (lambda inner: Admission(inner, rate, router.admission.burst, quotas=quotas))
            if admitted
            else None,
        ),
        Layer(
            "token quota",
            "after the caches (a cached answer costs no tokens) and the call-rate limit (which "
            "costs no store round trip): a tenant out of tokens is refused before any tier work",
            (lambda inner: TokenQuota(inner, traffic, tokens)) if metered else None,
        ),
    ]


def tier_layers(
    config: RouterConfig,
    name: TierName,
    estimates: TierEstimates,
    queue_wait: dict[TierName, Callable[[Call], float]],
) -> list[Layer]:
    """One tier, outermost first, above its balancer (which picks a replica and feeds its
    breaker and latency)."""
    router = config.router
    tier = router.tiers[name]
    budget = RetryBudget(router.retry_budget.ratio, router.retry_budget.min_per_s)
    midstream = {task: policy.on_midstream_failure for task, policy in router.tasks.items()}

    def limited(inner: Backend) -> Backend:
        shared = (
            StreamLimit(inner, name, tier.max_streams, tier.expected_ttft_s, router.traffic)
            if tier.max_streams
            else None
        )
        hold = tier.expected_ttft_by_task
        own = {
            task: StreamLimit(inner, name, streams, hold.get(task, tier.expected_ttft_s), router.traffic)
            for task, streams in tier.max_streams_by_task.items()
        }
        limit = StreamLimits(inner, shared, own) if own else shared
        assert limit is not None  # the layer is built only with a limit
        queue_wait[name] = limit.wait_estimate  # the planner adds it to the tier's time
        return limit

    return [
        Layer(
            "stream limit",
            "outermost: a call waits for a slot once, whatever resumes, hedges and retries do "
            "below; its queue orders calls by class and tenant, and sheds the lowest first",
            limited if tier.max_streams or tier.max_streams_by_task else None,
        ),
        Layer(
            "resume",
            "above hedge and retry: a stream that failed after tokens continues as a fresh attempt, "
            "which may itself hedge and retry before its first token",
            lambda inner: Resume(inner, name, midstream),
        ),
        Layer(
            "hedge",
            "above retry: each of the racing attempts retries on its own",
            (lambda inner: Hedge(inner, name, _hedge_delay(estimates, tier.hedge_min_samples), budget))
            if tier.hedge
            else None,
        ),
        Layer(
            "retry",
            "above the balancer: each try picks a replica afresh, avoiding those the call tried",
            lambda inner: Retry(inner, name, budget, tier.max_attempts),
        ),
    ]


def _hedge_delay(estimates: TierEstimates, min_samples: int) -> Callable[[Call], float | None]:
    """A hedge waits for the tier's p95 time to first token for the call's task, once
    there are enough samples to know it."""

    def delay(call: Call) -> float | None:
        estimate = estimates.task(call.task)
        return estimate.ttft(0.95) if estimate.samples >= min_samples else None

    return delay


@dataclass
class Router:
    serving: Serving  # grpc.aio's server: what the edge relays, or the edge itself
    edge: Edge  # what callers reach
    replicas: dict[TierName, ReplicaSet]
    jobs: Jobs | None = None
    sessions: SessionStore | None = None
    quotas: QuotaStore | None = None
    placements: Placements | None = None
    heartbeat: Heartbeat | None = None

    @property
    def port(self) -> int:
        return self.edge.port

    async def close(self, grace: float | None = 1.0) -> None:
        await self.serving.set_serving(False)
        if self.heartbeat is not None:
            self.heartbeat.stop()
        await self.edge.close(grace)
        await self.serving.stop(grace)
        await asyncio.gather(*(replicas.close() for replicas in self.replicas.values()))
        if self.jobs is not None:
            await self.jobs.close()
        if self.sessions is not None:
            await self.sessions.close()
        if self.quotas is not None:
            await self.quotas.close()
        if self.placements is not None:
            await self.placements.close()


async def start_router(config: RouterConfig) -> Router:
    router = config.router
    merging = coalescing(router.data_path)

    def transport(tier: TierName, settings: TierSettings) -> Callable[[str], TierAdapter]:
        labeller = IntentLabeller(config.personas)  # shared by the tier's replicas: one model
        return lambda address: adapter(
            tier, address, settings, config.mesh_tls, router.data_path.tier_client, merging.tier_client,
            labeller,
        )  # fmt: skip

    replicas = {
        name: ReplicaSet(name, tier, router.breaker, transport(name, tier))
        for name, tier in router.tiers.items()
    }
    await asyncio.gather(*(r.start() for r in replicas.values()))
    bronze = router.tiers.get("bronze")
    jobs = Jobs(config, bronze.endpoints[0]) if bronze is not None else None
    sessions = session_store(config.state)
    quotas = quota_store(config.state.backend, config.state.redis_url)
    placements = placement_store(config.state.backend, config.state.redis_url, config.state.ttl_s)
    pipeline = build_pipeline(config, replicas, jobs, sessions, quotas, placements)
    servicer = MeshServicer(config, pipeline, sessions, jobs, coalesce=merging.servicer)
    serving, edge = await start_edge(config, servicer)
    heartbeat = None
    if router.data_path.loop_heartbeat_s:
        heartbeat = Heartbeat(router.data_path.loop_heartbeat_s, metrics.LOOP_LAG.observe)
        heartbeat.start()
    return Router(serving, edge, replicas, jobs, sessions, quotas, placements, heartbeat)


async def serve(config: RouterConfig, worker: int = 0) -> None:
    """One router process; worker i of several serves /metrics on metrics_port + i."""
    setup_tracing(config.tracing, "router")
    metrics.initialise(config.router)
    router = await start_router(config)
    REGISTRY.register(metrics.ReplicaCollector(router.replicas, config.hourly_usd))
    metrics_port = config.router.metrics_port
    exposition = await start_metrics(metrics_port + worker if metrics_port else 0, config.router.listen)
    log.info("router worker %d listening on port %d", worker, router.port)
    await wait_for_signal()
    await router.close(grace=2.0)
    if exposition is not None:
        await exposition.cleanup()
