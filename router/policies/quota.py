"""Token quotas per tenant: input and output tokens per minute (router.traffic.tenants),
RESOURCE_EXHAUSTED with the time until the tenant has tokens again when it is out.

Requests are metered by what they cost a tier, not by count: a 1000-token long-form
uses as much of a tenant's quota as 250 four-token intents. The prompt (estimated) and
max_tokens are taken at admission, and settled against the tier's own counts when the
stream ends (router/state/quota.py keeps the buckets).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc

from router import metrics
from router.call import Call
from router.pipeline import Backend
from router.settings import TrafficSettings
from router.state.quota import Limits, QuotaStore
from tiermesh.errors import StatusError
from tiermesh.v1 import mesh_pb2


class TokenQuota:
    def __init__(self, inner: Backend, traffic: TrafficSettings, store: QuotaStore) -> None:
        self._inner = inner
        self._traffic = traffic
        self._store = store
        # Charges made after a stream ended, kept until done (a bare task may be
        # collected before it runs).
        self._charges: set[asyncio.Task[None]] = set()

    def generate(self, call: Call) -> AsyncIterator[mesh_pb2.GenerateResponse]:
        tenant = self._traffic.tenant(call.client_id)
        limits = Limits(
            tenant.input_tokens_per_min, tenant.output_tokens_per_min, self._traffic.quota_burst_s
        )
        if not (limits.input_per_min or limits.output_per_min):
            return self._inner.generate(call)  # unmetered: no step per message
        return self._metered(call, limits)

    async def _metered(self, call: Call, limits: Limits) -> AsyncIterator[mesh_pb2.GenerateResponse]:
        estimate = call.prompt_tokens_estimate()
        wait, direction = await self._store.take(call.client_id, limits, estimate, call.max_tokens)
        if wait:
            metrics.QUOTA_EXCEEDED.labels(self._traffic.tenant_label(call.client_id), direction).inc()
            per_min = limits.input_per_min if direction == "in" else limits.output_per_min
            raise StatusError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"client {call.client_id!r} is out of {'input' if direction == 'in' else 'output'} "
                f"tokens ({per_min} per minute); it has tokens again in {wait:.1f}s",
                retry_after_s=wait,
            )
        prompt, completion, deltas = estimate, 0, 0
        try:
            async for response in self._inner.generate(call):
                deltas += 1
                if response.finish_reason and response.HasField("usage"):
                    prompt = response.usage.prompt_tokens or estimate
                    completion = response.usage.completion_tokens or deltas
                yield response
        finally:
            # A stream cut short is charged what it sent (≈ a token per delta).
            used = completion or deltas
            charge = self._store.charge(call.client_id, limits, prompt - estimate, used - call.max_tokens)
            task = asyncio.get_running_loop().create_task(charge)
            self._charges.add(task)
            task.add_done_callback(self._charges.discard)
