"""/metrics from the event loop (tiermesh/exposition.py)."""

from __future__ import annotations

import asyncio

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest

from tiermesh.exposition import exposition, serve_metrics

OPENMETRICS = "application/openmetrics-text; version=1.0.0"


def a_registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    calls = Counter("calls", "Calls", ["task"], registry=registry)
    calls.labels("intent").inc(3)
    calls.labels("bark").inc()
    Histogram("took_seconds", "Took", registry=registry).observe(0.02)
    Counter("shed", "Shed", registry=registry)
    return registry


async def test_the_text_is_prometheus_clients_own() -> None:
    registry = a_registry()
    body, content_type = await exposition(registry, "")
    assert body == generate_latest(registry)
    assert content_type.startswith("text/plain; version=0.0.4")


async def test_openmetrics_ends_once_with_eof() -> None:
    registry = a_registry()
    body, content_type = await exposition(registry, OPENMETRICS)
    assert content_type.startswith("application/openmetrics-text")
    assert body == openmetrics_latest(registry)  # type: ignore[no-untyped-call]
    assert body.count(b"# EOF") == 1


async def test_the_loop_runs_other_work_between_families() -> None:
    ticks: list[int] = []

    async def other() -> None:
        while True:
            ticks.append(1)
            await asyncio.sleep(0)

    beside = asyncio.create_task(other())
    await asyncio.sleep(0)
    before = len(ticks)
    await exposition(a_registry(), "")
    beside.cancel()
    assert len(ticks) - before >= 3  # one turn after each of the three families


async def test_it_is_served_over_http() -> None:
    runner = await serve_metrics("127.0.0.1", 0, a_registry())
    try:
        port = runner.addresses[0][1]
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/metrics") as reply:
                assert reply.status == 200
                assert reply.headers["Content-Type"].startswith("text/plain; version=0.0.4")
                assert 'calls_total{task="intent"} 3.0' in await reply.text()
            headers = {"Accept": OPENMETRICS}
            async with session.get(f"http://127.0.0.1:{port}/metrics", headers=headers) as reply:
                assert reply.headers["Content-Type"].startswith("application/openmetrics-text")
            async with session.get(f"http://127.0.0.1:{port}/other") as reply:
                assert reply.status == 404
    finally:
        await runner.cleanup()
