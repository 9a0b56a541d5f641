"""Deadline-based fallback down the planned tiers, then the canned answer: the router's
promise, an answer within the caller's deadline from the best tier that can still make it.

Each step is the planner's (planner.py): a tier and the time by which it must have
started (its first token; for an intent, its whole label). A tier that fails or is late
is given up on and the next step is planned with the time then left. For a task with no
canned answer (long-form), a streamed answer given up on only to keep time for a later
tier is not cancelled: it runs on beside the later attempts until the cut-off, and it is
the answer if it starts while the later tier still could (a Bronze job that lands just
after its planned time still beats a Silver that started). Where a canned answer keeps the
promise anyway, the given-up attempt is cancelled: run on, it would hold its tier's
capacity from the calls behind it. Once a tier has
streamed a token the call is committed to it (mid-stream failures are the tier's Resume
policy), and its answer is shaped to the deadline (shaping.py). An intent's label is
gathered whole and checked before it is sent, so nothing is sent until it is. The
router's cut-off is the deadline less a margin (the time to get the last message out);
a task that allows a canned answer gets it at the cut-off at the latest, so it never
ends DEADLINE_EXCEEDED with nothing.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass

import grpc

from router import metrics
from router.call import Call
from router.estimates import TierEstimates
from router.pipeline import Backend
from router.policies.planner import WHOLE, Need, Step, TierPlanner
from router.policies.shaping import shaped
from router.stats import Clock
from router.streams import Attempt, Cutoff, close, first_ready
from tiermesh.config import TierName
from tiermesh.errors import StatusError
from tiermesh.v1 import mesh_pb2

log = logging.getLogger(__name__)
# Faults of the request itself: another tier would refuse it too.
CALLER_FAULTS = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE})
# The closing window of a shaped answer: this many tokens' worth before the cut-off.
CLOSING_TOKENS = 16
# The router's margin is at most this share of a call's whole budget (a 20 ms intent
# keeps 4 ms, not the configured 20).
MARGIN_SHARE = 0.2
# A caller's grpc-timeout may say more than it has left: gRPC's C core (Python, C++, C#,
# Ruby, PHP clients) rounds it up to 1 ms under 1 s, to 10 ms under 10 s, to 100 ms under
# 100 s. The cut-off comes this share of the budget earlier so a shaped answer still
# reaches such a caller before its own timer fires.
ENCODING_SHARE = 0.01


@dataclass(frozen=True, eq=False)
class Running:
    """A streamed attempt that may still be the answer: the current step's, or one
    given up on to keep time for it."""

    step: Step
    attempt: Attempt[mesh_pb2.GenerateResponse]
    started: float


class Fallback:
    def __init__(
        self,
        planner: TierPlanner,
        tiers: Mapping[TierName, Backend],
        estimates: Mapping[TierName, TierEstimates],
        canned: Callable[[Call], mesh_pb2.GenerateResponse | None],
        margin_s: float,
        clock: Clock = time.monotonic,
    ) -> None:
        self._planner = planner
        self._tiers = tiers
        self._estimates = estimates
        self._canned = canned
        self._margin_s = margin_s
        self._clock = clock

    def cut_at(self, call: Call) -> float:
        """When the router stops waiting for tiers: the deadline less its margin and the
        caller's timeout encoding's rounding."""
        budget = max(0.0, call.deadline - call.received_at)
        return call.deadline - min(self._margin_s, MARGIN_SHARE * budget) - ENCODING_SHARE * budget

    async def generate(self, call: Call) -> AsyncIterator[mesh_pb2.GenerateResponse]:
        canned = self._canned(call)
        cut_at = self.cut_at(call)
        tried: list[TierName] = []
        passed_over: set[TierName] = set()
        slow: list[TierName] = []
        failures: list[StatusError] = []
        # The attempt last given up on: left as it is, and unwound (its tier call
        # cancelled, its layers' bookkeeping done) when the next one starts, or only once
        # the canned answer is out: unwinding takes milliseconds, at the cut-off every
        # call that waited lands at once, and the answer comes first.
        given_up: Attempt[mesh_pb2.GenerateResponse] | None = None
        # Streamed attempts that may still answer first (see the module's docstring).
        running: list[Running] = []
        try:
            while True:
                step, passed = self._planner.next_step(call, tried, cut_at, last_resort=canned is not None)
                self._pass_over(call, passed, self._planner.left(cut_at), passed_over, slow, failures)
                if step is None:
                    break
                if given_up is not None:
                    await given_up.cancel()
                    given_up = None
                self._log_step(call, step, cut_at)
                if step.probe:
                    metrics.PROBES.labels(call.task, step.tier).inc()
                tried.append(step.tier)
                attempt = call
                if step.start_by < call.deadline or step.shortened(call):
                    attempt = dataclasses.replace(
                        call, first_token_by=step.start_by, max_tokens=step.max_tokens
                    )
                stream = self._tiers[step.tier].generate(attempt)
                waited: Attempt[mesh_pb2.GenerateResponse] | None = None  # a race's are in `running`
                cutoff: Cutoff | None = None
                try:
                    started = self._clock()
                    if call.task in WHOLE:
                        waited = Attempt(stream, self._label(call, step, stream))
                        whole = await self._wait(call, step, waited, started)
                        if isinstance(whole, StatusError):
                            failures.append(whole)
                            given_up = waited
                            continue
                        yield whole
                        return
                    if (step.keeps_reserve and canned is None) or running:
                        current = Running(step, Attempt(stream), started)
                        running.append(current)
                        won = await self._race(call, running, step.start_by, failures, current)
                        if won is None:
                            if current in running:
                                failures.append(self._slow(call, step, started))
                                if not step.keeps_reserve:
                                    # Late for its own minimal answer, not given up on for
                                    # a later tier's sake: of no use running on.
                                    running.remove(current)
                                    await current.attempt.cancel()
                            continue
                        async for response in self._commit(call, *won, running, cut_at):
                            yield response
                        return
                    waited = Attempt(stream)
                    first = await self._wait(call, step, waited, started)
                    if isinstance(first, StatusError):
                        failures.append(first)
                        given_up = waited
                        continue
                    yield first
                    cutoff = Cutoff(cut_at)
                    async for response in self._rest(call, step, first, stream, cutoff, cut_at):
                        yield response
                    return
                finally:
                    # Whatever else ends this step (the caller leaving, the stream's end)
                    # ends the attempt: its tier call must not outlive it.
                    if cutoff is not None:
                        cutoff.cancel()
                    if step.probe:
                        self._estimates[step.tier].task(call.task).end_probe()
                    if waited is not None:
                        if waited is not given_up:
                            await waited.cancel()
                    elif not any(r.attempt.stream is stream for r in running):
                        await close(stream)
            if running:
                # No step left to start: what is still running has until the cut-off.
                won = await self._race(call, running, cut_at, failures)
                if won is not None:
                    async for response in self._commit(call, *won, running, cut_at):
                        yield response
                    return
            # Still running at the cut-off: time, not a failure, is why there is no answer.
            out_of_time = bool(running)
            if canned is not None and self._clock() < call.deadline:
                metrics.CANNED.labels(call.task).inc()
                yield canned
                return
            raise self._summary(call, failures, slow, out_of_time)
        finally:
            for late in running:
                await late.attempt.cancel()
            if given_up is not None:
                await given_up.cancel()

    async def _race(
        self,
        call: Call,
        running: list[Running],
        until: float,
        failures: list[StatusError],
        current: Running | None = None,
    ) -> tuple[Running, mesh_pb2.GenerateResponse] | None:
        """The attempt that answers, and its first message: the first to send before
        `until`, but a worse tier's first message is held while a better one still runs,
        until the worse one's own start-by time, so the better tier answers if it can
        (`running` is in plan order, best first). One that fails leaves `running` (its
        failure in `failures`); so does waiting, once `current` has failed and nothing
        is held. None when no answer came by then."""
        held: tuple[Running, mesh_pb2.GenerateResponse] | None = None
        while True:
            if held is not None:
                better = running[: running.index(held[0])]
                if not better:
                    break
                waiting, by = better, held[0].step.start_by
            elif running and (current is None or current in running):
                waiting, by = running, until
            else:
                return None
            ready = await first_ready([r.attempt for r in waiting], max(0.0, by - self._clock()))
            if ready is None:
                if held is None:
                    return None
                break
            entry = next(r for r in running if r.attempt is ready)
            error = ready.first.exception()
            if error is None:
                self._observe_first(call, entry.step, entry.started)
                held = (entry, ready.first.result())
                continue
            running.remove(entry)
            await ready.cancel()
            if isinstance(error, StopAsyncIteration):
                failures.append(self._sent_nothing(entry.step))
            elif not isinstance(error, StatusError):
                raise error
            elif entry is current:
                failures.append(self._failed(call, entry.step, error, entry.started))
            else:
                failures.append(error)  # its tier was counted slow when it was given up on
        entry, first = held
        running.remove(entry)
        if entry is not current:
            metrics.LATE_ANSWERS.labels(call.task, entry.step.tier).inc()
        return entry, first

    async def _commit(
        self,
        call: Call,
        entry: Running,
        first: mesh_pb2.GenerateResponse,
        running: list[Running],
        cut_at: float,
    ) -> AsyncIterator[mesh_pb2.GenerateResponse]:
        """The answer is `entry`'s: the others are cancelled at their tiers, and its
        stream is shaped to the deadline from here on."""
        for other in running:
            await other.attempt.cancel()
        running.clear()
        cutoff = Cutoff(cut_at)
        try:
            yield first
            async for response in self._rest(call, entry.step, first, entry.attempt.stream, cutoff, cut_at):
                yield response
        finally:
            cutoff.cancel()
            await close(entry.attempt.stream)

    @staticmethod
    def _pass_over(
        call: Call,
        passed: list[tuple[TierName, Need]],
        left: float,
        passed_over: set[TierName],
        slow: list[TierName],
        failures: list[StatusError],
    ) -> None:
        """Count the tiers the planner passed over, once each: full (only a queue too
        long for the deadline kept it out: shed, retry later) or too slow."""
        for tier, need in passed:
            if tier in passed_over:
                continue
            passed_over.add(tier)
            if need.full(left):
                metrics.FALLBACKS.labels(call.task, tier, "shed").inc()
                failures.append(
                    StatusError(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"{tier} is full: expected wait {need.wait:.3f}s",
                        retry_after_s=need.wait,
                    )
                )
            else:
                metrics.FALLBACKS.labels(call.task, tier, "skipped").inc()
                slow.append(tier)

    def _log_step(self, call: Call, step: Step, cut_at: float) -> None:
        if log.isEnabledFor(logging.DEBUG):
            now = self._clock()
            log.debug(
                "%s %s: %s%s, start by %+.3fs, max_tokens %d (cut-off %+.3fs)", call.task,
                call.request_id[:8], step.tier, " (probe)" if step.probe else "",
                step.start_by - now, step.max_tokens, cut_at - now,
            )  # fmt: skip

    async def _wait(
        self,
        call: Call,
        step: Step,
        attempt: Attempt[mesh_pb2.GenerateResponse],
        started: float,
    ) -> mesh_pb2.GenerateResponse | StatusError:
        """The attempt's first message (an intent's: its whole label) by the step's
        start-by time; or why this tier is given up. A late attempt is not cancelled
        here: the caller decides when it is unwound (`given_up`)."""
        if await first_ready([attempt], max(0.0, step.start_by - self._clock())) is None:
            return self._slow(call, step, started)
        error = attempt.first.exception()
        if error is None:
            self._observe_first(call, step, started)
            return attempt.first.result()
        if isinstance(error, StopAsyncIteration):
            return self._sent_nothing(step)
        if isinstance(error, StatusError):
            return self._failed(call, step, error, started)
        raise error

    @staticmethod
    async def _label(
        call: Call, step: Step, stream: AsyncIterator[mesh_pb2.GenerateResponse]
    ) -> mesh_pb2.GenerateResponse:
        """An intent's label, gathered whole and checked (the reply is always one of the
        call's labels), as one message."""
        parts: list[str] = []
        last = None
        async for response in stream:
            parts.append(response.text)
            last = response
        label = "".join(parts).strip()
        if last is None or label not in call.intents:
            raise StatusError(
                grpc.StatusCode.UNAVAILABLE, f"{step.tier} answered {label[:40]!r}, not one of the intents"
            )
        answer = mesh_pb2.GenerateResponse(
            text=label, tier=last.tier, finish_reason=mesh_pb2.FINISH_REASON_STOP
        )
        answer.usage.CopyFrom(last.usage)
        if last.HasField("score"):
            answer.score = last.score
        return answer

    async def _rest(
        self,
        call: Call,
        step: Step,
        first: mesh_pb2.GenerateResponse,
        stream: AsyncIterator[mesh_pb2.GenerateResponse],
        cutoff: Cutoff,
        cut_at: float,
    ) -> AsyncIterator[mesh_pb2.GenerateResponse]:
        """A committed stream after its first message, shaped to the deadline."""
        estimate = self._estimates[step.tier].task(call.task)
        first_at = self._clock()
        shortened = step.shortened(call)
        closing_at = cut_at - CLOSING_TOKENS * estimate.token_s(0.5)
        # The first messages always pass: a shortened bark still starts at once.
        closing_after = max(2, step.max_tokens - CLOSING_TOKENS) if shortened else None
        tokens = 1
        if first.finish_reason:
            return  # the first message was the whole answer
        async for response in shaped(
            stream, cutoff, closing_at, closing_after, shortened, self._clock, first.tier
        ):
            tokens += 1
            if response.finish_reason:
                tokens = response.usage.completion_tokens or tokens
            yield response
        estimate.observe_rest(tokens, self._clock() - first_at)

    def _observe_first(self, call: Call, step: Step, started: float) -> None:
        """The tier's time to its first message (an intent's: its whole label), for the plans."""
        took = self._tier_time(call, step, started)
        if took is not None:
            self._estimates[step.tier].task(call.task).observe_first(took)

    def _tier_time(self, call: Call, step: Step, started: float) -> float | None:
        """The attempt's time so far, less its wait for a slot in the tier's stream limit
        (the planner adds that queue's wait itself); None while it still waits there, when
        the tier has not had the call at all."""
        waited = call.slot_waits.get(step.tier, 0.0)
        return None if waited is None else max(0.0, self._clock() - started - waited)

    @staticmethod
    def _sent_nothing(step: Step) -> StatusError:
        return StatusError(grpc.StatusCode.UNAVAILABLE, f"{step.tier} sent nothing")

    def _failed(self, call: Call, step: Step, error: StatusError, started: float) -> StatusError:
        if error.code in CALLER_FAULTS:
            raise error
        if error.code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return self._slow(call, step, started)
        reason = "shed" if error.code == grpc.StatusCode.RESOURCE_EXHAUSTED else "failed"
        metrics.FALLBACKS.labels(call.task, step.tier, reason).inc()
        return error

    def _slow(self, call: Call, step: Step, started: float) -> StatusError:
        """The tier did not start by its step's time."""
        took = self._clock() - started
        log.debug("%s %s: %s given up on after %.3fs", call.task, call.request_id[:8], step.tier, took)
        tier_took = self._tier_time(call, step, started)
        if tier_took is not None:
            self._estimates[step.tier].task(call.task).observe_given_up(tier_took)
        metrics.FALLBACKS.labels(call.task, step.tier, "slow").inc()
        what = "answer" if call.task in WHOLE else "first token"
        return StatusError(
            grpc.StatusCode.DEADLINE_EXCEEDED, f"{step.tier} gave no {what} within {took:.3f}s"
        )

    @staticmethod
    def _summary(
        call: Call, failures: list[StatusError], skipped: list[TierName], out_of_time: bool = False
    ) -> StatusError:
        detail = "; ".join(
            [f.message for f in failures] + [f"{t} skipped: too slow for the deadline" for t in skipped]
        )
        if not failures and not skipped:
            return StatusError(grpc.StatusCode.UNAVAILABLE, f"no tier serves {call.task} requests")
        if out_of_time or call.remaining() <= 0 or (skipped and not failures):
            return StatusError(grpc.StatusCode.DEADLINE_EXCEEDED, f"no tier answered in time: {detail}")
        if failures and all(f.code == grpc.StatusCode.RESOURCE_EXHAUSTED for f in failures):
            retry = min(f.retry_after_s or 0.0 for f in failures)
            return StatusError(
                grpc.StatusCode.RESOURCE_EXHAUSTED, f"every tier is full: {detail}", retry_after_s=retry
            )
        if failures and all(f.code == grpc.StatusCode.DEADLINE_EXCEEDED for f in failures):
            return StatusError(grpc.StatusCode.DEADLINE_EXCEEDED, f"no tier answered in time: {detail}")
        return StatusError(grpc.StatusCode.UNAVAILABLE, f"no tier could answer: {detail}")
