"""Deadline-based fallback down the planned tiers, then a canned line.

A tier is given up on when it fails before its first token or has not produced one
by its step's budget; the next tier gets the rest of the caller's deadline. Once a
tier has streamed a token the call is committed to it (mid-stream failures are the
tier's Resume policy). Nothing here ever waits past the caller's deadline.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Mapping

import grpc

from router import metrics
from router.call import Call
from router.pipeline import Backend
from router.policies.planner import Step, TierPlanner
from router.stats import TierLatency
from router.streams import close
from tiermesh.config import TaskName, TierName
from tiermesh.errors import StatusError
from tiermesh.v1 import mesh_pb2

# Faults of the request itself: another tier would refuse it too.
CALLER_FAULTS = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE})


class Fallback:
    def __init__(
        self,
        planner: TierPlanner,
        tiers: Mapping[TierName, Backend],
        latency: Mapping[TierName, TierLatency],
        canned_line: Callable[[Call], str],
        canned_tasks: frozenset[TaskName],
    ) -> None:
        self._planner = planner
        self._tiers = tiers
        self._latency = latency
        self._canned_line = canned_line
        self._canned_tasks = canned_tasks

    async def generate(self, call: Call) -> AsyncIterator[mesh_pb2.GenerateResponse]:
        line = self._canned_line(call) if call.task in self._canned_tasks else ""
        steps, skipped = self._planner.plan(call, has_last_resort=bool(line))
        for tier in skipped:
            metrics.FALLBACKS.labels(call.task, tier, "skipped").inc()
        if not steps and not skipped and not line:
            raise StatusError(grpc.StatusCode.UNAVAILABLE, f"no tier serves {call.task} requests")
        failures: list[StatusError] = []
        for step in steps:
            # A step with the whole deadline (the last) takes the call as it is: copying
            # it is a first-token cost on every request.
            attempt = (
                call
                if step.has_whole_deadline(call)
                else dataclasses.replace(call, first_token_by=step.first_token_by)
            )
            stream = self._tiers[step.tier].generate(attempt)
            try:
                first = await self._first_token(call, step, stream)
                if isinstance(first, StatusError):
                    failures.append(first)
                    continue
                yield first
                async for response in stream:
                    yield response
                return
            finally:
                # Whatever ends this step (a failure, the caller leaving, the stream's
                # end) ends the attempt: its tier call must not outlive it.
                await close(stream)
        if line and call.remaining() > 0:
            metrics.CANNED.labels(call.task).inc()
            yield mesh_pb2.GenerateResponse(
                text=line, tier=mesh_pb2.TIER_CACHE, finish_reason=mesh_pb2.FINISH_REASON_STOP
            )
            return
        raise self._summary(call, failures, skipped)

    async def _first_token(
        self, call: Call, step: Step, stream: AsyncIterator[mesh_pb2.GenerateResponse]
    ) -> mesh_pb2.GenerateResponse | StatusError:
        """The tier's first message; or why this tier is given up. Awaited in place (no
        task): giving up on the first token ends the attempt anyway."""
        started = time.monotonic()
        # A step with the whole deadline needs no timer of its own: the tier call ends
        # at the caller's deadline (and the edge with it), as DEADLINE_EXCEEDED.
        whole = step.has_whole_deadline(call)
        timeout = None if whole else asyncio.timeout(step.first_token_by - started)
        try:
            if timeout is None:
                first = await anext(stream)
            else:
                async with timeout:
                    first = await anext(stream)
        except TimeoutError:
            if timeout is None or not timeout.expired():
                raise
            return self._slow(call, step, started)
        except StopAsyncIteration:
            return StatusError(grpc.StatusCode.UNAVAILABLE, f"{step.tier} sent nothing")
        except StatusError as error:
            if error.code in CALLER_FAULTS:
                raise
            if error.code == grpc.StatusCode.DEADLINE_EXCEEDED and time.monotonic() >= step.first_token_by:
                return self._slow(call, step, started)
            reason = "shed" if error.code == grpc.StatusCode.RESOURCE_EXHAUSTED else "failed"
            metrics.FALLBACKS.labels(call.task, step.tier, reason).inc()
            return error
        self._latency[step.tier].observe(time.monotonic() - started)
        return first

    def _slow(self, call: Call, step: Step, started: float) -> StatusError:
        """The tier gave no first token by its step's budget."""
        # A censored sample: this tier took at least this long.
        self._latency[step.tier].observe(time.monotonic() - started)
        metrics.FALLBACKS.labels(call.task, step.tier, "slow").inc()
        return StatusError(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            f"{step.tier} gave no first token within {step.first_token_by - started:.3f}s",
        )

    @staticmethod
    def _summary(call: Call, failures: list[StatusError], skipped: list[TierName]) -> StatusError:
        detail = "; ".join(
            [f.message for f in failures] + [f"{t} skipped: too slow for the deadline" for t in skipped]
        )
        if call.remaining() <= 0 or (skipped and not failures):
            return StatusError(grpc.StatusCode.DEADLINE_EXCEEDED, f"no tier answered in time: {detail}")
        if failures and all(f.code == grpc.StatusCode.RESOURCE_EXHAUSTED for f in failures):
            retry = min(f.retry_after_s or 0.0 for f in failures)
            return StatusError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"every tier is full: {detail}",
                retry_after_s=retry,
            )
        if failures and all(f.code == grpc.StatusCode.DEADLINE_EXCEEDED for f in failures):
            return StatusError(grpc.StatusCode.DEADLINE_EXCEEDED, f"no tier answered in time: {detail}")
        return StatusError(grpc.StatusCode.UNAVAILABLE, f"no tier could answer: {detail}")
