"""What drives the proxy benchmarks: h2load (a C client) and the project's own
grpc.aio client for what h2load cannot see (first message, tokens, idle streams)."""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import grpc

from bench.paths import MESSAGES, METHOD, REQUEST
from bench.report import median
from tiermesh.v1 import mesh_pb2, mesh_pb2_grpc

STAMP = re.compile(r"@(\d+)")


def h2load(address: str, body: Path, calls: int, connections: int = 1, streams: int = 1) -> dict[str, float]:
    """`calls` calls over `connections` connections, `streams` at a time on each."""
    out = subprocess.run(
        ["h2load", "-n", str(calls), "-c", str(connections), "-m", str(streams), "-d", str(body),
         "-H", "content-type: application/grpc", "-H", "te: trailers", f"http://{address}{METHOD}"],
        capture_output=True, text=True, timeout=600, check=True,
    ).stdout  # fmt: skip
    finished = re.search(r"finished in (\S+), ([\d.]+) req/s", out)
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out)
    per_request = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)", out)
    if not (finished and done and per_request):
        raise RuntimeError(f"unexpected h2load output:\n{out}")
    if int(done.group(2)) != calls:
        raise RuntimeError(f"{address}: {calls - int(done.group(2))} of {calls} calls failed:\n{out}")
    return {"calls_per_s": float(finished.group(2)), "mean_ms": milliseconds(per_request.group(3))}


def milliseconds(value: str) -> float:
    """h2load's durations: '1.52ms', '296us', '1.2s'."""
    for unit, scale in (("ms", 1.0), ("us", 0.001), ("s", 1000.0)):
        if value.endswith(unit):
            return float(value.removesuffix(unit)) * scale
    raise ValueError(value)


async def check(address: str) -> None:
    """A full, OK stream through this path, before anything is timed."""
    async with grpc.aio.insecure_channel(address) as channel:
        responses = [r async for r in mesh_pb2_grpc.MeshStub(channel).Generate(REQUEST, timeout=10)]
    if "".join(r.text for r in responses) != " tok" * MESSAGES or not responses[-1].finish_reason:
        raise RuntimeError(f"{address} did not relay a full stream")


async def burst_client(address: str, calls: int) -> dict[str, float]:
    """Sequential calls: time to first message, per call, and messages per call (fewer
    than tokens where the router coalesced)."""
    firsts, totals, counts = [], [], []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = mesh_pb2_grpc.MeshStub(channel)
        for _ in range(calls):
            started = time.perf_counter()
            first = 0.0
            count = 0
            text = []
            async for response in stub.Generate(REQUEST, timeout=10):
                first = first or time.perf_counter() - started
                count += 1
                text.append(response.text)
            if "".join(text) != " tok" * MESSAGES:
                raise RuntimeError(f"{address}: a stream lost tokens")
            firsts.append(first)
            totals.append(time.perf_counter() - started)
            counts.append(count)
    return {
        "ttfm_ms": median(firsts) * 1000,
        "call_ms": median(totals) * 1000,
        "messages_per_call": sum(counts) / len(counts),
    }


async def paced_client(address: str, calls: int) -> dict[str, float]:
    """Sequential calls to a paced backend (bench/stream_backend.py --pace-ms): time to
    first token, split at the backend's send of it (the request's way there, the token's
    way back), and each later token's trip from the backend's send to this client."""
    ttfts, ways_out, ways_back, trips = [], [], [], []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = mesh_pb2_grpc.MeshStub(channel)
        for _ in range(calls):
            started = time.monotonic_ns()
            tokens = 0
            async for response in stub.Generate(REQUEST, timeout=10):
                arrived = time.monotonic_ns()
                sent = [int(stamp) for stamp in STAMP.findall(response.text)]
                if not tokens:
                    ttfts.append(arrived - started)
                    ways_out.append(sent[0] - started)
                    ways_back.append(arrived - sent[0])
                    sent = sent[1:]
                trips += [arrived - stamp for stamp in sent]
                tokens += len(sent) + (not tokens)
            if tokens != MESSAGES:
                raise RuntimeError(f"{address}: {tokens} of {MESSAGES} paced tokens arrived")
    return {
        "ttft_ms": median(ttfts) / 1e6,
        "ttft_out_ms": median(ways_out) / 1e6,
        "ttft_back_ms": median(ways_back) / 1e6,
        "token_trip_ms": median(trips) / 1e6,
    }


async def idle_streams(address: str, count: int, rss_kb: Callable[[], int]) -> dict[str, float]:
    """Open `count` streams to an idle backend (first token, then silence); the relay's
    memory before, while they are open, and after they are cancelled. Streams go 100 to a
    connection (nginx allows 128 at once on one)."""
    options = [("grpc.use_local_subchannel_pool", 1)]  # a connection per channel
    channels = [grpc.aio.insecure_channel(address, options=options) for _ in range(-(-count // 100))]
    try:
        stubs = [mesh_pb2_grpc.MeshStub(channel) for channel in channels]
        warm = stubs[0].Generate(REQUEST, timeout=600)
        await warm.read()
        warm.cancel()
        await asyncio.sleep(1.0)
        before = rss_kb()
        calls = [stubs[i // 100].Generate(REQUEST, timeout=600) for i in range(count)]
        firsts = await asyncio.gather(*(call.read() for call in calls))
        if any(not isinstance(first, mesh_pb2.GenerateResponse) for first in firsts):
            raise RuntimeError(f"{address}: not every idle stream opened")
        await asyncio.sleep(1.0)
        open_kb = rss_kb()
        for call in calls:
            call.cancel()
        await asyncio.sleep(2.0)
        after = rss_kb()
    finally:
        await asyncio.gather(*(channel.close() for channel in channels))
    return {
        "streams": count,
        "rss_before_kb": before,
        "rss_open_kb": open_kb,
        "rss_after_kb": after,
        "kb_per_stream": (open_kb - before) / count,
    }
