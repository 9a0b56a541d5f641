"""The router's data path against nginx and HAProxy, side by side.

Backends (bench/stream_backend.py) stream 16 small messages per call: a burst, or
paced one every 5 ms like an engine, or a first token and then silence (idle). nginx
`grpc_pass` (one worker), HAProxy (h2, one thread) and tiermesh routers (full
pipeline: validation, caches, admission, planner, fallback, balancer, retry,
metrics) relay them. A bare grpc.aio pass-through (bench/passthrough.py) shows the
floor a Python grpc.aio relay stands on, a byte relay (bench/tcp_relay.py) what is left
of it without HTTP/2 and gRPC, and an HTTP/2 relay framed in C by nghttp2 with Python
on the loop (bench/h2_relay.py) what a data plane without the gRPC stack would stand
on. Ten routers show what each choice is worth: the shipped default (the native data
plane: nghttp2 at the edge and to the tier, router/native/, its heap on huge pages),
the same without coalescing, with Python's own allocator on 4 KiB pages
(`huge_page_heap: false`), the grpc.aio data plane (edge and tier client: grpc) unpinned and pinned to
one CPU (`pin_cpus`), the native edge with grpc.aio's tier client, the pre-#9 data path
(grpc.aio, asyncio, message by message), two SO_REUSEPORT workers unpinned and pinned,
and grpc.aio pinned with gRPC core's EventEngine poller for Python turned off.

Measured, in rounds that interleave the paths (medians of rounds; "vs nginx" is the
median of each round's ratio, so both sides of a ratio ran minutes apart at most):
- burst stream, one at a time (h2load), and with 64 at once: on one connection, and
  on four (what lets several router workers share the load);
- the project's client: time to first message, per call, messages per call;
- paced stream: time to first token, split at the backend's send of it (the request's
  way there, the token's way back), and each token's trip from the backend's send to
  the client (timestamps in the tokens), direct vs nginx vs router;
- once: memory per idle open stream (RSS with N streams open, minus before).

    python -m bench.proxy [--calls 1000] [--rounds 5] [--idle-streams 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
from functools import partial
from typing import Any

from bench.paths import MESSAGES, router_config, rss_kb, running, settle, workspace
from bench.report import median, table, update_readme, write
from bench.stream_clients import burst_client, check, h2load, idle_streams, paced_client

BACKEND, PACED, IDLE = "127.0.0.1:7201", "127.0.0.1:7211", "127.0.0.1:7221"
NGINX, HAPROXY, PASSTHROUGH = "127.0.0.1:7202", "127.0.0.1:7203", "127.0.0.1:7208"
PASSTHROUGH_PACED, PASSTHROUGH_IDLE = "127.0.0.1:7218", "127.0.0.1:7228"
NGINX_PACED, NGINX_IDLE = "127.0.0.1:7212", "127.0.0.1:7222"
ROUTER_PACED, ROUTER_IDLE = "127.0.0.1:7214", "127.0.0.1:7224"
TCP_RELAY, TCP_RELAY_PACED = "127.0.0.1:7250", "127.0.0.1:7251"
H2_RELAY, H2_RELAY_PACED, H2_RELAY_IDLE = "127.0.0.1:7260", "127.0.0.1:7261", "127.0.0.1:7262"
PASSTHROUGH_PINNED_PACED, ROUTER_PINNED_PACED = "127.0.0.1:7252", "127.0.0.1:7254"
GRPC_PACED, NATIVE_EDGE_PACED, GRPC_IDLE = "127.0.0.1:7272", "127.0.0.1:7273", "127.0.0.1:7274"
SMALL_PAGES_PACED, SMALL_PAGES_IDLE = "127.0.0.1:7275", "127.0.0.1:7276"
REDIS_PORT = 7230
DEFAULT = "router"  # as shipped: the native data plane (router/native/)
GRPC = "router, grpc.aio data plane"
PINNED = "router, grpc.aio data plane, pinned (pin_cpus)"
NATIVE_EDGE = "router, native edge, grpc.aio tier client"
WORKERS = "router, 2 workers"
WORKERS_PINNED = "router, 2 workers, pinned"
SMALL_PAGES = "router, 4 KiB-page heap (huge_page_heap: false)"
BEFORE = "router, pre-#9 (grpc.aio, asyncio, no coalescing)"
GRPC_PLANE = {"edge": "grpc", "tier_client": "grpc"}
# Router variants on the burst backend: listen address, router.data_path, environment.
# The last also turns off gRPC core's EventEngine poller for Python (an experiment flag
# of grpcio 1.81, not a setting of ours): measured, not shipped.
ROUTERS: dict[str, tuple[str, dict[str, Any], dict[str, str]]] = {
    DEFAULT: ("127.0.0.1:7204", {}, {}),
    "router, no coalescing": ("127.0.0.1:7205", {"coalesce": False}, {}),
    SMALL_PAGES: ("127.0.0.1:7257", {"huge_page_heap": False}, {}),
    GRPC: ("127.0.0.1:7270", GRPC_PLANE, {}),
    PINNED: ("127.0.0.1:7209", GRPC_PLANE | {"pin_cpus": True}, {}),
    NATIVE_EDGE: ("127.0.0.1:7271", {"tier_client": "grpc"}, {}),
    BEFORE: (
        "127.0.0.1:7206",
        GRPC_PLANE | {"coalesce": False, "event_loop": "asyncio", "huge_page_heap": False}, {},
    ),
    WORKERS: ("127.0.0.1:7207", {"workers": 2}, {}),
    WORKERS_PINNED: ("127.0.0.1:7255", {"workers": 2, "pin_cpus": True}, {}),
    "router, grpc.aio, pinned, GRPC_EXPERIMENTS=-event_engine_poller_for_python": (
        "127.0.0.1:7256", GRPC_PLANE | {"pin_cpus": True},
        {"GRPC_EXPERIMENTS": "-event_engine_poller_for_python"},
    ),
}  # fmt: skip
FLOOR = "grpc.aio pass-through"  # bench/passthrough.py: a relay hop and nothing else
FLOOR_PINNED = "grpc.aio pass-through, pinned"
BYTES = "Python byte relay (no HTTP/2)"  # bench/tcp_relay.py
NATIVE = "HTTP/2 relay, nghttp2 framing (no gRPC stack)"  # bench/h2_relay.py
BURST_PATHS = {
    "backend": BACKEND,
    "nginx": NGINX,
    "haproxy": HAPROXY,
    BYTES: TCP_RELAY,
    NATIVE: H2_RELAY,
    FLOOR: PASSTHROUGH,
} | {name: address for name, (address, _, _) in ROUTERS.items()}
PACED_PATHS = {
    "backend": PACED,
    "nginx": NGINX_PACED,
    BYTES: TCP_RELAY_PACED,
    NATIVE: H2_RELAY_PACED,
    FLOOR: PASSTHROUGH_PACED,
    FLOOR_PINNED: PASSTHROUGH_PINNED_PACED,
    DEFAULT: ROUTER_PACED,
    SMALL_PAGES: SMALL_PAGES_PACED,
    GRPC: GRPC_PACED,
    PINNED: ROUTER_PINNED_PACED,
    NATIVE_EDGE: NATIVE_EDGE_PACED,
}
# Path: its address and the process whose memory is read.
IDLE_PATHS = {
    "nginx": (NGINX_IDLE, "nginx"),
    NATIVE: (H2_RELAY_IDLE, f"{NATIVE} (idle)"),
    FLOOR: (PASSTHROUGH_IDLE, f"{FLOOR} (idle)"),
    DEFAULT: (ROUTER_IDLE, "router (idle)"),
    SMALL_PAGES: (SMALL_PAGES_IDLE, f"{SMALL_PAGES} (idle)"),
    GRPC: (GRPC_IDLE, f"{GRPC} (idle)"),
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=1000, help="h2load calls per path and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--paced-calls", type=int, default=60, help="paced calls per path and round")
    parser.add_argument("--idle-streams", type=int, default=1000)
    args = parser.parse_args()
    work, body = workspace("proxy")
    samples: dict[str, dict[str, list[float]]] = {}

    def sample(path: str, key: str, value: float) -> None:
        samples.setdefault(path, {}).setdefault(key, []).append(value)

    with running(work) as processes:
        processes.backend("backend", BACKEND)
        processes.backend("paced backend", PACED, pace_ms=5)
        processes.backend("idle backend", IDLE, pace_ms=3_600_000)
        processes.nginx({NGINX: BACKEND, NGINX_PACED: PACED, NGINX_IDLE: IDLE})
        processes.haproxy(HAPROXY, BACKEND)
        processes.relay(FLOOR, "passthrough", PASSTHROUGH, BACKEND)
        processes.relay(f"{FLOOR} (paced)", "passthrough", PASSTHROUGH_PACED, PACED)
        processes.relay(FLOOR_PINNED, "passthrough", PASSTHROUGH_PINNED_PACED, PACED, "--pin-cpu")
        processes.relay(f"{FLOOR} (idle)", "passthrough", PASSTHROUGH_IDLE, IDLE)
        processes.relay(BYTES, "tcp_relay", TCP_RELAY, BACKEND)
        processes.relay(f"{BYTES} (paced)", "tcp_relay", TCP_RELAY_PACED, PACED)
        processes.relay(NATIVE, "h2_relay", H2_RELAY, BACKEND)
        processes.relay(f"{NATIVE} (paced)", "h2_relay", H2_RELAY_PACED, PACED)
        processes.relay(f"{NATIVE} (idle)", "h2_relay", H2_RELAY_IDLE, IDLE)
        redis = processes.redis(REDIS_PORT)
        for name, (listen, data_path, env) in ROUTERS.items():
            processes.router(name, router_config(listen, BACKEND, data_path, redis), env)
        processes.router("router (paced)", router_config(ROUTER_PACED, PACED))
        for name, address in (
            (SMALL_PAGES, SMALL_PAGES_PACED),
            (GRPC, GRPC_PACED),
            (PINNED, ROUTER_PINNED_PACED),
            (NATIVE_EDGE, NATIVE_EDGE_PACED),
        ):
            _, data_path, _ = ROUTERS[name]
            processes.router(f"{name} (paced)", router_config(address, PACED, data_path))
        processes.router("router (idle)", router_config(ROUTER_IDLE, IDLE))
        processes.router(f"{GRPC} (idle)", router_config(GRPC_IDLE, IDLE, GRPC_PLANE))
        small_pages = ROUTERS[SMALL_PAGES][1]
        processes.router(f"{SMALL_PAGES} (idle)", router_config(SMALL_PAGES_IDLE, IDLE, small_pages))
        settle()
        for address in BURST_PATHS.values():
            asyncio.run(check(address))
        for _ in range(args.rounds):
            for name, address in BURST_PATHS.items():
                one = h2load(address, body, args.calls)
                sample(name, "burst_ms", one["mean_ms"])
                for connections, key in ((1, "relay_1conn"), (4, "relay_4conn")):
                    many = h2load(address, body, 2 * args.calls, connections, 64 // connections)
                    sample(name, f"{key}_tokens_per_s", many["calls_per_s"] * MESSAGES)
                own = asyncio.run(burst_client(address, min(args.calls, 300)))
                for key, value in own.items():
                    sample(name, f"client_{key}", value)
            for name, address in PACED_PATHS.items():
                for key, value in asyncio.run(paced_client(address, args.paced_calls)).items():
                    sample(name, f"paced_{key}", value)
        idle = {
            name: asyncio.run(
                idle_streams(address, args.idle_streams, partial(rss_kb, processes.pid(process)))
            )
            for name, (address, process) in IDLE_PATHS.items()
        }
    print(report(samples, idle, args))


def differences(samples: dict[str, dict[str, list[float]]], path: str, key: str, to: str) -> list[float]:
    """path - to for one measure, round by round."""
    return [a - b for a, b in zip(samples[path][key], samples[to][key], strict=True)]


def paired(samples: dict[str, dict[str, list[float]]], path: str, key: str, to: str = "backend") -> float:
    """Median over rounds of path - to for one measure: each difference from one round."""
    return median(differences(samples, path, key, to))


def round_range(samples: dict[str, dict[str, list[float]]], path: str, key: str, to: str = "backend") -> str:
    """The lowest and highest round's path - to: how far one round is from another."""
    each = differences(samples, path, key, to)
    return f"{min(each):.3f}–{max(each):.3f}"


def ratio(samples: dict[str, dict[str, list[float]]], path: str, key: str, to: str = "nginx") -> float:
    """Median over rounds of path/to for one measure: each ratio from one round."""
    return median([a / b for a, b in zip(samples[path][key], samples[to][key], strict=True)])


def report(
    samples: dict[str, dict[str, list[float]]], idle: dict[str, dict[str, float]], args: argparse.Namespace
) -> str:
    medians = {path: {key: median(values) for key, values in by.items()} for path, by in samples.items()}
    burst_rows = [
        (path, f"{m['burst_ms']:.2f}", f"{ratio(samples, path, 'burst_ms'):.2f}×",
         f"{m['relay_1conn_tokens_per_s']:,.0f}", f"{ratio(samples, path, 'relay_1conn_tokens_per_s'):.2f}×",
         f"{m['relay_4conn_tokens_per_s']:,.0f}", f"{ratio(samples, path, 'relay_4conn_tokens_per_s'):.2f}×",
         f"{m['client_ttfm_ms']:.2f}", f"{m['client_call_ms']:.2f}", f"{m['client_messages_per_call']:.1f}")
        for path, m in ((path, medians[path]) for path in BURST_PATHS)
    ]  # fmt: skip
    direct = medians["backend"]
    ttft, out, back, trip = "paced_ttft_ms", "paced_ttft_out_ms", "paced_ttft_back_ms", "paced_token_trip_ms"
    paced_rows = [
        (path, f"{m[ttft]:.3f}", f"{m[ttft] - direct[ttft]:+.3f}", f"{m[out] - direct[out]:+.3f}",
         f"{m[back] - direct[back]:+.3f}", f"{m[trip]:.3f}", f"{m[trip] - direct[trip]:+.3f}")
        for path, m in ((path, medians[path]) for path in PACED_PATHS)
    ]  # fmt: skip
    idle_rows = [
        (path, f"{m['rss_before_kb'] / 1024:.1f}", f"{m['rss_open_kb'] / 1024:.1f}",
         f"{m['rss_after_kb'] / 1024:.1f}", f"{m['kb_per_stream']:.1f}")
        for path, m in idle.items()
    ]  # fmt: skip

    def added(path: str, key: str) -> float:
        return medians[path][key] - direct[key]

    summary = "\n".join(
        (
            f"- Burst stream, nginx's time ×: the router **{ratio(samples, DEFAULT, 'burst_ms'):.2f}×** "
            "(target ≤ 1.5×, stretch 1.2×); on the grpc.aio data plane "
            f"{ratio(samples, GRPC, 'burst_ms'):.2f}×, pinned to a CPU "
            f"{ratio(samples, PINNED, 'burst_ms'):.2f}×; "
            f"before #9: {ratio(samples, BEFORE, 'burst_ms'):.2f}×; a bare grpc.aio pass-through: "
            f"{ratio(samples, FLOOR, 'burst_ms'):.2f}×.",
            "- Paced stream, added per token (target ≤ 0.15 ms): the router "
            f"**{added(DEFAULT, trip):.3f} ms**; on the grpc.aio data plane {added(GRPC, trip):.3f} ms, "
            f"pinned {added(PINNED, trip):.3f} ms; the bare pass-through {added(FLOOR, trip):.3f} ms; "
            f"HTTP/2 framed by nghttp2 {added(NATIVE, trip):.3f} ms; "
            f"a Python byte relay {added(BYTES, trip):.3f} ms; nginx {added('nginx', trip):.3f} ms.",
            f"- Paced stream, added to the first token (target ≤ 0.5 ms): the router "
            f"**{added(DEFAULT, ttft):.3f} ms** (its rounds {round_range(samples, DEFAULT, ttft)} ms, "
            f"the median of their differences {paired(samples, DEFAULT, ttft):.3f}); "
            f"on the grpc.aio data plane {added(GRPC, ttft):.3f} ms, "
            f"pinned {added(PINNED, ttft):.3f} ms; the bare pass-through {added(FLOOR, ttft):.3f} ms; "
            f"HTTP/2 framed by nghttp2 {added(NATIVE, ttft):.3f} ms; a Python byte relay "
            f"{added(BYTES, ttft):.3f} ms; nginx {added('nginx', ttft):.3f} ms. With a 4 KiB-page "
            f"heap the router adds {added(SMALL_PAGES, ttft):.3f} ms (the huge-page heap's share, "
            f"round by round: {1000 * paired(samples, DEFAULT, ttft, SMALL_PAGES):+.0f} us).",
            f"- Relay, 64 streams on one connection, nginx's tokens/s ×: the router "
            f"**{ratio(samples, DEFAULT, 'relay_1conn_tokens_per_s'):.2f}×**, on the grpc.aio data plane "
            f"{ratio(samples, GRPC, 'relay_1conn_tokens_per_s'):.2f}×; on four connections, two "
            f"workers **{ratio(samples, WORKERS, 'relay_4conn_tokens_per_s'):.2f}×**, pinned "
            f"**{ratio(samples, WORKERS_PINNED, 'relay_4conn_tokens_per_s'):.2f}×**.",
            f"- Idle open stream: **{idle[DEFAULT]['kb_per_stream']:.1f} KiB** in the router "
            f"({idle[SMALL_PAGES]['kb_per_stream']:.1f} KiB with a 4 KiB-page heap), "
            f"{idle[GRPC]['kb_per_stream']:.1f} KiB on the grpc.aio data plane, "
            f"{idle[FLOOR]['kb_per_stream']:.1f} KiB in the bare pass-through, "
            f"{idle[NATIVE]['kb_per_stream']:.1f} KiB framed by nghttp2, "
            f"{idle['nginx']['kb_per_stream']:.1f} KiB in nginx.",
        )
    )
    tables = (
        "### Burst streams (16 messages per call)\n\n"
        + table(
            (
                "path",
                "ms per call, 1 stream (h2load)",
                "vs nginx",
                "tokens/s, 64 streams 1 conn",
                "vs nginx",
                "tokens/s, 64 streams 4 conns",
                "vs nginx",
                "first msg ms (own client)",
                "call ms (own client)",
                "messages per call",
            ),
            burst_rows,
        )
        + "\n\n### Paced streams (a token every 5 ms; own client, medians)\n\n"
        + table(
            (
                "path",
                "time to first token ms",
                "added",
                "added on the way to the backend",
                "added on the way back",
                "token trip ms (backend send → client)",
                "added",
            ),
            paced_rows,
        )
        + f"\n\n### Idle open streams ({args.idle_streams} at once, first token then silence)\n\n"
        + table(
            ("path", "RSS before MiB", "RSS open MiB", "RSS after cancel MiB", "KiB per stream"), idle_rows
        )
    )
    markdown = (
        "# Proxy data path: tiermesh router vs nginx and HAProxy\n\n"
        f"Loopback on this machine ({os.cpu_count()} vCPU), backends, proxies and clients sharing it. "
        f"{args.rounds} interleaved rounds; h2load {args.calls} calls one at a time and "
        f"{2 * args.calls} with 64 at once; own client (grpc.aio) 300 sequential burst calls and "
        f"{args.paced_calls} paced calls per round. Medians of rounds; ratios are medians of "
        "per-round ratios. `python -m bench.proxy` (in `make bench`) rewrites this.\n\n"
        + summary
        + "\n\n"
        + tables
        + "\n"
    )
    data = {"args": vars(args), "medians": medians, "idle": idle, "samples": samples}
    json_path, md_path = write("proxy", data, markdown)
    update_readme("proxy", summary + "\n\n" + tables)
    return f"{markdown}\nwritten: {json_path}, {md_path}, README.md"


if __name__ == "__main__":
    main()
