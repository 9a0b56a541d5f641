"""Overload: goodput of a plain round-robin proxy vs tiermesh's policies, side by side.

Two Silver replicas (synthetic engines with fixed capacity, bench/synthetic_tier.py)
and one fast Gold replica serve two router processes: (a) round-robin, no
retries, no fallback, no limits (what a generic L7 proxy does), and (b) tiermesh's
default policies (p2c, stream limit with deadline-aware shedding, fallback to Gold,
canned line). Open-loop Poisson arrivals at 0.5×, 1× and 2× Silver's capacity, each
call with a 0.5 s deadline; each level runs against (a) then (b).

Both are the router (a generic proxy cannot turn a Mesh call into a tier call), so both
plan an answer's length to its deadline: a call that finds Silver busy may get fewer
tokens than it asked, or be ended at its deadline. Goodput counts whole answers only;
shortened ones are counted apart.

    python -m bench.overload [--seconds 8]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import yaml

from bench.report import median, table, write
from bench.spawn import start, stop
from ops.mesh import wait_serving
from tiermesh.v1 import mesh_pb2, mesh_pb2_grpc

SILVER = ["127.0.0.1:7101", "127.0.0.1:7102"]
GOLD = "127.0.0.1:7111"
ROUTERS = {"round-robin proxy": "127.0.0.1:7150", "tiermesh": "127.0.0.1:7151"}
SLOTS, TOKENS, TTFT_MS, TOKEN_MS = 4, 12, 20.0, 15.0
GOLD_TOKENS = 4  # Gold's answers are short
STREAM_S = (TTFT_MS + (TOKENS - 1) * TOKEN_MS) / 1000
CAPACITY = len(SILVER) * SLOTS / STREAM_S  # Silver streams per second
DEADLINE_S = 0.5
LEVELS = (0.5, 1.0, 2.0)


def task(tiers: list[str], **extra: object) -> dict[str, object]:
    return {"tiers": tiers, "default_max_tokens": TOKENS, "max_tokens_limit": 64,
            "default_deadline_s": 5, **extra}  # fmt: skip


def router_config(listen: str, tiermesh: bool) -> dict[str, Any]:
    silver: dict[str, Any] = {"endpoints": SILVER, "expected_ttft_s": TTFT_MS / 1000}
    gold: dict[str, Any] = {"endpoints": [GOLD], "expected_ttft_s": 0.005}
    if tiermesh:
        silver |= {"max_streams": len(SILVER) * SLOTS, "max_attempts": 2}
        gold |= {"max_streams": 8}
        dialogue = task(["silver", "gold"], canned=True)
    else:
        silver |= {"balancer": "round_robin", "max_attempts": 1}
        dialogue = task(["silver"])
    return {
        "router": {
            "listen": listen,
            "metrics_port": 0,
            "tiers": {"silver": silver, "gold": gold},
            "tasks": {"dialogue": dialogue},
        },
        "personas": {"guard-1": {"system": "You guard the gate.", "fallback_line": "Move along."}},
    }


@dataclass
class Result:
    code: str
    tier: str = ""
    ttft_s: float = 0.0
    total_s: float = 0.0
    tokens: int = 0  # the answer's, from its final message's usage
    finish: str = ""


async def one_call(stub: mesh_pb2_grpc.MeshAsyncStub, request: mesh_pb2.GenerateRequest) -> Result:
    started = time.perf_counter()
    result = Result("OK")
    try:
        async for response in stub.Generate(request, timeout=DEADLINE_S):
            if not result.tier:
                result.tier = mesh_pb2.Tier.Name(response.tier).removeprefix("TIER_").lower()
                result.ttft_s = time.perf_counter() - started
            if response.finish_reason:
                result.tokens = response.usage.completion_tokens
                result.finish = mesh_pb2.FinishReason.Name(response.finish_reason)
    except grpc.aio.AioRpcError as e:
        result.code = e.code().name
    result.total_s = time.perf_counter() - started
    return result


async def open_loop(address: str, rate: float, seconds: float, seed: int) -> list[Result]:
    rng = random.Random(seed)
    request = mesh_pb2.GenerateRequest(npc_id="guard-1", prompt="Halt!", task=mesh_pb2.TASK_DIALOGUE)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = mesh_pb2_grpc.MeshStub(channel)
        await one_call(stub, request)  # connect before the clock starts
        calls: list[asyncio.Task[Result]] = []
        start = time.perf_counter()
        at = 0.0
        while at < seconds:
            delay = start + at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            calls.append(asyncio.create_task(one_call(stub, request)))
            at += rng.expovariate(rate)
        return list(await asyncio.gather(*calls))


# What each tier's answer is when nothing shortens it: Silver the TOKENS asked for, Gold
# its own short answers.
WHOLE = {"silver": TOKENS, "gold": GOLD_TOKENS}


def whole(result: Result) -> bool:
    return result.finish != "FINISH_REASON_DEADLINE" and result.tokens >= WHOLE.get(result.tier, 1 << 30)


def summarize(results: list[Result], offered: float, seconds: float) -> dict[str, Any]:
    n = len(results)
    in_time = [r for r in results if r.code == "OK" and r.total_s <= DEADLINE_S]
    answered = [r for r in in_time if r.tier in WHOLE]
    model = [r for r in answered if whole(r)]
    ttfts = sorted(r.ttft_s for r in results if r.tier)
    p99 = ttfts[min(len(ttfts) - 1, int(0.99 * len(ttfts)))] if ttfts else float("nan")
    return {
        "offered_per_s": round(offered, 1),
        "calls": n,
        "goodput_per_s": round(len(model) / seconds, 1),
        "goodput_ratio": round(len(model) / n, 3),
        "silver": sum(r.tier == "silver" for r in model),
        "fallback_gold": sum(r.tier == "gold" for r in model),
        "shortened": len(answered) - len(model),
        "canned": sum(r.tier == "cache" for r in in_time),
        "missed_deadline": sum(r.code == "DEADLINE_EXCEEDED" or r.total_s > DEADLINE_S for r in results),
        "other_errors": sum(r.code not in ("OK", "DEADLINE_EXCEEDED") for r in results),
        "ttft_p50_ms": round(median(ttfts) * 1000, 1),
        "ttft_p99_ms": round(p99 * 1000, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tiermesh-overload-"))
    py = sys.executable
    synth = [py, "-m", "bench.synthetic_tier", "--slots", str(SLOTS), "--tokens", str(TOKENS),
             "--ttft-ms", str(TTFT_MS), "--token-ms", str(TOKEN_MS)]  # fmt: skip
    processes = [start([*synth, "--listen", a], work / f"silver{i}.log") for i, a in enumerate(SILVER)]
    processes.append(
        start([py, "-m", "bench.synthetic_tier", "--listen", GOLD, "--tier", str(mesh_pb2.TIER_GOLD),
               "--slots", "8", "--tokens", str(GOLD_TOKENS), "--ttft-ms", "3", "--token-ms", "2"],
              work / "gold.log")
    )  # fmt: skip
    for name, listen in ROUTERS.items():
        config = work / f"{name.split()[0]}.yaml"
        config.write_text(yaml.safe_dump(router_config(listen, tiermesh=name == "tiermesh")))
        processes.append(start([py, "-m", "ops.cli", "router", "--config", str(config)], work / "r.log"))
    try:
        for address in [*SILVER, GOLD, *ROUTERS.values()]:
            wait_serving(address, address, 30)
        levels: dict[str, dict[str, Any]] = {}
        for factor in LEVELS:
            offered = factor * CAPACITY
            for name, address in ROUTERS.items():
                results = asyncio.run(open_loop(address, offered, args.seconds, seed=int(factor * 10)))
                levels.setdefault(f"{factor}x", {})[name] = summarize(results, offered, args.seconds)
                print(f"{factor}x {name}: {levels[f'{factor}x'][name]}", flush=True)
                time.sleep(1.0)  # let queues drain between runs
    finally:
        stop(processes)
    print(report(levels, args.seconds))


def report(levels: dict[str, dict[str, Any]], seconds: float) -> str:
    headers = ("load", "router", "offered/s", "goodput/s", "goodput", "silver", "gold (fallback)",
               "shortened", "canned", "missed deadline", "TTFT p50 ms", "TTFT p99 ms")  # fmt: skip
    rows = [
        (level, name, s["offered_per_s"], s["goodput_per_s"], f"{s['goodput_ratio']:.0%}", s["silver"],
         s["fallback_gold"], s["shortened"], s["canned"], s["missed_deadline"], s["ttft_p50_ms"],
         s["ttft_p99_ms"])
        for level, runs in levels.items()
        for name, s in runs.items()
    ]  # fmt: skip
    two = levels["2.0x"]
    gain = two["tiermesh"]["goodput_per_s"] / max(two["round-robin proxy"]["goodput_per_s"], 0.1)
    markdown = (
        "# Overload: round-robin proxy vs tiermesh\n\n"
        f"Silver: {len(SILVER)} synthetic replicas × {SLOTS} streams, {TOKENS} tokens in "
        f"{STREAM_S * 1000:.0f} ms → capacity {CAPACITY:.1f} streams/s. Gold: 1 fast replica "
        f"(short answers). Deadline {DEADLINE_S * 1000:.0f} ms per call, open-loop Poisson arrivals, "
        f"{seconds:.0f} s per run. Goodput counts whole answers a model tier (Silver or Gold) "
        "completed within the deadline (silver, gold: of them). Both routers plan an answer's "
        "length to its deadline, so 'shortened' counts answers in time with fewer tokens than "
        f"the tier gives (Silver {TOKENS}, Gold {GOLD_TOKENS}) or ended at the deadline; canned lines are "
        "counted apart.\n\n"
        + table(headers, rows)
        + f"\n\nAt 2× capacity tiermesh's goodput is {gain:.1f}× the round-robin proxy's.\n"
    )
    data = {"levels": levels, "capacity_per_s": CAPACITY, "deadline_s": DEADLINE_S, "seconds": seconds}
    json_path, md_path = write("overload", data, markdown)
    return f"{markdown}\nwritten: {json_path}, {md_path}"


if __name__ == "__main__":
    main()
