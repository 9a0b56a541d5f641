"""Soak: the router's memory under steady streaming for a long time (10 min default).

One burst backend, one router (the shipped data path, full pipeline). In each slice,
h2load keeps 64 streams going over four connections, and the project's client opens
streams and walks away after the first token (the cancellation path, where leaks
hide). The router's RSS is read after every slice; the verdict compares the last
slices with the first ones after warm-up and fits a slope over the run.

    python -m bench.soak [--seconds 600] [--slice-s 20]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import grpc

from bench.paths import REQUEST, router_config, rss_kb, running, settle, workspace
from bench.report import table, update_readme, write
from bench.stream_clients import check, h2load
from tiermesh.v1 import mesh_pb2_grpc

BACKEND, ROUTER = "127.0.0.1:7241", "127.0.0.1:7244"
WARM_UP_SLICES = 3
CALLS_PER_PASS = 2000  # complete streams h2load runs per pass, 64 at a time
RELAYS = {
    "router": "Router",
    "passthrough": "Bare grpc.aio pass-through",
    "h2_relay": "HTTP/2 relay framed by nghttp2 (no gRPC stack)",
}


async def walk_away(address: str, calls: int) -> None:
    """Streams cancelled after their first message."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = mesh_pb2_grpc.MeshStub(channel)
        for _ in range(calls):
            call = stub.Generate(REQUEST, timeout=10)
            await call.read()
            call.cancel()


def slope_kb_per_min(samples: list[tuple[float, int]]) -> float:
    """Least-squares slope of RSS over time."""
    times = [t / 60 for t, _ in samples]
    values = [float(rss) for _, rss in samples]
    return statistics.linear_regression(times, values).slope


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--slice-s", type=float, default=20)
    parser.add_argument(
        "--walk-aways", type=int, default=100,
        help="streams cancelled after their first token, per pass (0: complete streams only)",
    )  # fmt: skip
    parser.add_argument(
        "--relay", choices=("router", "passthrough", "h2_relay"), default="router",
        help="a reference relay of bench/ instead of the router, to tell the router's memory from "
        "grpc.aio's (passthrough) or from a relay without the gRPC stack (h2_relay)",
    )  # fmt: skip
    args = parser.parse_args()
    work, body = workspace("soak")
    samples: list[tuple[float, int]] = []
    calls = 0
    with running(work) as processes:
        processes.backend("backend", BACKEND)
        if args.relay == "router":
            processes.router("router", router_config(ROUTER, BACKEND))
        else:
            processes.relay(args.relay, args.relay, ROUTER, BACKEND)
            settle()
        asyncio.run(check(ROUTER))
        pid = processes.pid(args.relay)
        started = time.monotonic()
        while time.monotonic() - started < args.seconds:
            slice_started = time.monotonic()
            while time.monotonic() - slice_started < args.slice_s:
                h2load(ROUTER, body, CALLS_PER_PASS, connections=4, streams=16)
                if args.walk_aways:
                    asyncio.run(walk_away(ROUTER, args.walk_aways))
                calls += CALLS_PER_PASS + args.walk_aways
            samples.append((time.monotonic() - started, rss_kb(pid)))
            print(f"{samples[-1][0]:6.0f} s  RSS {samples[-1][1] / 1024:.1f} MiB  calls {calls}", flush=True)
    print(report(samples, calls, args))


def report(samples: list[tuple[float, int]], calls: int, args: argparse.Namespace) -> str:
    settled = samples[WARM_UP_SLICES:]
    first = statistics.median(rss for _, rss in settled[:3])
    last = statistics.median(rss for _, rss in settled[-3:])
    slope = slope_kb_per_min(settled)
    name = ("soak" if args.walk_aways else "soak-complete-streams") + (
        "" if args.relay == "router" else f"-{args.relay}"
    )  # a reference relay's run never replaces the router's results
    relay = RELAYS[args.relay]
    cancelled = (
        f"1 in {(CALLS_PER_PASS + args.walk_aways) / args.walk_aways:.0f} cancelled after the first token"
        if args.walk_aways
        else "every stream complete"
    )
    summary = (
        f"{relay} RSS over {samples[-1][0] / 60:.1f} min of streaming ({calls:,} calls, {cancelled}): "
        f"{first / 1024:.1f} MiB after warm-up, {last / 1024:.1f} MiB at the end "
        f"(**{(last - first) / 1024:+.1f} MiB**), slope **{slope:+.1f} KiB/min**."
    )
    rows = [(f"{t:.0f}", f"{rss / 1024:.1f}") for t, rss in samples]
    markdown = (
        "# Soak: memory under steady streaming\n\n"
        f"`python -m bench.soak --seconds {args.seconds:.0f} --walk-aways {args.walk_aways} --relay "
        f"{args.relay}`: h2load 64 streams on 4 connections (16-message bursts) and "
        f"{args.walk_aways} walk-away streams per pass, RSS read every {args.slice_s:.0f} s; the first "
        f"{WARM_UP_SLICES} readings are warm-up.\n\n"
        + summary
        + "\n\n"
        + table(("seconds", "RSS MiB"), rows)
        + "\n"
    )
    data = {
        "args": vars(args),
        "calls": calls,
        "samples": samples,
        "rss_change_kb": last - first,
        "slope_kb_per_min": slope,
    }
    json_path, md_path = write(name, data, markdown)
    if args.relay != "router":
        return f"{markdown}\nwritten: {json_path}, {md_path}"
    update_readme(name, summary)
    return f"{markdown}\nwritten: {json_path}, {md_path}, README.md"


if __name__ == "__main__":
    main()
