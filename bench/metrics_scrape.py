"""A scrape's cost to the calls beside it: /metrics served from a thread of its own
(prometheus_client's server, as the router did) or from the event loop
(tiermesh/exposition.py), side by side.

Two router processes, alike but for that, in front of one fast synthetic Silver
(bench/synthetic_tier.py: first token at once, 2 tokens). A client calls each router
one call at a time, a call every 5 ms; in alternated windows a second process scrapes
that router's /metrics back to back, or nothing does. What counts is each call's time,
from the client, with and without the scrapes. The threaded router is the same router
with `tiermesh.serving.start_metrics` swapped for prometheus_client's
`start_http_server` (this file's `--threaded` child mode): the baseline, not a product
setting.

    python -m bench.metrics_scrape [--window-s 10] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import yaml

from bench.report import median, table, update_readme, write
from bench.spawn import start, stop
from ops.mesh import wait_serving
from router.stats import nearest_rank
from tiermesh.v1 import mesh_pb2, mesh_pb2_grpc

SILVER = "127.0.0.1:7301"
# name: (listen, metrics port)
ROUTERS = {"thread": ("127.0.0.1:7350", 7360), "event loop": ("127.0.0.1:7351", 7361)}
CALL_EVERY_S = 0.005


def router_config(listen: str, metrics_port: int) -> dict[str, Any]:
    task = {"tiers": ["silver"], "default_max_tokens": 2, "max_tokens_limit": 16, "default_deadline_s": 5}
    return {
        "router": {
            "listen": listen,
            "metrics_port": metrics_port,
            "tiers": {"silver": {"endpoints": [SILVER], "expected_ttft_s": 0.005}},
            "tasks": {"dialogue": task},
        },
        "personas": {"guard-1": {"system": "You guard the gate."}},
    }


def threaded_router(config: str) -> None:
    """`tiermesh router` as it was: prometheus_client's threaded /metrics server."""
    from prometheus_client import start_http_server

    import ops.cli
    import router.app

    async def start_metrics(port: int, listen: str = "127.0.0.1:0") -> None:
        if port:
            start_http_server(port, addr=listen.rpartition(":")[0] or "127.0.0.1")

    router.app.start_metrics = start_metrics  # type: ignore[attr-defined]
    ops.cli.router(Path(config))


async def calls(address: str, seconds: float) -> list[float]:
    """Each call's time, in ms, one at a time, one every CALL_EVERY_S."""
    request = mesh_pb2.GenerateRequest(npc_id="guard-1", task=mesh_pb2.TASK_DIALOGUE, prompt="Halt!")
    took: list[float] = []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = mesh_pb2_grpc.MeshStub(channel)
        await stub.Generate(request, timeout=5).read()  # connected
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            started = time.monotonic()
            async for _ in stub.Generate(request, timeout=2):
                pass
            took.append((time.monotonic() - started) * 1000)
            await asyncio.sleep(max(0.0, CALL_EVERY_S - (time.monotonic() - started)))
    return took


SCRAPER = """
import sys, time, urllib.request
url, n, took = sys.argv[1], 0, 0.0
while True:
    t = time.monotonic()
    with urllib.request.urlopen(url, timeout=10) as reply:
        size = len(reply.read())
    n += 1; took += time.monotonic() - t
    print(n, size, round(took / n * 1000, 2), flush=True)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--window-s", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threaded", metavar="CONFIG", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threaded:
        threaded_router(args.threaded)
        return
    work = Path(tempfile.mkdtemp(prefix="tiermesh-scrape-"))
    py = sys.executable
    synth = [py, "-m", "bench.synthetic_tier", "--listen", SILVER, "--ttft-ms", "0", "--tokens", "2",
             "--token-ms", "0", "--slots", "16"]  # fmt: skip
    processes = [start(synth, work / "silver.log")]
    for name, (listen, port) in ROUTERS.items():
        config = work / f"{port}.yaml"
        config.write_text(yaml.safe_dump(router_config(listen, port)))
        if name == "thread":
            argv = [py, "-m", "bench.metrics_scrape", "--threaded", str(config)]
        else:
            argv = [py, "-m", "ops.cli", "router", "--config", str(config)]
        processes.append(start(argv, work / f"router-{port}.log"))
    results: dict[str, dict[str, list[float]]] = {name: {"off": [], "on": []} for name in ROUTERS}
    scrapes: dict[str, list[str]] = {name: [] for name in ROUTERS}
    try:
        for address in [SILVER, *(listen for listen, _ in ROUTERS.values())]:
            wait_serving(address, address, 60)
        for round_ in range(args.rounds):
            order = list(ROUTERS) if round_ % 2 == 0 else list(reversed(ROUTERS))
            for name in order:
                listen, port = ROUTERS[name]
                for scraping in ("off", "on") if round_ % 2 == 0 else ("on", "off"):
                    scraper = None
                    if scraping == "on":
                        url = f"http://127.0.0.1:{port}/metrics"
                        scraper = start([py, "-c", SCRAPER, url], work / f"scrape-{port}-{round_}.log")
                    took = asyncio.run(calls(listen, args.window_s))
                    if scraper is not None:
                        scraper.terminate()
                        scraper.wait(10)
                        lines = (work / f"scrape-{port}-{round_}.log").read_text().split("\n")
                        scrapes[name].append(next((line for line in reversed(lines) if line), ""))
                    results[name][scraping] += took
                    print(f"{name} scrapes {scraping}: {len(took)} calls, p99 "
                          f"{nearest_rank(sorted(took), 0.99):.2f} ms", flush=True)  # fmt: skip
        size = exposition_size(ROUTERS["event loop"][1])
    finally:
        stop(processes)
    data, markdown = summarize(results, scrapes, size, args)
    write("metrics-scrape", data, markdown)
    update_readme("metrics-scrape", markdown)
    print(markdown)


def exposition_size(port: int) -> tuple[int, int]:
    """Lines and bytes of a router's exposition."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        body = reply.read()
    return body.count(b"\n"), len(body)


def summarize(
    results: dict[str, dict[str, list[float]]],
    scrapes: dict[str, list[str]],
    size: tuple[int, int],
    args: argparse.Namespace,
) -> tuple[dict[str, Any], str]:
    rows = []
    cells: dict[str, Any] = {}
    for name in ROUTERS:
        for scraping in ("off", "on"):
            took = results[name][scraping]
            cell = {
                "calls": len(took),
                "p50_ms": round(median(took), 2),
                "p99_ms": round(nearest_rank(sorted(took), 0.99), 2),
                "max_ms": round(max(took), 2),
                "mean_ms": round(statistics.fmean(took), 2),
            }
            cells[f"{name}/{scraping}"] = cell
            rows.append((name, scraping, cell["calls"], cell["p50_ms"], cell["p99_ms"], cell["max_ms"]))
    per_scrape = {name: [line.split()[2] for line in lines if line] for name, lines in scrapes.items()}
    markdown = "\n\n".join(
        [
            "# A scrape's cost to the calls beside it",
            f"`python -m bench.metrics_scrape --window-s {args.window_s:g} --rounds {args.rounds}`: two "
            "router processes, alike but for how /metrics is served (prometheus_client's thread, as "
            "before; the event loop, a family at a time), before a synthetic Silver that answers at once. "
            f"A call every {CALL_EVERY_S * 1000:g} ms, one at a time, from a client; in alternated "
            f"{args.window_s:g} s windows ({args.rounds} each) a second process scrapes the router back "
            f"to back, or nothing does. The exposition: {size[0]} lines, {size[1] / 1024:.0f} KiB.",
            table(("/metrics served from", "scrapes", "calls", "p50 ms", "p99 ms", "max ms"), rows),
            "A scrape's own time, mean per window (ms): "
            + "; ".join(f"{name} {', '.join(ms)}" for name, ms in per_scrape.items())
            + ".",
        ]
    )
    return {"cells": cells, "scrape_ms": per_scrape, "exposition": size}, markdown


if __name__ == "__main__":
    main()
