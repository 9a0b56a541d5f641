"""The router process: the policies composed into one pipeline, and its server."""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY

from router import metrics
from router.auth import auth_interceptors, authenticator, client_quotas
from router.call import Call
from router.estimates import TierEstimates
from router.jobs import Jobs
from router.pipeline import Backend
from router.policies.admission import Admission
from router.policies.balancer import Balancer, picker
from router.policies.cache import IntentCache
from router.policies.canned import CannedAnswers
from router.policies.fallback import Fallback
from router.policies.hedge import Hedge
from router.policies.limit import StreamLimit
from router.policies.planner import TierPlanner
from router.policies.result_cache import ResultCache
from router.policies.resume import Resume
from router.policies.retry import Retry
from router.policies.session import SessionContext
from router.replicas import ReplicaSet
from router.server import MESH_SERVICE, MeshServicer
from router.state.store import SessionStore
from router.state.store import store as session_store
from router.stats import RetryBudget
from tiermesh.config import CallerLimits, DataPathSettings, Settings, TierName
from tiermesh.serving import Serving, start_grpc_server, start_metrics, wait_for_signal
from tiermesh.tracing import setup_tracing
from tiermesh.v1 import mesh_pb2_grpc

if TYPE_CHECKING:
    from router.native.edge import NativeEdge

log = logging.getLogger(__name__)


def build_pipeline(
    settings: Settings,
    replicas: Mapping[TierName, ReplicaSet],
    jobs: Jobs | None = None,
    sessions: SessionStore | None = None,
) -> Backend:
    """Compose the policies, outermost first: session context → intent cache → result
    cache → admission → fallback over planned tiers → per tier: stream limit → resume
    → hedge → retry → balancer → replica adapter."""
    router = settings.router
    estimates = {
        name: TierEstimates(tier.expected_ttft_s, tier.expected_token_s)
        for name, tier in router.tiers.items()
    }
    midstream = {task: policy.on_midstream_failure for task, policy in router.tasks.items()}
    tiers: dict[TierName, Backend] = {}
    queue_wait: dict[TierName, Callable[[], float]] = {}
    for name, tier in router.tiers.items():
        budget = RetryBudget(router.retry_budget.ratio, router.retry_budget.min_per_s)
        backend: Backend = Balancer(replicas[name], picker(tier.balancer))
        backend = Retry(backend, name, budget, tier.max_attempts)
        if tier.hedge:
            backend = Hedge(backend, name, _hedge_delay(estimates[name], tier.hedge_min_samples), budget)
        backend = Resume(backend, name, midstream)
        if tier.max_streams:
            limit = StreamLimit(backend, name, tier.max_streams, tier.expected_ttft_s)
            queue_wait[name] = limit.wait_estimate
            backend = limit
        tiers[name] = backend
    routes = {task: policy.tiers for task, policy in router.tasks.items()}
    planner = TierPlanner(
        routes,
        estimates,
        max_tokens={name: tier.max_tokens for name, tier in router.tiers.items()},
        min_tokens={task: policy.min_tokens for task, policy in router.tasks.items()},
        queue_wait=queue_wait,
    )
    canned = CannedAnswers(
        settings.personas, frozenset(task for task, policy in router.tasks.items() if policy.canned)
    )
    pipeline: Backend = Fallback(planner, tiers, estimates, canned, router.deadline_margin_s)
    quotas = client_quotas(settings.security.auth)
    if router.admission.rate_per_s or quotas:
        # Unlimited by default when only some clients have quotas.
        rate = router.admission.rate_per_s or float("inf")
        pipeline = Admission(pipeline, rate, router.admission.burst, quotas=quotas)
    cached = frozenset(task for task, policy in router.tasks.items() if policy.result_cache)
    if jobs is not None and cached:
        pipeline = ResultCache(pipeline, jobs.lookup, cached)
    if router.intent_cache.enabled:
        pipeline = IntentCache(pipeline, router.intent_cache.max_entries, router.intent_cache.ttl_s)
    if sessions is not None:
        budgets = {task: policy.history_tokens for task, policy in router.tasks.items()}
        pipeline = SessionContext(pipeline, sessions, budgets)
    return pipeline


def _hedge_delay(estimates: TierEstimates, min_samples: int) -> Callable[[Call], float | None]:
    """A hedge waits for the tier's p95 time to first token for the call's task, once
    there are enough samples to know it."""

    def delay(call: Call) -> float | None:
        estimate = estimates.task(call.task)
        return estimate.ttft(0.95) if estimate.samples >= min_samples else None

    return delay


@dataclass
class Router:
    serving: Serving
    replicas: dict[TierName, ReplicaSet]
    jobs: Jobs | None = None
    sessions: SessionStore | None = None
    # With `data_path.edge: native`: the edge callers reach, in front of `serving`.
    edge: NativeEdge | None = None

    @property
    def port(self) -> int:
        return self.edge.port if self.edge is not None else self.serving.port

    async def close(self, grace: float | None = 1.0) -> None:
        await self.serving.set_serving(False)
        if self.edge is not None:
            await self.edge.close(grace)
            shutil.rmtree(Path(self.edge.internal).parent, ignore_errors=True)
        await self.serving.server.stop(grace)
        await asyncio.gather(*(replicas.close() for replicas in self.replicas.values()))
        if self.jobs is not None:
            await self.jobs.close()
        if self.sessions is not None:
            await self.sessions.close()


def grpc_edge_options(data_path: DataPathSettings, limits: CallerLimits) -> list[tuple[str, int]]:
    """gRPC core's server options for what callers reach on the grpc.aio server: caller
    keepalive and `router.limits`, as far as gRPC core has them (docs/operations.md)."""
    return [
        ("grpc.keepalive_time_ms", int(data_path.caller_keepalive_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(data_path.caller_keepalive_timeout_s * 1000)),
        ("grpc.max_metadata_size", limits.max_header_list_bytes),
        ("grpc.absolute_max_metadata_size", limits.max_header_list_bytes),
        ("grpc.server_handshake_timeout_ms", int(limits.preface_timeout_s * 1000)),
        ("grpc.max_connection_idle_ms", int(limits.idle_timeout_s * 1000)),
    ]


async def start_router(settings: Settings) -> Router:
    router = settings.router
    data_path = router.data_path
    replicas = {
        name: ReplicaSet(name, tier, router.breaker, settings.security.mesh_tls, data_path)
        for name, tier in router.tiers.items()
    }
    await asyncio.gather(*(r.start() for r in replicas.values()))
    bronze = settings.router.tiers.get("bronze")
    jobs = Jobs(settings, bronze.endpoints[0]) if bronze is not None else None
    sessions = session_store(settings.state)
    pipeline = build_pipeline(settings, replicas, jobs, sessions)
    servicer = MeshServicer(settings, pipeline, sessions, jobs)
    reuse_port = data_path.workers > 1
    native = data_path.edge == "native"
    # Behind a native edge, grpc.aio serves what the edge relays, on a private socket.
    internal = Path(tempfile.mkdtemp(prefix="tiermesh-router-")) / "grpc.sock" if native else None
    serving = await start_grpc_server(
        f"unix:{internal}" if internal is not None else router.listen,
        lambda server: mesh_pb2_grpc.add_MeshServicer_to_server(servicer, server),
        [MESH_SERVICE],
        max_message_bytes=router.max_message_bytes,
        tls=None if native else settings.security.edge_tls,
        interceptors=auth_interceptors(settings.security.auth),
        reuse_port=reuse_port and not native,
        options=grpc_edge_options(data_path, router.limits),
    )
    edge = None
    if internal is not None:
        from router.native.edge import NativeEdge  # builds the C part on first use

        checker = authenticator(settings.security.auth)
        edge = NativeEdge(
            servicer,
            str(internal),
            router.max_message_bytes,
            checker,
            limits=router.limits,
            keepalive_s=data_path.caller_keepalive_s,
            keepalive_timeout_s=data_path.caller_keepalive_timeout_s,
        )
        try:
            await edge.start(router.listen, settings.security.edge_tls, reuse_port)
        except BaseException:  # e.g. the port is taken: leave nothing running behind
            await serving.server.stop(None)
            shutil.rmtree(internal.parent, ignore_errors=True)
            raise
    return Router(serving, replicas, jobs, sessions, edge)


async def serve(settings: Settings, worker: int = 0) -> None:
    """One router process; worker i of several serves /metrics on metrics_port + i."""
    setup_tracing(settings.tracing, "router")
    metrics.initialise(settings)
    router = await start_router(settings)
    prices = {tier: price.hourly_usd for tier, price in settings.cost.prices.items()}
    REGISTRY.register(metrics.ReplicaCollector(router.replicas, prices))
    metrics_port = settings.router.metrics_port
    start_metrics(metrics_port + worker if metrics_port else 0, settings.router.listen)
    log.info("router worker %d listening on port %d", worker, router.port)
    await wait_for_signal()
    await router.close(grace=2.0)
