"""Coalescing at the edge: when the caller reads slower than the tier writes, the text
deltas already waiting leave as one message.

Each message written to a caller costs the router a gRPC write (a syscall and a wake-up
of the event loop), whatever its size. A reader task keeps pulling from the pipeline
while the previous write is in flight; the next write takes everything that arrived
meanwhile. A lone delta goes out at once: nothing is ever held back to wait for more.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable

from tiermesh.v1 import mesh_pb2

# A merged message stays far below any client's receive limit (gRPC's default: 4 MiB).
MAX_MERGED_CHARS = 16 * 1024
# How long a stream being closed waits for its reader to end with the cancelled tier
# calls, before cancelling the reader itself.
UNWIND_S = 1.0


def merge_waiting(waiting: deque[mesh_pb2.GenerateResponse]) -> mesh_pb2.GenerateResponse:
    """Take the first waiting message and, if it is a text delta, the text deltas of the
    same tier behind it (up to MAX_MERGED_CHARS). The last one taken keeps its finish
    reason and usage."""
    merged = waiting.popleft()
    if merged.HasField("tool"):
        return merged
    parts = [merged.text]
    size = len(merged.text)
    while waiting and not waiting[0].HasField("tool") and waiting[0].tier == merged.tier:
        size += len(waiting[0].text)
        if size > MAX_MERGED_CHARS:
            break
        merged = waiting.popleft()
        parts.append(merged.text)
    if len(parts) > 1:
        merged.text = "".join(parts)
    return merged


async def coalesced(
    stream: AsyncIterator[mesh_pb2.GenerateResponse],
    cancel_tier_calls: Callable[[], bool] = lambda: False,
) -> AsyncGenerator[mesh_pb2.GenerateResponse]:
    """`stream`'s messages, merged where several wait. A failure of `stream` is raised
    after the messages that came before it; closing this closes `stream`.

    Closing early (the caller left) first cancels the tier calls below, so the reader's
    pending read ends as gRPC completes it; a read torn by cancelling its task leaks in
    grpc.aio (grpc/grpc#43360). A reader not waiting on a tier call is cancelled."""
    waiting: deque[mesh_pb2.GenerateResponse] = deque()
    arrived = asyncio.Event()
    failure: BaseException | None = None
    finished = False

    async def read() -> None:
        nonlocal failure, finished
        try:
            async for message in stream:
                waiting.append(message)
                arrived.set()
        except (Exception, asyncio.CancelledError) as e:  # raised after what is already waiting
            failure = e
        finally:
            finished = True
            arrived.set()

    reader = asyncio.create_task(read())
    try:
        while waiting or not finished:
            if not waiting:
                arrived.clear()
                await arrived.wait()
                continue
            yield merge_waiting(waiting)
        if failure is not None:
            raise failure
    finally:
        # The caller left (or we are done): stop reading, the tier calls first.
        try:
            if not reader.done() and cancel_tier_calls():
                await asyncio.wait([reader], timeout=UNWIND_S)
        finally:
            reader.cancel()  # unwinds the pipeline below it; no-op once the reader ended
            await asyncio.wait([reader])
