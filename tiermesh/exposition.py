"""Prometheus's /metrics, served from the process's event loop a metric family at a time.

prometheus_client's own server answers on a thread of its own. Writing a registry as
large as the router's takes that thread several of Python's GIL switch intervals in a
row, and each time the loop's thread wants the GIL back (after every system call) it
waits out an interval: a call that arrives during a scrape waits for several. Served
from the loop instead, the exposition is written one family at a time, with whatever is
ready run between two: a call waits behind one family at most, and there is no second
Python thread at all. The text is prometheus_client's own encoders', negotiated as its
server does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from aiohttp import web
from prometheus_client import REGISTRY
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

OPENMETRICS = "application/openmetrics-text"
EOF = b"# EOF\n"  # OpenMetrics ends an exposition with it: once, not after each family


class _Family(Collector):
    """One family already collected, for an encoder that takes a Collector."""

    def __init__(self, family: Metric) -> None:
        self._family = family

    def collect(self) -> Iterable[Metric]:
        return (self._family,)


async def exposition(registry: Collector, accept: str) -> tuple[bytes, str]:
    """The registry's exposition in the format `accept` asks for, and its content type;
    the loop runs what is ready between one family and the next."""
    encode, content_type = choose_encoder(accept)
    openmetrics = content_type.startswith(OPENMETRICS)
    parts = []
    for family in registry.collect():
        text = encode(_Family(family))
        parts.append(text.removesuffix(EOF) if openmetrics else text)
        await asyncio.sleep(0)
    if openmetrics:
        parts.append(EOF)
    return b"".join(parts), content_type


async def serve_metrics(host: str, port: int, registry: Collector = REGISTRY) -> web.AppRunner:
    """Serve `registry` on http://host:port/metrics from the running loop; cleanup() stops it."""

    async def metrics(request: web.Request) -> web.Response:
        body, content_type = await exposition(registry, request.headers.get("Accept", ""))
        return web.Response(body=body, headers={"Content-Type": content_type})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
