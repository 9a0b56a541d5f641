"""How long the local mesh takes to stop, and what it leaves behind (#28: under 5 s, no
process, port, shared-memory segment or traceback).

Each round starts the mesh from config/mesh.yaml, as `make run` does, brings it to one
state, and stops it the way Ctrl-C and `tiermesh down` do (ops.mesh.LocalMesh.down):

- idle: nothing called since start-up;
- after a burst: CALLERS callers asking intents, barks and dialogue lines in turn for
  BURST_S, the mesh stopped a second after the last answer;
- in a burst: stopped halfway through one, with calls in flight.

Recorded: each component's time from SIGTERM to exit (the mesh's stop is its slowest),
any component killed after `down`'s grace, and what was left (ops/stop_check.py). The
states are taken in turn within each round, so a slower machine moment is shared.

    python -m bench.stop [--rounds 2]

It refuses to run beside a mesh that is already up: it has to own the mesh it stops.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import time
from typing import Any

import grpc
import yaml

from bench.report import median, table, update_readme, write
from ops.mesh import LocalMesh, Stopped
from ops.settings import load_settings
from ops.stop_check import BeforeStop, before_stop, left_after, shared_memory
from tiermesh.config import config_path
from tiermesh.v1 import mesh_pb2, mesh_pb2_grpc

STATES = ("idle", "after a burst", "in a burst")
CALLERS, BURST_S, DEADLINE_S = 24, 10.0, 2.0
TARGET_S = 5.0
HEADERS = (
    "state", "mesh stop s (slowest)", "gold s", "silver s", "router s", "killed",
    "Triton's exit timeout passed / Gold removed its regions", "left behind",
    "calls in the burst",
)  # fmt: skip
CALLS = (
    (mesh_pb2.TASK_INTENT, "A stranger with a drawn sword runs at you", 4),
    (mesh_pb2.TASK_BARK, "The player walks past the gate", 16),
    (mesh_pb2.TASK_DIALOGUE, "Tell me about the old war", 16),
)


async def burst(router: str, seconds: float) -> dict[str, int]:
    """CALLERS closed-loop callers for `seconds`; how their calls ended. Each prompt is
    new (a counter), so the caches answer none of them."""
    ended: collections.Counter[str] = collections.Counter()
    numbers = itertools.count()
    until = time.monotonic() + seconds
    async with grpc.aio.insecure_channel(router) as channel:
        stub = mesh_pb2_grpc.MeshStub(channel)

        async def caller(offset: int) -> None:
            while time.monotonic() < until:
                n = next(numbers)
                task, prompt, max_tokens = CALLS[(offset + n) % len(CALLS)]
                request = mesh_pb2.GenerateRequest(
                    npc_id="guard-1", prompt=f"{prompt} ({n}).", task=task, max_tokens=max_tokens
                )
                try:
                    async for _ in stub.Generate(request, timeout=DEADLINE_S):
                        pass
                    ended["answered"] += 1
                except grpc.aio.AioRpcError as e:
                    ended[e.code().name] += 1
                    await asyncio.sleep(0.05)  # the mesh is stopping: no busy loop

        await asyncio.gather(*(caller(i) for i in range(CALLERS)))
    return dict(ended)


def one_stop(mesh: LocalMesh, config: dict[str, Any], state: str) -> dict[str, Any]:
    memory = shared_memory()
    mesh.up()
    router = mesh.settings.router.listen
    calls: dict[str, int] = {}

    async def stop_in_burst() -> tuple[BeforeStop, list[Stopped]]:
        running = asyncio.create_task(burst(router, BURST_S))
        await asyncio.sleep(BURST_S / 2)
        before = before_stop(mesh.run_dir / "logs", memory)
        stopped = await asyncio.to_thread(mesh.down)
        calls.update(await running)
        return before, stopped

    if state == "in a burst":
        before, stopped = asyncio.run(stop_in_burst())
    else:
        if state == "after a burst":
            calls = asyncio.run(burst(router, BURST_S))
            time.sleep(1.0)
        before = before_stop(mesh.run_dir / "logs", memory)
        stopped = mesh.down()
    time.sleep(0.5)  # what a component's exit lets go of, let go
    left = left_after(before, config)
    stopping = before.written_since(mesh.log_file("gold"))
    return {
        # Triton gave up waiting for its models to unload (its exit timeout), and Gold
        # removed the shared memory that left (services/gold/stopping.py).
        "triton_exit_timeout": b"Exit timeout expired" in stopping,
        "gold_removed_regions": b"regions Triton left behind" in stopping,
        "state": state,
        "seconds": {s.name: round(s.seconds, 2) for s in stopped},
        "killed": [s.name for s in stopped if s.killed],
        "left": left.problems(),
        "calls": calls,
    }


def yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def report(runs: list[dict[str, Any]], rounds: int) -> str:
    rows = []
    for run in runs:
        seconds = run["seconds"]
        slowest = max(seconds, key=seconds.get)
        rows.append(
            [
                run["state"],
                f"**{seconds[slowest]:.1f}** ({slowest})",
                seconds.get("gold", "—"),
                seconds.get("silver", "—"),
                seconds.get("router", "—"),
                ", ".join(run["killed"]) or "none",
                f"{yes_no(run['triton_exit_timeout'])} / {yes_no(run['gold_removed_regions'])}",
                "; ".join(run["left"]) or "nothing",
                ", ".join(f"{k} {v}" for k, v in sorted(run["calls"].items())) or "—",
            ]
        )
    by_state = {state: [max(r["seconds"].values()) for r in runs if r["state"] == state] for state in STATES}
    lines = [
        "# Stopping the local mesh",
        "",
        f"`python -m bench.stop --rounds {rounds}`: the whole local mesh (config/mesh.yaml) started,"
        " brought to a state, then stopped as Ctrl-C and `tiermesh down` stop it (SIGTERM to"
        " every component, router first; SIGKILL for what outlives 20 s). A burst is"
        f" {CALLERS} callers asking intents, barks and dialogue lines in turn, {DEADLINE_S:g} s"
        f" deadline, for {BURST_S:g} s; stopped a second after it, or halfway through it."
        " Seconds from SIGTERM to each component's exit; left behind: ports still bound,"
        " /dev/shm segments, tracebacks logged while stopping (ops/stop_check.py). When"
        " Triton's exit timeout (2 s) passes before its models have unloaded, their stubs"
        " are ended without removing their shared memory, and Gold removes it once Triton"
        " has exited (services/gold/stopping.py): both are shown.",
        "",
        table(HEADERS, rows),
        "",
        "Median of the mesh's stop by state (target under 5 s): "
        + ", ".join(
            f"{state} **{median(values):.1f} s** (max {max(values):.1f})"
            for state, values in by_state.items()
            if values
        )
        + ".",
    ]
    return "\n".join(lines)


def summary(runs: list[dict[str, Any]]) -> str:
    slowest = max(max(r["seconds"].values()) for r in runs)
    unclean = [r for r in runs if r["killed"] or r["left"]]
    return (
        f"- The mesh's stop, slowest of {len(runs)} (idle, after a burst, in a burst):"
        f" **{slowest:.1f} s** (target under {TARGET_S:g} s)"
        f" {'✔' if slowest < TARGET_S else '✘'}.\n"
        f"- Stops that killed a component or left anything behind: **{len(unclean)}** (target 0)."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    path = config_path()
    settings = load_settings(path)
    config = yaml.safe_load(path.read_text()) if path else {}
    mesh = LocalMesh(settings, path)
    if mesh.running():
        raise SystemExit("a mesh is up (`tiermesh down` first): this benchmark stops the mesh it starts")
    runs = []
    for round_ in range(args.rounds):
        for state in STATES:
            print(f"round {round_ + 1}: {state}…", flush=True)
            runs.append(one_stop(mesh, config, state))
            print(f"  {runs[-1]['seconds']} killed {runs[-1]['killed']} left {runs[-1]['left']}", flush=True)
    markdown = report(runs, args.rounds)
    write("stop", {"command": f"python -m bench.stop --rounds {args.rounds}", "runs": runs}, markdown)
    update_readme("stop", summary(runs))
    print(markdown)


if __name__ == "__main__":
    main()
