"""Waiting for a stream's first message without giving up the stream; closing one;
running one out after its caller has the whole answer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable
from typing import Generic, TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)


class Attempt(Generic[T]):
    """One stream being started. `first` is its pending first message, or what else is
    awaited on it first (an intent's whole label): waiting on it with a timeout does not
    cancel it, so a slow attempt can still win later, and one given up on is unwound
    (`cancel`) when its caller chooses, not while the caller's answer waits."""

    def __init__(self, stream: AsyncIterator[T], first: Awaitable[T] | None = None) -> None:
        self.stream = stream
        self.first: asyncio.Future[T] = asyncio.ensure_future(anext(stream) if first is None else first)

    async def cancel(self) -> None:
        """Stop the attempt; closing its stream cancels the tier call below it."""
        self.first.cancel()
        with contextlib.suppress(BaseException):
            await self.first
        await close(self.stream)


async def close(stream: AsyncIterator[T]) -> None:
    """Close a stream (an async generator: its `finally` blocks run, cancelling the tier
    call below it). Whatever closing raises is of no interest to a caller that is done."""
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        with contextlib.suppress(BaseException):
            await aclose()


async def run_out(stream: AsyncIterator[T]) -> None:
    """What a stream does after its final message (its tier attempts closed, the
    balancer's bookkeeping, metrics), run once its caller has the whole answer and its
    trailers: the caller's deadline is not spent on the router's own work. (What the
    caller's next call depends on is done before the final message: docs/router.md.)
    Anything it still yields is dropped (the contract has nothing after the final
    message); a failure is logged, since no caller can see it any more."""
    try:
        async for _ in stream:
            log.warning("a message after the final one was dropped")
    except Exception:
        log.exception("a stream failed after its final message")
    finally:
        await close(stream)


# Streams being run out in the background (grpc.aio ends a call only when its handler
# returns): kept referenced while they run.
_RUNNING_OUT: set[asyncio.Task[None]] = set()


def run_out_later(stream: AsyncIterator[T]) -> None:
    """`run_out` in a task of its own."""
    task = asyncio.get_running_loop().create_task(run_out(stream))
    _RUNNING_OUT.add(task)
    task.add_done_callback(_RUNNING_OUT.discard)


async def first_ready(attempts: list[Attempt[T]], within_s: float | None) -> Attempt[T] | None:
    """The first attempt whose first message (or failure) is ready within `within_s`."""
    pending = {a.first: a for a in attempts if not a.first.cancelled()}
    if not pending:
        return None
    done, _ = await asyncio.wait(pending, timeout=within_s, return_when=asyncio.FIRST_COMPLETED)
    return pending[next(iter(done))] if done else None


class Cut(Exception):
    """A stream's cut-off time came while it was awaited (see `Cutoff`)."""


class Cutoff:
    """One loop timer that ends the wait for a stream's next message at a time (an
    absolute time.monotonic(), the loop's clock). Cheaper than asyncio.timeout around
    every message, and scoped to the wait itself: it cancels the task only while the task
    awaits `next` here, never while the stream's consumer is elsewhere (a slow caller),
    and a cut-off that passes meanwhile is seen at the next `next`."""

    def __init__(self, when: float) -> None:
        self._task = asyncio.current_task()
        self._waiting = False
        self.passed = False
        self._timer = asyncio.get_running_loop().call_at(when, self._fire)

    def _fire(self) -> None:
        self.passed = True
        if self._waiting and self._task is not None:
            self._task.cancel()

    def cancel(self) -> None:
        self._timer.cancel()

    async def next(self, stream: AsyncIterator[T]) -> T:
        """The stream's next message; `Cut` once the time has passed."""
        if self.passed:
            raise Cut
        self._waiting = True
        try:
            return await anext(stream)
        except asyncio.CancelledError:
            # Ours only if the timer fired and nobody else cancelled the task too.
            if self.passed and self._task is not None and self._task.uncancel() == 0:
                raise Cut from None
            raise
        finally:
            self._waiting = False
