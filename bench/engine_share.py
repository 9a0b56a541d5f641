"""What the engines' CPU use costs the router's loop on the local mesh, where they share
its two cores (ops/mesh.py starts them SCHED_IDLE, each in a session of its own).

Linux groups each session's processes (autogroup) and weighs a group as one against
another, whatever its processes' class: an engine's session at niceness 0 takes its even
share of the cores from the router's session. `tiermesh up` sets the engines' sessions
to 19. This benchmark keeps the engines busy (dialogue and bark callers through the
router, each a call at a time) and, in alternated windows, sets the engines' sessions to
niceness 0 or 19 while it measures:

- a probe: a process in a session of its own, as the router is, whose asyncio loop asks
  to wake every 2 ms; how late it wakes (what any of the router's timers and reads waits);
- the router itself: an intent answered from its exact cache, one every 5 ms (the
  router's own work, no tier).

    python -m bench.engine_share [--rounds 3] [--window-s 20]

It uses the running mesh, or starts one; it leaves the engines' sessions as it found them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc

from bench.report import median, table, update_readme, write
from bench.silver import mesh_running
from ops.mesh import LocalMesh, components
from ops.settings import Settings, load_settings
from router.stats import nearest_rank
from tiermesh.config import config_path
from tiermesh.v1 import mesh_pb2, mesh_pb2_grpc

NICENESS = (0, 19)
LATE_MS = 8.0
DIALOGUE_CALLERS, BARK_CALLERS = 4, 2
LOAD_PERIOD_S = 0.5
# The probe: a loop that sleeps 2 ms at a time for `seconds`, then prints how late each
# wake-up was (ms), as JSON.
PROBE = """
import asyncio, json, sys, time
async def main(seconds):
    late, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        start = time.monotonic()
        await asyncio.sleep(0.002)
        late.append((time.monotonic() - start - 0.002) * 1e3)
    print(json.dumps(late))
asyncio.run(main(float(sys.argv[1])))
"""
PERSONA_NPC = "guard-1"
HIT = "A farmer asks the way at the gate."


def engine_sessions(settings: Settings, config: str | None) -> list[Path]:
    """The /proc autogroup files of the mesh's running engines (one per session)."""
    mesh = LocalMesh(settings, config_path(config))
    engines = {c.name for c in components(settings, mesh.config_file) if c.engine}
    return [Path(f"/proc/{pid}/autogroup") for name, pid in mesh.running().items() if name in engines]


@contextlib.contextmanager
def kept(files: list[Path]) -> Iterator[None]:
    """Whatever the windows set, the sessions' niceness as it was, after."""
    before = {f: f.read_text().split()[-1] for f in files}
    try:
        yield
    finally:
        for f, nice in before.items():
            with contextlib.suppress(OSError):
                f.write_text(nice)


async def load(
    stub: mesh_pb2_grpc.MeshAsyncStub, task: mesh_pb2.Task.ValueType, stop: asyncio.Event
) -> Counter[str]:
    """One caller until `stop`, a call at a time and at most one every `LOAD_PERIOD_S`
    (a canned answer comes in a millisecond: the caller must not spin on the router);
    which tier answered each (its first message's; "failed" for none). Each prompt is new,
    so no cache answers."""
    answered: Counter[str] = Counter()
    for i in itertools.count():
        if stop.is_set():
            return answered
        started = time.monotonic()
        prompt = f"Traveller {i} asks about the road north and the old war."
        request = mesh_pb2.GenerateRequest(npc_id=PERSONA_NPC, prompt=prompt, task=task, bypass_cache=True)
        tier = "failed"
        with contextlib.suppress(grpc.aio.AioRpcError):
            async for response in stub.Generate(request, timeout=2.0):
                if tier == "failed":
                    tier = mesh_pb2.Tier.Name(response.tier)
        answered[tier] += 1
        await asyncio.sleep(max(0.0, started + LOAD_PERIOD_S - time.monotonic()))
    return answered


async def cache_hits(stub: mesh_pb2_grpc.MeshAsyncStub, seconds: float) -> list[float]:
    """An intent from the router's exact cache every 5 ms for `seconds`; each one's ms."""
    request = mesh_pb2.GenerateRequest(npc_id=PERSONA_NPC, prompt=HIT, task=mesh_pb2.TASK_INTENT)
    took: list[float] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        start = time.perf_counter()
        async for _ in stub.Generate(request, timeout=1.0):
            pass
        took.append((time.perf_counter() - start) * 1e3)
        await asyncio.sleep(0.005)
    return took


async def window(stub: mesh_pb2_grpc.MeshAsyncStub, seconds: float) -> tuple[list[float], list[float]]:
    probe = await asyncio.create_subprocess_exec(
        sys.executable, "-c", PROBE, str(seconds), stdout=subprocess.PIPE, start_new_session=True
    )
    hits = await cache_hits(stub, seconds)
    out, _ = await probe.communicate()
    return json.loads(out), hits


async def measure(
    settings: Settings, sessions: list[Path], rounds: int, seconds: float
) -> tuple[dict[int, Any], Counter[str]]:
    """Per niceness, the probe's lags and the cache hits' times (ms); the load's calls by
    the tier that answered."""
    lags: dict[int, list[float]] = {n: [] for n in NICENESS}
    hits: dict[int, list[float]] = {n: [] for n in NICENESS}
    async with grpc.aio.insecure_channel(settings.router.listen) as channel:
        stub = mesh_pb2_grpc.MeshStub(channel)
        async for _ in stub.Generate(
            mesh_pb2.GenerateRequest(npc_id=PERSONA_NPC, prompt=HIT, task=mesh_pb2.TASK_INTENT), timeout=5.0
        ):
            pass  # the cache holds it from here on
        stop = asyncio.Event()
        callers = [
            asyncio.create_task(load(stub, mesh_pb2.TASK_DIALOGUE, stop)) for _ in range(DIALOGUE_CALLERS)
        ]
        callers += [asyncio.create_task(load(stub, mesh_pb2.TASK_BARK, stop)) for _ in range(BARK_CALLERS)]
        await asyncio.sleep(5.0)  # the engines busy before the first window
        for r in range(rounds):
            for nice in NICENESS if r % 2 == 0 else NICENESS[::-1]:
                for f in sessions:
                    f.write_text(str(nice))
                late, took = await window(stub, seconds)
                lags[nice] += late
                hits[nice] += took
                print(f"round {r + 1}, engines' sessions at {nice}: {summary(late, took)}", flush=True)
        stop.set()
        calls = sum(await asyncio.gather(*callers), Counter[str]())
    return {n: {"lag_ms": lags[n], "hit_ms": hits[n]} for n in NICENESS}, calls


def stats(late: list[float], took: list[float]) -> dict[str, float]:
    return {
        "lag_p50_ms": median(late),
        "lag_p99_ms": nearest_rank(sorted(late), 0.99),
        "lag_max_ms": max(late),
        "lags_over_8ms": sum(x > LATE_MS for x in late),
        "wakeups": len(late),
        "hit_p50_ms": median(took),
        "hit_p99_ms": nearest_rank(sorted(took), 0.99),
        "hit_max_ms": max(took),
        "hits": len(took),
    }


def summary(late: list[float], took: list[float]) -> str:
    s = stats(late, took)
    return (
        f"probe late p99 {s['lag_p99_ms']:.2f} ms, {s['lags_over_8ms']} over {LATE_MS:g} ms; "
        f"cache hit p50 {s['hit_p50_ms']:.2f} p99 {s['hit_p99_ms']:.2f} ms"
    )


def report(
    results: dict[int, Any], calls: Counter[str], rounds: int, seconds: float
) -> tuple[dict[str, Any], str]:
    rows, data = [], {}
    for nice in NICENESS:
        s = stats(results[nice]["lag_ms"], results[nice]["hit_ms"])
        data[str(nice)] = s
        rows.append([
            nice, f"{s['lag_p50_ms']:.2f}", f"{s['lag_p99_ms']:.2f}", f"{s['lag_max_ms']:.1f}",
            f"{s['lags_over_8ms']} / {s['wakeups']}", f"{s['hit_p50_ms']:.2f}", f"{s['hit_p99_ms']:.2f}",
            f"{s['hit_max_ms']:.1f}", s["hits"],
        ])  # fmt: skip
    headers = (
        "engines' sessions' niceness", "probe late p50 ms", "p99 ms", "max ms",
        f"wake-ups > {LATE_MS:g} ms late", "router cache hit p50 ms", "p99 ms", "max ms", "hits",
    )  # fmt: skip
    command = "python -m bench.engine_share" + (
        "" if (rounds, seconds) == (3, 20.0) else f" --rounds {rounds} --window-s {seconds:g}"
    )
    markdown = (
        "# The engines' share of the router's cores (local mesh)\n\n"
        f"`{command}` on the local mesh, the engines kept busy by {DIALOGUE_CALLERS} dialogue and "
        f"{BARK_CALLERS} bark callers through the router (2 s deadline, a call at a time, at most "
        f"one every {LOAD_PERIOD_S:g} s each); in "
        f"alternated windows of {seconds:g} s ({rounds} each) the engines' sessions (autogroups) "
        "at niceness 0 or 19, the engines themselves SCHED_IDLE throughout. Probe: an asyncio "
        "loop in a session of its own, as the router is, waking every 2 ms; how late. Router: "
        "an intent from its exact cache every 5 ms, from a client.\n\n"
        + table(headers, rows)
        + "\n\nThe load's calls in the run, by the tier that answered: "
        + ", ".join(f"{tier} {n}" for tier, n in sorted(calls.items()))
        + ".\n"
    )
    return {"command": command, "load_calls": dict(calls), "by_niceness": data}, markdown


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--window-s", type=float, default=20.0)
    parser.add_argument("--config", default=None)
    args = parser.parse_args()
    settings = load_settings(args.config)
    with mesh_running(settings, args.config):
        sessions = engine_sessions(settings, args.config)
        if not sessions or not all(f.exists() for f in sessions):
            raise SystemExit("no engine sessions to set: Linux without autogroup, or no engines running")
        with kept(sessions):
            results, calls = asyncio.run(measure(settings, sessions, args.rounds, args.window_s))
    data, markdown = report(results, calls, args.rounds, args.window_s)
    write("engine-share", data, markdown)
    update_readme("engine-share", markdown)
    print(markdown)


if __name__ == "__main__":
    main()
