"""The loop's heartbeat (router/heartbeat.py): an idle router's canned answers, with and
without it, side by side.

Router processes alike but for `data_path.loop_heartbeat_s` (10 ms, the default; 50 ms;
0: off) and, in one, `deadline_margin_s`, in front of the same two tiers that never
answer (synthetic engines whose first token would take a minute,
bench/synthetic_tier.py). Every dialogue call then ends with the persona's canned line
at the router's cut-off, the deadline less its margin: the promise at its tightest. The
calls go one at a time, to each router in turn, 1 s apart, so each router sits idle
between its calls as a quiet one does. What counts is what the caller got: the canned
line, or DEADLINE_EXCEEDED; and how long before its deadline the answer was read. The
client's own loop runs a heartbeat too.

Then the routers sit idle for `--idle-s` seconds: the CPU each used is the heartbeat's
cost.

    python -m bench.loop_heartbeat [--calls 20] [--idle-s 10]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import yaml

from bench.paths import cpu_s
from bench.report import median, table, update_readme, write
from bench.spawn import start, stop
from ops.mesh import wait_serving
from router.heartbeat import Heartbeat
from tiermesh.v1 import mesh_pb2, mesh_pb2_grpc

SILVER, GOLD = "127.0.0.1:7201", "127.0.0.1:7211"
# name: (listen, data_path.loop_heartbeat_s, deadline_margin_s)
ROUTERS = {
    "heartbeat 10 ms (default)": ("127.0.0.1:7250", 0.01, 0.02),
    "heartbeat 50 ms": ("127.0.0.1:7251", 0.05, 0.02),
    "no heartbeat": ("127.0.0.1:7252", 0.0, 0.02),
    "heartbeat 10 ms, margin 40 ms": ("127.0.0.1:7253", 0.01, 0.04),
}
DEADLINES_S = (0.2, 0.5, 1.0, 2.0)
HUNG_MS = 60_000.0  # a first token after a minute: later than any call's deadline
GAP_S = 1.0
HEADERS = ("deadline", "router", "canned, OK", "DEADLINE_EXCEEDED", "margin p50 ms", "margin min ms")


def router_config(listen: str, heartbeat_s: float, margin_s: float) -> dict[str, Any]:
    task = {
        "tiers": ["silver", "gold"],
        "canned": True,
        "default_max_tokens": 16,
        "max_tokens_limit": 64,
        "default_deadline_s": 5,
    }
    return {
        "router": {
            "listen": listen,
            "metrics_port": 0,
            "deadline_margin_s": margin_s,
            "data_path": {"loop_heartbeat_s": heartbeat_s},
            "tiers": {
                "silver": {"endpoints": [SILVER], "expected_ttft_s": 0.05, "max_attempts": 1},
                "gold": {"endpoints": [GOLD], "expected_ttft_s": 0.01, "max_attempts": 1},
            },
            "tasks": {"dialogue": task},
        },
        "personas": {"guard-1": {"system": "You guard the gate.", "fallback_line": "Move along."}},
    }


@dataclass
class Outcome:
    code: str
    tier: str
    margin_s: float  # how long before the deadline the last message came (< 0: after)


async def one_call(stub: mesh_pb2_grpc.MeshAsyncStub, deadline_s: float) -> Outcome:
    request = mesh_pb2.GenerateRequest(npc_id="guard-1", task=mesh_pb2.TASK_DIALOGUE, prompt="Halt!")
    sent = time.monotonic()
    tier = ""
    try:
        async for response in stub.Generate(request, timeout=deadline_s):
            tier = mesh_pb2.Tier.Name(response.tier)
        code = "OK"
    except grpc.aio.AioRpcError as error:
        code = error.code().name
    return Outcome(code, tier, deadline_s - (time.monotonic() - sent))


async def measure(calls: int) -> dict[str, dict[float, list[Outcome]]]:
    heartbeat = Heartbeat(0.01, lambda lag: None)
    heartbeat.start()
    outcomes: dict[str, dict[float, list[Outcome]]] = {name: {} for name in ROUTERS}
    channels = {name: grpc.aio.insecure_channel(address) for name, (address, *_) in ROUTERS.items()}
    stubs = {name: mesh_pb2_grpc.MeshStub(channel) for name, channel in channels.items()}
    try:
        for stub in stubs.values():  # connected, and the routers' first-call work done
            await one_call(stub, 0.5)
        for deadline_s in DEADLINES_S:
            for index in range(calls):
                # Each router in turn, from a different one each round.
                names = list(ROUTERS)
                order = names[index % len(names) :] + names[: index % len(names)]
                for name in order:
                    await asyncio.sleep(GAP_S)
                    outcome = await one_call(stubs[name], deadline_s)
                    outcomes[name].setdefault(deadline_s, []).append(outcome)
            for name in ROUTERS:
                got = outcomes[name][deadline_s]
                late = sum(o.code != "OK" for o in got)
                print(f"{deadline_s}s {name}: {late} of {len(got)} not in time", flush=True)
    finally:
        heartbeat.stop()
        for channel in channels.values():
            await channel.close()
    return outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=20, help="per router and deadline")
    parser.add_argument("--idle-s", type=float, default=10.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tiermesh-heartbeat-"))
    py = sys.executable
    hung = ["--ttft-ms", str(HUNG_MS), "--slots", "64"]
    processes = [
        start([py, "-m", "bench.synthetic_tier", "--listen", SILVER, *hung], work / "silver.log"),
        start(
            [py, "-m", "bench.synthetic_tier", "--listen", GOLD, "--tier", str(mesh_pb2.TIER_GOLD), *hung],
            work / "gold.log",
        ),
    ]
    routers: dict[str, subprocess.Popen[bytes]] = {}
    for index, (name, (listen, heartbeat_s, margin_s)) in enumerate(ROUTERS.items()):
        config = work / f"router{index}.yaml"
        config.write_text(yaml.safe_dump(router_config(listen, heartbeat_s, margin_s)))
        argv = [py, "-m", "ops.cli", "router", "--config", str(config)]
        routers[name] = start(argv, work / f"r{index}.log")
    processes += routers.values()
    try:
        for address in [SILVER, GOLD, *(a for a, *_ in ROUTERS.values())]:
            wait_serving(address, address, 60)
        outcomes = asyncio.run(measure(args.calls))
        before = {name: cpu_s(p.pid) for name, p in routers.items()}
        time.sleep(args.idle_s)
        idle = {name: (cpu_s(p.pid) - before[name]) / args.idle_s for name, p in routers.items()}
    finally:
        stop(processes)
    data, markdown = summarize(outcomes, idle, args)
    write("loop-heartbeat", data, markdown)
    update_readme("loop-heartbeat", markdown)
    print(markdown)


def summarize(
    outcomes: dict[str, dict[float, list[Outcome]]], idle: dict[str, float], args: argparse.Namespace
) -> tuple[dict[str, Any], str]:
    rows: list[tuple[object, ...]] = []
    cells: dict[str, dict[str, Any]] = {}
    for deadline_s in DEADLINES_S:
        for name in ROUTERS:
            got = outcomes[name][deadline_s]
            margins_ms = [o.margin_s * 1000 for o in got if o.code == "OK"]
            exceeded = sum(o.code == "DEADLINE_EXCEEDED" for o in got)
            other = sorted({o.code for o in got} - {"OK", "DEADLINE_EXCEEDED"})
            cell = {
                "calls": len(got),
                "canned": sum(o.tier == "TIER_FALLBACK" for o in got),
                "deadline_exceeded": exceeded,
                "other_codes": other,
                "margin_ms_p50": round(median(margins_ms), 1) if margins_ms else None,
                "margin_ms_min": round(min(margins_ms), 1) if margins_ms else None,
            }
            cells[f"{deadline_s}/{name}"] = cell
            rows.append(
                (f"{deadline_s * 1000:.0f} ms", name, f"{cell['canned']} / {len(got)}", exceeded,
                 cell["margin_ms_p50"], cell["margin_ms_min"])
            )  # fmt: skip
    markdown = "\n\n".join(
        [
            "# The loop's heartbeat: an idle router's canned answers",
            f"`python -m bench.loop_heartbeat --calls {args.calls} --idle-s {args.idle_s:g}`: router "
            "processes alike but for the heartbeat's period (`data_path.loop_heartbeat_s`; 0: none) and, "
            "where named, `deadline_margin_s` (else the default 20 ms), before two tiers that never "
            "answer, so every dialogue call gets the canned line at the router's cut-off (the deadline "
            "less the margin and 1 % of the budget). One call at a time, to each router in turn, "
            f"{GAP_S:g} s apart: each router idle between its calls. Margin: how long before its "
            "deadline the caller (grpc.aio, its loop kept awake too) had read the answer; below 0, "
            "after it (gRPC's own timer in the client is late too, so such a call may still end OK).",
            table(HEADERS, rows),
            "CPU while idle, per second of wall time: "
            + ", ".join(f"{name} {share * 1000:.1f} ms" for name, share in idle.items())
            + f" (over {args.idle_s:g} s; the router's health checks and timers included).",
        ]
    )
    return {"cells": cells, "idle_cpu_s_per_s": idle, "calls": args.calls}, markdown


if __name__ == "__main__":
    main()
