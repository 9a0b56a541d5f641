"""Waiting for a stream's first message without giving up the stream."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Attempt(Generic[T]):
    """One stream being started. `first` is its pending first message: waiting on it
    with a timeout does not cancel it, so a slow attempt can still win later."""

    def __init__(self, stream: AsyncIterator[T]) -> None:
        self.stream = stream
        self.first: asyncio.Future[T] = asyncio.ensure_future(anext(stream))

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


async def first_ready(attempts: list[Attempt[T]], within_s: float | None) -> Attempt[T] | None:
    """The first attempt whose first message (or failure) is ready within `within_s`."""
    pending = {a.first: a for a in attempts if not a.first.cancelled()}
    if not pending:
        return None
    done, _ = await asyncio.wait(pending, timeout=within_s, return_when=asyncio.FIRST_COMPLETED)
    return pending[next(iter(done))] if done else None
