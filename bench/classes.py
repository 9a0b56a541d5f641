"""Traffic classes and tenants under overload, three routers side by side in one run.

Silver is one synthetic replica of fixed capacity (bench/synthetic_tier.py): with one,
the router's queue is the only queue, where with several the balancer's split can queue
calls inside an engine, first come first served, whatever their class (that is the
balancer's to fix, #27). Every call is a dialogue with a 2 s deadline, Silver only, no canned
answer, so a shed call is visible as RESOURCE_EXHAUSTED. Open-loop Poisson arrivals.
The routers, each its own process:

- FIFO proxy: round-robin, no router queue (calls queue FIFO in the engines);
- tiermesh, classes off: today's stream limit with deadline-aware shedding, first come
  first served (traffic.classes: false);
- tiermesh, classes on: the class- and tenant-aware queue (router/scheduling.py).

Scenarios:
1. Classes: 20% critical, 50% standard, 30% sheddable, two tenants, at 0.5×, 1×, 2×, 4×
   Silver's capacity: per class, shed share and time to first token.
2. Noisy neighbour: tenant B sends 40% of its half share; then again while tenant A
   sends 10× its share. B's p95 time to first token, alone and beside A; also with A's
   token quota set to its share (classes on + quota), or with slots reserved for B; and a
   control with nothing shared but the machine (A's flood on a router and synthetic Silver
   of its own): what no router policy can take back on these two cores.
3. Fairness: A at 10× its share with 24-token answers, B at 2× with 8-token answers, both
   backlogged: Jain's index over the tokens each was served, prompt and answer (the unit
   the fair queue shares: an estimate of both, corrected by the tier's count), and over
   the answers' tokens alone.

    python -m bench.classes [--seconds 6]
    python -m bench.classes --reserve-b 0.875   # another reservation: classes-reserve-b-0.875.md
    python -m bench.classes --real-mesh [--rate 6] [--seconds 20]   # against `tiermesh up`

--real-mesh offers the same class mix (one tenant) to the running local mesh's router
(vLLM Silver first, Gold, the canned line: config/mesh.yaml's dialogue route), 16-token
dialogue with a 3 s deadline, and records what each class got, by tier, in
bench/results/classes-mesh.md.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import multiprocessing
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from bench.paths import running
from bench.report import median, table, update_readme, write
from ops.mesh import wait_serving
from router.stats import nearest_rank
from tiermesh.v1 import mesh_pb2, mesh_pb2_grpc

SILVER = ["127.0.0.1:7201"]
# The control: A's flood on a router and a synthetic Silver of its own, B on "classes on"
# (no queue, slot or connection shared): what B loses to the machine alone.
SILVER_A, ROUTER_A = "127.0.0.1:7202", "127.0.0.1:7255"
APART = "control: A on a router and tier of its own"
ROUTERS = {
    "FIFO proxy": "127.0.0.1:7250",
    "tiermesh, classes off": "127.0.0.1:7251",
    "tiermesh, classes on": "127.0.0.1:7252",
    "tiermesh, classes on + quota": "127.0.0.1:7253",
    "tiermesh, classes on + B's slots reserved": "127.0.0.1:7254",
    APART: "127.0.0.1:7252",  # B's; A's is ROUTER_A
}
# Arms measured only beside a noisy neighbour: what they add is about tenants.
TENANT_ARMS = ("tiermesh, classes on + quota", "tiermesh, classes on + B's slots reserved", APART)
# Streams of ~0.5 s: 4× capacity is ~70 calls/s, which this 2-vCPU machine's client and
# routers can drive without becoming the bottleneck themselves.
SLOTS, TOKENS, TTFT_MS, TOKEN_MS = 8, 12, 20.0, 40.0
MAX_TOKENS = 24  # the synthetic engine streams min(this, the call's max_tokens)
STREAM_S = (TTFT_MS + (TOKENS - 1) * TOKEN_MS) / 1000
CAPACITY = len(SILVER) * SLOTS / STREAM_S  # 12-token streams per second
DEADLINE_S = 2.0
# The noisy-neighbour runs last this many times --seconds: B's p95 is then over ~200
# calls, not ~50, where it was the third slowest call and one cluster of arrivals
# decided it.
NOISY_LENGTH = 8
# Each stream's client process starts, imports and connects in this long; then all begin.
CLIENT_START_S = 4.0
LEVELS = (0.5, 1.0, 2.0, 4.0)
MIX = (("critical", 0.2), ("standard", 0.5), ("sheddable", 0.3))
PRIORITY = {
    "critical": mesh_pb2.PRIORITY_CRITICAL,
    "standard": mesh_pb2.PRIORITY_STANDARD,
    "sheddable": mesh_pb2.PRIORITY_SHEDDABLE,
}
# Tenant A's quota in the "+ quota" router: its half share of Silver's output tokens.
A_QUOTA_PER_MIN = int(CAPACITY / 2 * TOKENS * 60)
# Tenant B's reserved share of the slots in the "+ reserved" router (--reserve-b).
B_RESERVED_SHARE = 0.75


def router_config(
    name: str, listen: str, b_reserved: float = B_RESERVED_SHARE, endpoints: Sequence[str] = SILVER
) -> dict[str, Any]:
    silver: dict[str, Any] = {"endpoints": list(endpoints), "expected_ttft_s": TTFT_MS / 1000,
                              "expected_token_s": TOKEN_MS / 1000}  # fmt: skip
    traffic: dict[str, Any] = {"tenants": {"tenant-a": {}, "tenant-b": {}}}
    if name == "FIFO proxy":
        silver |= {"balancer": "round_robin", "max_attempts": 1}
    else:
        silver |= {"max_streams": len(SILVER) * SLOTS, "max_attempts": 2}
        traffic["classes"] = name != "tiermesh, classes off"
        if name.endswith("quota"):
            traffic["tenants"]["tenant-a"] = {"output_tokens_per_min": A_QUOTA_PER_MIN}
            traffic["quota_burst_s"] = 2  # a run lasts seconds: a minute's burst would be all of it
        if name.endswith("reserved"):
            traffic["tenants"]["tenant-b"] = {"reserved_share": b_reserved}
    dialogue = {"tiers": ["silver"], "default_max_tokens": TOKENS, "max_tokens_limit": 64,
                "default_deadline_s": 5}  # fmt: skip
    return {
        "router": {
            "listen": listen,
            "metrics_port": 0,
            "tiers": {"silver": silver},
            "tasks": {"dialogue": dialogue},
            "traffic": traffic,
        },
        "personas": {"guard-1": {"system": "You guard the gate."}},
    }


@dataclass
class Result:
    priority: str
    tenant: str
    code: str
    ttft_s: float = float("nan")
    tokens: int = 0
    prompt_tokens: int = 0  # as the tier counted them
    whole: bool = False  # ended STOP or LENGTH (not shaped to the deadline)


@dataclass(frozen=True)
class Stream:
    """One source of arrivals: its tenant, rate, class mix and answer length."""

    tenant: str
    rate: float
    mix: tuple[tuple[str, float], ...] = MIX
    max_tokens: int = TOKENS
    router: str | None = None  # its own router, not the run's


async def one_call(stub: mesh_pb2_grpc.MeshAsyncStub, stream: Stream, priority: str) -> Result:
    request = mesh_pb2.GenerateRequest(npc_id="guard-1", prompt="Halt!", task=mesh_pb2.TASK_DIALOGUE,
                                       max_tokens=stream.max_tokens, priority=PRIORITY[priority])  # fmt: skip
    result = Result(priority, stream.tenant, "OK")
    started = time.perf_counter()
    try:
        calls = stub.Generate(request, timeout=DEADLINE_S, metadata=[("x-client-id", stream.tenant)])
        messages = 0
        async for response in calls:
            if response.text and messages == 0:
                result.ttft_s = time.perf_counter() - started
            messages += 1 if response.text else 0
            # The tier's count when it gives one: the router merges deltas for a caller
            # that reads slowly, so messages undercount a flooded client's tokens.
            result.tokens = max(messages, response.usage.completion_tokens)
            result.prompt_tokens = max(result.prompt_tokens, response.usage.prompt_tokens)
            if response.finish_reason in (mesh_pb2.FINISH_REASON_STOP, mesh_pb2.FINISH_REASON_LENGTH):
                result.whole = True
    except grpc.aio.AioRpcError as e:
        result.code = e.code().name
    return result


async def arrivals(
    stub: mesh_pb2_grpc.MeshAsyncStub, stream: Stream, seconds: float, seed: int
) -> list[Result]:
    rng = random.Random(seed)
    names, weights = zip(*stream.mix, strict=True)
    calls: list[asyncio.Task[Result]] = []
    start = time.perf_counter()
    at = rng.expovariate(stream.rate)
    while at < seconds:
        delay = start + at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        priority = rng.choices(names, weights)[0]
        calls.append(asyncio.create_task(one_call(stub, stream, priority)))
        at += rng.expovariate(stream.rate)
    return list(await asyncio.gather(*calls))


def run(address: str, streams: Sequence[Stream], seconds: float, seed: int) -> list[Result]:
    """Every stream's calls, each stream from a process and a connection of its own, as
    separate game servers have: on one event loop a flood's client work delayed the
    other tenant's calls and its clock (its "time to first token" included the flood's
    loop lag), and on one connection HTTP/2's concurrent-stream limit would hold them."""
    begin = time.time() + CLIENT_START_S  # the same start for every stream's process
    with ProcessPoolExecutor(len(streams), mp_context=multiprocessing.get_context("spawn")) as pool:
        runs = [
            pool.submit(run_stream, stream.router or address, stream, seconds, seed + i, begin)
            for i, stream in enumerate(streams)
        ]
        return [result for done in runs for result in done.result()]


def run_stream(address: str, stream: Stream, seconds: float, seed: int, begin: float) -> list[Result]:
    async def calls() -> list[Result]:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = mesh_pb2_grpc.MeshStub(channel)
            await one_call(stub, Stream("warm-up", 1.0), "standard")  # connect before the clock
            await asyncio.sleep(max(0.0, begin - time.time()))
            return await arrivals(stub, stream, seconds, seed)

    return asyncio.run(calls())


def p95(values: list[float]) -> float:
    return nearest_rank(sorted(values), 0.95) if values else float("nan")


def by_class(results: list[Result]) -> dict[str, dict[str, Any]]:
    out = {}
    for priority, _ in MIX:
        mine = [r for r in results if r.priority == priority]
        ok = [r for r in mine if r.code == "OK"]
        ttfts = [r.ttft_s for r in ok if r.ttft_s == r.ttft_s]
        out[priority] = {
            "calls": len(mine),
            "answered": len(ok),
            "whole": sum(r.whole for r in ok),
            "shed": sum(r.code == "RESOURCE_EXHAUSTED" for r in mine),
            "missed": sum(r.code == "DEADLINE_EXCEEDED" for r in mine),
            "ttft_p50_ms": round(median(ttfts) * 1000, 1),
            "ttft_p95_ms": round(p95(ttfts) * 1000, 1),
        }
    return out


def tenant_ttft_p95(results: list[Result], tenant: str) -> float:
    mine = [r.ttft_s for r in results if r.tenant == tenant and r.code == "OK"]
    return round(p95(mine) * 1000, 1)


def jain(values: Sequence[float]) -> float:
    return sum(values) ** 2 / (len(values) * sum(v * v for v in values)) if any(values) else float("nan")


def measure(seconds: float) -> dict[str, Any]:
    data: dict[str, Any] = {"classes": {}, "noisy": {}, "fairness": {}}
    share = CAPACITY / 2
    for factor in LEVELS:
        streams = [Stream("tenant-a", factor * CAPACITY / 2), Stream("tenant-b", factor * CAPACITY / 2)]
        for name, address in ROUTERS.items():
            if name in TENANT_ARMS:
                continue
            results = run(address, streams, seconds, seed=int(factor * 10))
            data["classes"].setdefault(f"{factor}x", {})[name] = by_class(results)
            print(f"classes {factor}x {name}: {data['classes'][f'{factor}x'][name]}", flush=True)
            time.sleep(1.0)  # let queues drain between runs
    quiet = Stream("tenant-b", 0.4 * share, (("standard", 1.0),))
    noisy = Stream("tenant-a", 10 * share, (("standard", 1.0),))
    for name, address in ROUTERS.items():
        alone = run(address, [quiet], NOISY_LENGTH * seconds, seed=7)
        time.sleep(1.0)
        flood = dataclasses.replace(noisy, router=ROUTER_A) if name == APART else noisy
        beside = run(address, [quiet, flood], NOISY_LENGTH * seconds, seed=7)
        data["noisy"][name] = {
            "b_alone_ttft_p95_ms": tenant_ttft_p95(alone, "tenant-b"),
            "b_beside_a_ttft_p95_ms": tenant_ttft_p95(beside, "tenant-b"),
            "b_beside_a_answered": sum(r.code == "OK" for r in beside if r.tenant == "tenant-b"),
            "b_calls": sum(r.tenant == "tenant-b" for r in beside),
            # What B's protection costs the flood: A's calls answered in the same run.
            "a_beside_answered": sum(r.code == "OK" for r in beside if r.tenant == "tenant-a"),
        }
        print(f"noisy {name}: {data['noisy'][name]}", flush=True)
        time.sleep(1.0)
    heavy = Stream("tenant-a", 10 * share * TOKENS / MAX_TOKENS, (("standard", 1.0),), MAX_TOKENS)
    light = Stream("tenant-b", 2 * share * TOKENS / 8, (("standard", 1.0),), 8)
    for name, address in ROUTERS.items():
        if name in TENANT_ARMS:
            continue
        results = run(address, [heavy, light], seconds, seed=11)
        ok = [r for r in results if r.code == "OK"]
        tenants = ("tenant-a", "tenant-b")
        served = [sum(r.prompt_tokens + r.tokens for r in ok if r.tenant == t) for t in tenants]
        answers = [sum(r.tokens for r in ok if r.tenant == t) for t in tenants]
        data["fairness"][name] = {
            "tokens_a": served[0],
            "tokens_b": served[1],
            "jain": round(jain(served), 3),
            "answer_tokens_a": answers[0],
            "answer_tokens_b": answers[1],
            "jain_answer_tokens": round(jain(answers), 3),
        }
        print(f"fairness {name}: {data['fairness'][name]}", flush=True)
        time.sleep(1.0)
    return data


def verdict(data: dict[str, Any]) -> str:
    on = "tiermesh, classes on"
    levels = data["classes"]
    critical_shed = {
        level: runs[on]["critical"]["shed"] + runs[on]["critical"]["missed"] for level, runs in levels.items()
    }
    four = levels["4.0x"][on]
    sheddable_left = four["sheddable"]["answered"]
    noisy = data["noisy"]
    lines = [
        "- Critical calls not answered with classes on, by load: "
        + ", ".join(f"{level} **{n}**" for level, n in critical_shed.items())
        + " (target 0 up to 2×).",
        f"- At 4×: critical shed {four['critical']['shed']}, sheddable answered {sheddable_left} of "
        f"{four['sheddable']['calls']} (critical shed only once no sheddable is answered).",
        "- Tenant B's p95 time to first token beside a 10× neighbour, vs alone (target within 10%): "
        + ", ".join(
            f"{name} {n['b_beside_a_ttft_p95_ms']} vs {n['b_alone_ttft_p95_ms']} ms"
            for name, n in noisy.items()
        )
        + ".",
        "- Jain's index over tokens served to two backlogged tenants, prompt and answer (target ≥ 0.95): "
        + ", ".join(f"{name} **{f['jain']}**" for name, f in data["fairness"].items())
        + "; over the answers' tokens alone: "
        + ", ".join(f"{name} {f.get('jain_answer_tokens', '—')}" for name, f in data["fairness"].items())
        + ".",
    ]
    return "\n".join(lines)


def flags(data: dict[str, Any]) -> str:
    reserved = data.get("b_reserved_share", B_RESERVED_SHARE)
    return "" if reserved == B_RESERVED_SHARE else f" --reserve-b {reserved}"


def report(data: dict[str, Any], seconds: float) -> str:
    headers = ("load", "router", "class", "calls", "answered", "of them whole", "shed", "DEADLINE_EXCEEDED",
               "TTFT p50 ms", "TTFT p95 ms")  # fmt: skip
    rows = [
        (
            level,
            name,
            priority,
            c["calls"],
            c["answered"],
            c["whole"],
            c["shed"],
            c["missed"],
            c["ttft_p50_ms"],
            c["ttft_p95_ms"],
        )
        for level, runs in data["classes"].items()
        for name, classes in runs.items()
        for priority, c in classes.items()
    ]
    noisy_rows = [
        (
            name,
            n["b_calls"],
            n["b_alone_ttft_p95_ms"],
            n["b_beside_a_ttft_p95_ms"],
            n["b_beside_a_answered"],
            n.get("a_beside_answered", "—"),
        )
        for name, n in data["noisy"].items()
    ]
    fair_headers = ("router", "tokens served A", "tokens served B", "Jain's index", "answer tokens A",
                    "answer tokens B", "Jain's index, answers")  # fmt: skip
    fair_keys = ("tokens_a", "tokens_b", "jain", "answer_tokens_a", "answer_tokens_b", "jain_answer_tokens")
    fair_rows = [(name, *(f.get(key, "—") for key in fair_keys)) for name, f in data["fairness"].items()]
    return (
        f"# Traffic classes and tenants under overload (`python -m bench.classes{flags(data)}`)\n\n"
        f"Silver: {len(SILVER)} synthetic replica × {SLOTS} streams, {TOKENS} tokens in "
        f"{STREAM_S * 1000:.0f} ms → capacity {CAPACITY:.1f} streams/s. Dialogue calls, "
        f"{DEADLINE_S * 1000:.0f} ms deadline, Silver only and no canned answer (a shed call "
        f"is RESOURCE_EXHAUSTED), open-loop Poisson arrivals, {seconds:.0f} s per run, the "
        'routers one after another at each step. "answered": OK, whole or shaped to the '
        'deadline (FINISH_REASON_DEADLINE); "whole": all 12 tokens. Scripted tiers: this '
        "proves the policy, not the engines.\n\n"
        + verdict(data)
        + "\n\n## Classes: 20% critical, 50% standard, 30% sheddable, two tenants\n\n"
        + table(headers, rows)
        + "\n\n## Noisy neighbour: tenant B at 40% of its half share, alone and beside A at 10× its share\n\n"
        + f"Each {NOISY_LENGTH * seconds:.0f} s, each tenant from its own process and connection. "
        + f"The quota router gives A {A_QUOTA_PER_MIN} output tokens a minute (its half of Silver). "
        + f"The reserved router keeps {data.get('b_reserved_share', B_RESERVED_SHARE):.0%} of Silver's "
        + "slots for B (`traffic.tenants.tenant-b.reserved_share`): A never takes them, even while B "
        + "is quiet. The control sends A's flood to a router and synthetic Silver of its own, "
        + "B to the classes-on router: they share only the machine's two cores.\n\n"
        + table(
            (
                "router",
                "B calls",
                "B alone p95 TTFT ms",
                "B beside A p95 TTFT ms",
                "B answered beside A",
                "A answered beside B",
            ),
            noisy_rows,
        )
        + "\n\n## Fairness: A at 10× its share (24-token answers), B at 2× (8-token answers)\n\n"
        + "Tokens served: prompt and answer, as the tier counted them (the fair queue's unit); "
        + "then the answers' tokens alone. B's calls carry as long a prompt as A's for a third "
        + "of the answer, so a share fair in the first is B's smaller in the second.\n\n"
        + table(fair_headers, fair_rows)
        + "\n"
    )


async def real_call(stub: mesh_pb2_grpc.MeshAsyncStub, priority: str) -> tuple[str, str, float]:
    request = mesh_pb2.GenerateRequest(
        npc_id="guard-1",
        prompt="Halt! Who goes there?",
        max_tokens=16,
        task=mesh_pb2.TASK_DIALOGUE,
        priority=PRIORITY[priority],
        bypass_cache=True,
    )
    started, tier, ttft = time.perf_counter(), "", float("nan")
    try:
        async for response in stub.Generate(request, timeout=3.0):
            if not tier:
                tier = mesh_pb2.Tier.Name(response.tier).removeprefix("TIER_").lower()
                ttft = time.perf_counter() - started
        return priority, tier, ttft
    except grpc.aio.AioRpcError as e:
        return priority, e.code().name, ttft


async def real_mesh(address: str, rate: float, seconds: float) -> list[tuple[str, str, float]]:
    rng = random.Random(3)
    names = [name for name, _ in MIX]
    weights = [weight for _, weight in MIX]
    async with grpc.aio.insecure_channel(address) as channel:
        stub = mesh_pb2_grpc.MeshStub(channel)
        calls = []
        start, at = time.perf_counter(), 0.0
        while at < seconds:
            if (delay := start + at - time.perf_counter()) > 0:
                await asyncio.sleep(delay)
            calls.append(asyncio.create_task(real_call(stub, rng.choices(names, weights)[0])))
            at += rng.expovariate(rate)
        return list(await asyncio.gather(*calls))


def report_real_mesh(results: list[tuple[str, str, float]], rate: float, seconds: float) -> str:
    outcomes = sorted({outcome for _, outcome, _ in results})
    rows = []
    data: dict[str, Any] = {}
    for priority, _ in MIX:
        mine = [(o, t) for p, o, t in results if p == priority]
        ttfts = [t for o, t in mine if o == "silver" and t == t]
        data[priority] = {o: sum(x == o for x, _ in mine) for o in outcomes}
        data[priority] |= {
            "calls": len(mine),
            "silver_ttft_p50_ms": round(median(ttfts) * 1000, 1),
            "silver_ttft_p95_ms": round(p95(ttfts) * 1000, 1),
        }
        cells = [data[priority][o] for o in outcomes]
        rows.append((priority, len(mine), *cells, data[priority]["silver_ttft_p50_ms"],
                     data[priority]["silver_ttft_p95_ms"]))  # fmt: skip
    markdown = (
        "# Traffic classes on the real local mesh (`python -m bench.classes --real-mesh`)\n\n"
        "`tiermesh up` as config/mesh.yaml has it (vLLM Silver, max_streams 16; dialogue: Silver, "
        "Gold, the canned line). 16-token dialogue calls, 3 s deadline, cache bypassed, "
        f"{rate:g} calls/s open-loop for {seconds:g} s, 20% critical, 50% standard, 30% sheddable, "
        "one tenant. What each class got: the tier that answered (fallback: the canned line), or "
        "the status.\n\n"
        + table(("class", "calls", *outcomes, "Silver TTFT p50 ms", "Silver TTFT p95 ms"), rows)
        + "\n"
    )
    write("classes-mesh", {"rate_per_s": rate, "seconds": seconds, "classes": data}, markdown)
    return markdown


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--real-mesh", action="store_true")
    parser.add_argument("--rate", type=float, default=6.0)
    parser.add_argument("--address", default="127.0.0.1:50051")
    parser.add_argument("--reserve-b", type=float, default=B_RESERVED_SHARE,
                        help="tenant B's reserved share of the slots in the '+ reserved' router")  # fmt: skip
    args = parser.parse_args()
    if args.real_mesh:
        seconds = args.seconds or 20.0
        results = asyncio.run(real_mesh(args.address, args.rate, seconds))
        print(report_real_mesh(results, args.rate, seconds))
        return
    args.seconds = args.seconds or 6.0
    work = Path(tempfile.mkdtemp(prefix="tiermesh-classes-"))
    synth = [sys.executable, "-m", "bench.synthetic_tier", "--slots", str(SLOTS), "--tokens", str(MAX_TOKENS),
             "--ttft-ms", str(TTFT_MS), "--token-ms", str(TOKEN_MS)]  # fmt: skip
    with running(work) as processes:
        for i, address in enumerate(SILVER):
            processes.start(f"silver{i}", [*synth, "--listen", address])
            wait_serving(address, address, 30)
        processes.start("silver-a", [*synth, "--listen", SILVER_A])
        wait_serving(SILVER_A, SILVER_A, 30)
        for name, listen in ROUTERS.items():
            if name != APART:  # it uses "classes on"'s router for B
                processes.router(name, router_config(name, listen, args.reserve_b))
        processes.router("A's own", router_config("tiermesh, classes on", ROUTER_A, endpoints=[SILVER_A]))
        data = measure(args.seconds)
    data |= {"capacity_per_s": CAPACITY, "deadline_s": DEADLINE_S, "seconds": args.seconds,
             "b_reserved_share": args.reserve_b}  # fmt: skip
    markdown = report(data, args.seconds)
    # The record (README) is the default reservation; another is a probe of its own file.
    probe = args.reserve_b != B_RESERVED_SHARE
    json_path, md_path = write(f"classes-reserve-b-{args.reserve_b}" if probe else "classes", data, markdown)
    if not probe:
        update_readme("classes", verdict(data))
    print(f"{markdown}\nwritten: {json_path}, {md_path}")


if __name__ == "__main__":
    main()
