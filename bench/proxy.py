"""The router's data path against nginx and HAProxy, side by side.

One backend (bench/stream_backend.py) streams 16 small messages per call. Four paths
reach it: directly, through nginx `grpc_pass`, through HAProxy (h2), and through the
tiermesh router with its full pipeline (validation, sessions layer, caches,
admission, planner, fallback, balancer, retry, metrics). h2load (a C client) drives
each path, one stream at a time and with 64 concurrent streams; the project's own
client measures time to first message and per-call time. Rounds interleave the
paths; medians and ratios to nginx are reported.

    python -m bench.proxy [--calls 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import yaml

from bench.report import median, table, write
from tiermesh.mesh import wait_serving
from tiermesh.v1 import mesh_pb2, mesh_pb2_grpc

BACKEND = "127.0.0.1:7201"
PATHS = {"backend": "127.0.0.1:7201", "nginx": "127.0.0.1:7202", "haproxy": "127.0.0.1:7203",
         "router": "127.0.0.1:7204"}  # fmt: skip
METHOD = "/tiermesh.v1.Mesh/Generate"
MESSAGES = 16
REQUEST = mesh_pb2.GenerateRequest(
    npc_id="guard-1", prompt="x", task=mesh_pb2.TASK_DIALOGUE, max_tokens=MESSAGES
)

NGINX = """worker_processes 1; daemon off; error_log {work}/nginx.err; pid {work}/nginx.pid;
events {{ worker_connections 1024; }}
http {{ access_log off; client_body_temp_path {work}; keepalive_requests 1000000;
  upstream be {{ server {backend}; keepalive 16; keepalive_requests 1000000; }}
  server {{ listen {listen} http2; location / {{ grpc_pass grpc://be; }} }} }}
"""
HAPROXY = """global
  nbthread 1
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend fe
  bind {listen} proto h2
  default_backend be
backend be
  server s1 {backend} proto h2
"""


def grpc_frame(message: bytes) -> bytes:
    return b"\x00" + len(message).to_bytes(4, "big") + message


def h2load(address: str, body: Path, calls: int, streams: int) -> dict[str, float]:
    out = subprocess.run(
        ["h2load", "-n", str(calls), "-c", "1", "-m", str(streams), "-d", str(body),
         "-H", "content-type: application/grpc", "-H", "te: trailers", f"http://{address}{METHOD}"],
        capture_output=True, text=True, timeout=300, check=True,
    ).stdout  # fmt: skip
    finished = re.search(r"finished in (\S+), ([\d.]+) req/s", out)
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out)
    per_request = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)", out)
    if not (finished and done and per_request):
        raise RuntimeError(f"unexpected h2load output:\n{out}")
    mean_ms = milliseconds(per_request.group(3))
    return {"req_per_s": float(finished.group(2)), "succeeded": int(done.group(2)), "mean_ms": mean_ms}


def milliseconds(value: str) -> float:
    """h2load's durations: '1.52ms', '296us', '1.2s'."""
    for unit, scale in (("ms", 1.0), ("us", 0.001), ("s", 1000.0)):
        if value.endswith(unit):
            return float(value.removesuffix(unit)) * scale
    raise ValueError(value)


async def own_client(address: str, calls: int) -> dict[str, float]:
    """Sequential calls with a grpc.aio client: time to first message and per call."""
    firsts, totals = [], []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = mesh_pb2_grpc.MeshStub(channel)
        for _ in range(calls):
            started = time.perf_counter()
            first = 0.0
            count = 0
            async for _response in stub.Generate(REQUEST, timeout=10):
                first = first or time.perf_counter() - started
                count += 1
            assert count == MESSAGES
            firsts.append(first)
            totals.append(time.perf_counter() - started)
    return {"ttfm_ms": median(firsts) * 1000, "call_ms": median(totals) * 1000}


async def check(address: str) -> None:
    """A full, OK stream through this path, before anything is timed."""
    async with grpc.aio.insecure_channel(address) as channel:
        responses = [r async for r in mesh_pb2_grpc.MeshStub(channel).Generate(REQUEST, timeout=10)]
    if len(responses) != MESSAGES or not responses[-1].finish_reason:
        raise RuntimeError(f"{address} did not relay a full stream")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    for tool in ("nginx", "haproxy", "h2load"):
        if not shutil.which(tool):
            sys.exit(
                f"{tool} is missing: `make bench-tools` installs nginx-light, haproxy and nghttp2-client"
            )
    work = Path(tempfile.mkdtemp(prefix="tiermesh-proxy-"))
    body = work / "request.bin"
    body.write_bytes(grpc_frame(REQUEST.SerializeToString()))
    (work / "nginx.conf").write_text(NGINX.format(work=work, backend=BACKEND, listen=PATHS["nginx"]))
    (work / "haproxy.cfg").write_text(HAPROXY.format(backend=BACKEND, listen=PATHS["haproxy"]))
    task = {"tiers": ["silver"], "default_max_tokens": 16, "max_tokens_limit": 64, "default_deadline_s": 10}
    config = {
        "router": {
            "listen": PATHS["router"],
            "metrics_port": 0,
            "tiers": {"silver": {"endpoints": [BACKEND], "expected_ttft_s": 0.002}},
            "tasks": dict.fromkeys(("intent", "bark", "dialogue", "longform"), task),
        },
        "personas": {"guard-1": {"system": "You guard the gate."}},
    }
    (work / "router.yaml").write_text(yaml.safe_dump(config))
    py = sys.executable
    commands = [
        [py, "-m", "bench.stream_backend", "--listen", BACKEND],
        ["nginx", "-c", str(work / "nginx.conf")],
        ["haproxy", "-f", str(work / "haproxy.cfg")],
        [py, "-m", "tiermesh.cli", "router", "--config", str(work / "router.yaml")],
    ]
    with (work / "err.log").open("ab") as errors:
        processes = [subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=errors) for c in commands]
    try:
        wait_serving("backend", BACKEND, 30)
        wait_serving("router", PATHS["router"], 30)
        time.sleep(1.0)  # nginx and HAProxy have no health service: give them a moment
        for address in PATHS.values():
            asyncio.run(check(address))
        results: dict[str, dict[str, list[float]]] = {p: {} for p in PATHS}
        for _ in range(args.rounds):
            for name, address in PATHS.items():
                one = h2load(address, body, args.calls, streams=1)
                many = h2load(address, body, args.calls * 2, streams=64)
                own = asyncio.run(own_client(address, min(args.calls, 300)))
                for key, value in (
                    ("h2load_ms", one["mean_ms"]),
                    ("h2load_calls_per_s", one["req_per_s"]),
                    ("relay_msgs_per_s_64", many["req_per_s"] * MESSAGES),
                    ("client_ttfm_ms", own["ttfm_ms"]),
                    ("client_call_ms", own["call_ms"]),
                ):
                    results[name].setdefault(key, []).append(value)  # fmt: skip
                if one["succeeded"] != args.calls or many["succeeded"] != args.calls * 2:
                    raise RuntimeError(f"{name}: calls failed under load: {one} {many}")
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(10)
    print(report(results, args.calls, args.rounds))


def report(results: dict[str, dict[str, list[float]]], calls: int, rounds: int) -> str:
    medians = {p: {k: median(v) for k, v in r.items()} for p, r in results.items()}
    nginx = medians["nginx"]
    rows = [
        (path, f"{m['h2load_ms']:.2f}", f"{m['h2load_ms'] / nginx['h2load_ms']:.2f}x",
         f"{m['relay_msgs_per_s_64']:.0f}", f"{m['relay_msgs_per_s_64'] / nginx['relay_msgs_per_s_64']:.2f}x",
         f"{m['client_ttfm_ms']:.2f}", f"{m['client_call_ms']:.2f}")
        for path, m in medians.items()
    ]  # fmt: skip
    headers = ("path", "ms per call (h2load, 1 stream)", "vs nginx", "msgs/s (64 streams)", "vs nginx",
               "first msg ms (own client)", "call ms (own client)")  # fmt: skip
    router = medians["router"]
    markdown = (
        "# Proxy data path: tiermesh router vs nginx and HAProxy\n\n"
        f"A 16-message burst stream per call from one Python backend, on loopback, 2 vCPU. h2load: "
        f"{calls} calls one stream at a time and {2 * calls} with 64 concurrent streams on one "
        f"connection; own client: grpc.aio, sequential. Medians of {rounds} interleaved rounds.\n\n"
        + table(headers, rows)
        + f"\n\nRouter / nginx, burst stream: **{router['h2load_ms'] / nginx['h2load_ms']:.2f}×** "
        "(target ≤ 1.5×). Relay capacity of one router process: "
        f"**{router['relay_msgs_per_s_64'] / nginx['relay_msgs_per_s_64']:.2f}×** nginx's.\n"
    )
    data = {"calls": calls, "rounds": rounds, "medians": medians, "samples": results}
    json_path, md_path = write("proxy", data, markdown)
    return f"{markdown}\nwritten: {json_path}, {md_path}"


if __name__ == "__main__":
    main()
