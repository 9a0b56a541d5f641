"""The router's promise at game budgets, on the real local mesh (Triton Gold over
llama.cpp, vLLM Silver, Bronze): for each task and deadline, at 1, 4 and 16 concurrent
callers, cache bypassed, what a caller got: a whole answer in time (by tier), an answer
shaped to the deadline (FINISH_REASON_DEADLINE), the canned answer (TIER_FALLBACK),
DEADLINE_EXCEEDED (and whether text had come first), or another failure; and the time to
the answer's end.

Side by side, cell by cell in the same run: BASELINE static fallbacks, what a user would
configure in a generic LLM router (LiteLLM's `fallbacks` and per-model `timeout`): the
task's tiers in the same order, each tried with a fixed timeout, the first to answer wins,
no canned answer, no shaping. It calls the same tiers through the router's own adapters,
in this process (no router hop: a fraction of a millisecond in its favour).

    python -m bench.deadlines [--calls 6] [--config config/mesh.yaml] [--tasks longform]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import time
import urllib.request
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc

from bench.report import table, update_readme, write
from bench.silver import mesh_running
from ops.settings import Settings, load_settings
from router.backends import TierAdapter, adapter
from router.stats import nearest_rank
from router.validation import TASK_NAMES, resolve
from tiermesh.config import TaskName, TierName
from tiermesh.errors import StatusError
from tiermesh.v1 import mesh_pb2, mesh_pb2_grpc

DEADLINES_MS: dict[TaskName, tuple[int, ...]] = {
    "intent": (50, 100, 200, 300, 500, 1000, 2000),
    "bark": (50, 100, 200, 300, 500, 1000, 2000),
    "dialogue": (50, 100, 200, 300, 500, 1000, 2000),
    "longform": (2000, 5000, 10000, 30000),
}
CONCURRENCY = (1, 4, 16)
TASK_VALUES = {name: mesh_pb2.Task.ValueType(value) for value, name in TASK_NAMES.items()}
NPCS = ("guard-1", "merchant-1", "innkeeper-1")
# BASELINE: the timeout a user would give each tier in a static fallback list.
BASELINE_TIMEOUT_S: dict[TierName, float] = {"gold": 0.25, "silver": 2.0, "bronze": 10.0}
TIER_NAMES = {value: name.removeprefix("TIER_").lower() for name, value in mesh_pb2.Tier.items()}


@dataclass
class Outcome:
    """One call as its caller saw it."""

    kind: str  # whole | shaped | canned | deadline_exceeded | failed
    tier: str = ""
    seconds: float = 0.0
    text_before_error: bool = False  # DEADLINE_EXCEEDED after text: cut mid-answer


# What a caller counts as an answer in time: whole, shaped to the deadline, or canned.
ANSWERED = ("whole", "shaped", "canned")


@dataclass
class Cell:
    outcomes: list[Outcome] = field(default_factory=list)

    def share(self, kind: str, tier: str | None = None) -> float:
        hits = [o for o in self.outcomes if o.kind == kind and (tier is None or o.tier == tier)]
        return len(hits) / max(1, len(self.outcomes))

    def best(self, tier: str) -> float:
        """Answered in time (whole or shaped) by the task's best tier."""
        hits = [o for o in self.outcomes if o.kind in ("whole", "shaped") and o.tier == tier]
        return len(hits) / max(1, len(self.outcomes))

    def answered(self) -> float:
        """Answered in time by any tier, whole, shaped or canned."""
        hits = [o for o in self.outcomes if o.kind in ANSWERED]
        return len(hits) / max(1, len(self.outcomes))

    def seconds(self, q: float) -> float:
        answered = sorted(o.seconds for o in self.outcomes if o.kind in ANSWERED)
        if not answered:
            return float("nan")
        return nearest_rank(answered, q)


# Situations a guard, a merchant or an innkeeper might face (not the labelled eval set).
SITUATIONS = [
    f"{who} {what} {where}"
    for who in ("A farmer", "A masked stranger", "The herald", "A child", "An orc", "A knight")
    for what in ("draws a blade", "asks the way", "offers a bribe", "throws a stone")
    for where in ("at the gate.", "at midnight.")
]


def request(task: TaskName, i: int) -> mesh_pb2.GenerateRequest:
    situation = SITUATIONS[i % len(SITUATIONS)]
    prompt = {
        "intent": situation,
        "bark": f"Shout something short: {situation}",
        "dialogue": f"The traveller says: {situation} What do you make of that?",
        "longform": f"Write the tale of how {situation.lower()}",
    }[task]
    return mesh_pb2.GenerateRequest(
        npc_id=NPCS[i % len(NPCS)], prompt=prompt, task=TASK_VALUES[task], bypass_cache=True
    )


def judge(responses: list[mesh_pb2.GenerateResponse], started: float, deadline_s: float) -> Outcome:
    took = time.perf_counter() - started
    if not responses:
        return Outcome("failed", seconds=took)
    tier = TIER_NAMES[responses[0].tier]
    if tier == "fallback":
        return Outcome("canned", tier, took)
    if took > deadline_s:
        return Outcome("deadline_exceeded", tier, took, text_before_error=True)
    finish = responses[-1].finish_reason
    return Outcome("shaped" if finish == mesh_pb2.FINISH_REASON_DEADLINE else "whole", tier, took)


async def through_router(
    stub: mesh_pb2_grpc.MeshAsyncStub, task: TaskName, i: int, deadline_s: float
) -> Outcome:
    started = time.perf_counter()
    responses: list[mesh_pb2.GenerateResponse] = []
    try:
        async for response in stub.Generate(request(task, i), timeout=deadline_s):
            responses.append(response)
    except grpc.aio.AioRpcError as e:
        took = time.perf_counter() - started
        if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            tier = TIER_NAMES[responses[0].tier] if responses else ""
            return Outcome("deadline_exceeded", tier, took, bool(responses))
        return Outcome("failed", seconds=took)
    return judge(responses, started, deadline_s)


class StaticFallback:
    """BASELINE: a static tier order per task with a fixed timeout per tier (LiteLLM-style
    fallbacks), over the router's own tier adapters."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        router = settings.router
        self.tiers: dict[TierName, TierAdapter] = {
            name: adapter(name, tier.endpoints[0], tier) for name, tier in router.tiers.items()
        }

    async def answer(self, task: TaskName, i: int, deadline_s: float) -> Outcome:
        started = time.perf_counter()
        call = resolve(request(task, i), self.settings.router_config(), deadline_s)
        for tier in self.settings.router.tasks[task].tiers:
            if call.max_tokens > (self.settings.router.tiers[tier].max_tokens or call.max_tokens):
                continue
            responses: list[mesh_pb2.GenerateResponse] = []
            limit = min(BASELINE_TIMEOUT_S[tier], call.remaining())
            if limit <= 0:
                break
            try:
                async with asyncio.timeout(limit):
                    async for response in self.tiers[tier].generate(call):
                        responses.append(response)
            except (TimeoutError, StatusError):
                if responses or call.remaining() <= 0:  # committed, or out of time
                    return Outcome("deadline_exceeded", tier, time.perf_counter() - started, bool(responses))
                continue
            return judge(responses, started, deadline_s)
        took = time.perf_counter() - started
        return Outcome("deadline_exceeded" if took >= deadline_s * 0.98 else "failed", seconds=took)

    async def close(self) -> None:
        await asyncio.gather(*(tier.close() for tier in self.tiers.values()))


async def cell(
    answer: Any,
    task: TaskName,
    deadline_s: float,
    concurrency: int,
    calls: int,
    base: int,
    settings: Settings,
) -> Cell:
    """`calls` calls, `concurrency` at a time; then the mesh drains, so that what one
    cell left does not load the next."""
    result = Cell()
    for start in range(0, calls, concurrency):
        batch = range(start, min(calls, start + concurrency))
        result.outcomes += await asyncio.gather(*(answer(task, base + i, deadline_s) for i in batch))
    await drained(settings)
    return result


async def drained(settings: Settings) -> None:
    """Until the mesh has let go of a cell's work: Bronze runs every accepted job to its
    end (a job is durable, and its result pre-warms the cache), so until its backlog is
    empty; Gold and Silver drop what their callers gave up on within a moment."""
    url = f"http://127.0.0.1:{settings.bronze.metrics_port}/metrics"

    def backlog() -> float:
        try:
            with urllib.request.urlopen(url, timeout=5) as reply:
                text = reply.read().decode()
        except OSError:
            return 0.0
        found = re.search(r"^tiermesh_bronze_backlog_jobs (\S+)$", text, re.M)
        return float(found.group(1)) if found else 0.0

    async with asyncio.timeout(600):
        while await asyncio.to_thread(backlog) > 0:  # noqa: ASYNC110 (another process's state)
            await asyncio.sleep(0.5)
    await asyncio.sleep(0.5)


async def measure(settings: Settings, calls: int, tasks: list[TaskName]) -> dict[str, dict[str, Cell]]:
    results: dict[str, dict[str, Cell]] = {"router": {}, "baseline": {}}
    baseline = StaticFallback(settings)
    async with grpc.aio.insecure_channel(settings.router.listen) as channel:
        stub = mesh_pb2_grpc.MeshStub(channel)

        async def routed(task: TaskName, i: int, deadline_s: float) -> Outcome:
            return await through_router(stub, task, i, deadline_s)

        # Warm both paths (first calls load code and open connections).
        for task in tasks:
            await routed(task, 0, 30.0)
            await baseline.answer(task, 0, 30.0)
        base = 1
        for task in tasks:
            for deadline_ms in DEADLINES_MS[task]:
                for concurrency in CONCURRENCY:
                    n = max(concurrency, calls if task != "longform" else max(2, calls // 2))
                    key = f"{task}/{deadline_ms}/{concurrency}"
                    for name, answer in (("router", routed), ("baseline", baseline.answer)):
                        results[name][key] = await cell(
                            answer, task, deadline_ms / 1000, concurrency, n, base, settings
                        )
                    base += n
                    print(key, summary_line(results, key, settings), flush=True)
    await baseline.close()
    return results


def best_tier(settings: Settings, task: str) -> str:
    return settings.router.tasks[task].tiers[0]  # type: ignore[index]


def summary_line(results: Mapping[str, Mapping[str, Cell]], key: str, settings: Settings) -> str:
    best = best_tier(settings, key.split("/")[0])
    router, baseline = results["router"][key], results["baseline"][key]
    return (
        f"router best {router.best(best):.0%} canned {router.share('canned'):.0%} "
        f"missed {router.share('deadline_exceeded'):.0%} | baseline best {baseline.best(best):.0%} "
        f"missed {baseline.share('deadline_exceeded'):.0%}"
    )


def pct(value: float) -> str:
    return f"{value:.0%}"


def report(
    results: dict[str, dict[str, Cell]], settings: Settings, calls: int, tasks: list[TaskName]
) -> tuple[dict[str, Any], str, str]:
    data: dict[str, Any] = {"calls_per_cell": calls, "cells": {}}
    sections = []
    without_answer = 0
    gold_missed: list[str] = []
    below_baseline: list[str] = []
    fewer_answered: list[str] = []
    for task in tasks:
        deadlines = DEADLINES_MS[task]
        best = best_tier(settings, task)
        canned = settings.router.tasks[task].canned
        rows = []
        for deadline_ms in deadlines:
            for concurrency in CONCURRENCY:
                key = f"{task}/{deadline_ms}/{concurrency}"
                r, b = results["router"][key], results["baseline"][key]
                by_tier = Counter(o.tier for o in r.outcomes if o.kind == "whole")
                whole = ", ".join(f"{t} {n / len(r.outcomes):.0%}" for t, n in sorted(by_tier.items())) or "—"
                cut = sum(o.text_before_error for o in r.outcomes)
                rows.append([
                    deadline_ms, concurrency, f"**{pct(r.best(best))}**", whole, pct(r.share("shaped")),
                    pct(r.share("canned")), pct(r.share("deadline_exceeded")) + (f" ({cut})" if cut else ""),
                    pct(r.share("failed")), f"{r.seconds(0.5) * 1000:.0f} / {r.seconds(0.95) * 1000:.0f}",
                    pct(b.best(best)), pct(b.answered()),
                    pct(b.share("deadline_exceeded")),
                    f"{b.seconds(0.5) * 1000:.0f} / {b.seconds(0.95) * 1000:.0f}",
                ])  # fmt: skip
                data["cells"][key] = {
                    name: [o.__dict__ for o in cell.outcomes]
                    for name, cell in (("router", r), ("baseline", b))
                }
                if canned:
                    without_answer += sum(o.kind not in ANSWERED for o in r.outcomes)
                if (
                    task in ("intent", "bark")
                    and deadline_ms >= 200
                    and concurrency == 1
                    and r.best("gold") < 1
                ):
                    gold_missed.append(key)
                if r.best(best) < b.best(best):
                    below_baseline.append(key)
                if r.answered() < b.answered():
                    fewer_answered.append(key)
        headers = [
            "deadline ms", "callers", f"router: by {best}", "whole by tier", "shaped", "canned",
            "DEADLINE_EXCEEDED", "failed", "p50 / p95 ms", f"baseline: by {best}", "baseline answered",
            "baseline DEADLINE_EXCEEDED", "baseline p50 / p95 ms",
        ]  # fmt: skip
        sections.append(f"### {task}\n\n{table(headers, rows)}")
    data["targets"] = {
        "canned_task_calls_without_answer": without_answer,
        "gold_short_tasks_missed": gold_missed,
        "best_below_baseline": below_baseline,
    }
    data["targets"]["fewer_answered_than_baseline"] = fewer_answered
    lines = []
    if any(settings.router.tasks[task].canned for task in tasks):
        lines.append(
            "- Calls of a canned-allowed task (intent, bark, dialogue) that ended without an answer: "
            f"**{without_answer}** (target 0)."
        )
    if {"intent", "bark"} & set(tasks):
        lines.append(
            "- Intents and barks at ≥ 200 ms, 1 caller, not all answered by Gold: "
            f"**{', '.join(gold_missed) or 'none'}** (target none)."
        )
    lines += [
        "- Cells where the best tier answered less often than in the baseline: "
        f"**{', '.join(below_baseline) or 'none'}** (target none).",
        "- Cells where fewer calls were answered at all than in the baseline: "
        f"**{', '.join(fewer_answered) or 'none'}**.",
    ]
    verdict = "\n".join(lines)
    subset = "" if tasks == list(DEADLINES_MS) else f" --tasks {' '.join(tasks)}"
    command = f"python -m bench.deadlines --calls {calls}{subset}"
    markdown = f"""# The deadline promise on the real local mesh (`{command}`)

Triton Gold (llama.cpp on CPU), vLLM Silver, Bronze (moto, the emulator and its container), the
router as config/mesh.yaml has it; cache bypassed; every call with a gRPC deadline. For each task,
deadline and number of concurrent callers, {calls} calls or more (one round per caller count),
the router and the BASELINE interleaved cell by cell. "by {{tier}}": answered in time by the
task's best tier, whole or shaped. "whole by tier": complete answers (STOP or LENGTH) before the
deadline. "shaped": ended cleanly before the deadline (FINISH_REASON_DEADLINE). "canned": the
router's TIER_FALLBACK answer. "(n)": of them, n after text had come. Times: to the
answer's last message, answered calls only. BASELINE: static fallbacks, the task's tiers in order
with a fixed timeout each (Gold {BASELINE_TIMEOUT_S["gold"]} s, Silver {BASELINE_TIMEOUT_S["silver"]} s,
Bronze {BASELINE_TIMEOUT_S["bronze"]} s) within the deadline, as a LiteLLM `fallbacks` list would run
them; no canned answer, no shaping.

{verdict}

{chr(10).join(sections)}
"""
    return data, markdown, verdict


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=6, help="calls per cell at 1 caller")
    parser.add_argument("--config", default=None)
    parser.add_argument(
        "--tasks", nargs="+", choices=list(DEADLINES_MS), default=list(DEADLINES_MS),
        help="only these tasks: written to deadlines-<tasks>.*, not the record or the README",
    )  # fmt: skip
    args = parser.parse_args()
    settings = load_settings(args.config)
    with mesh_running(settings, args.config):
        results = asyncio.run(measure(settings, args.calls, args.tasks))
    data, markdown, verdict = report(results, settings, args.calls, args.tasks)
    if args.tasks == list(DEADLINES_MS):
        write("deadlines", data, markdown)
        update_readme("deadlines", verdict)
    else:
        write("deadlines-" + "-".join(args.tasks), data, markdown)
    print(markdown)


if __name__ == "__main__":
    main()
