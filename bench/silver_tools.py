"""Silver's tools through the router, at the deadline a game gives dialogue: how soon the
tool is called, how soon the answer starts, and who answered.

Each round asks every NPC the same question with tool_choice none, auto and required in
turn, so the machine's drift falls on all three alike; medians per choice.

    python -m bench.silver_tools [--rounds 5] [--deadline 2.0] [--name silver-tools]
"""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import dataclass

import grpc

from bench.report import median, table, write
from bench.silver import mesh_running
from ops.client import stream
from ops.settings import Settings, load_settings
from tiermesh.v1 import mesh_pb2, mesh_pb2_grpc

NPCS = ("merchant-1", "innkeeper-1", "guard-1")
PROMPT = "What do you have for sale today?"
CHOICES = {
    "none": mesh_pb2.TOOL_CHOICE_NONE,
    "auto": mesh_pb2.TOOL_CHOICE_AUTO,
    "required": mesh_pb2.TOOL_CHOICE_REQUIRED,
}


@dataclass
class Sample:
    npc_id: str
    tool_s: float | None  # the tool call's event; None: no tool was called
    text_s: float | None  # the answer's first text
    unchosen: bool  # Silver said no tool could be chosen (in time)
    tier: str
    tool: str
    arguments: str


async def one(stub: mesh_pb2_grpc.MeshAsyncStub, npc_id: str, choice: int, deadline_s: float) -> Sample:
    request = mesh_pb2.GenerateRequest(
        npc_id=npc_id,
        prompt=PROMPT,
        task=mesh_pb2.TASK_DIALOGUE,
        max_tokens=16,
        bypass_cache=True,
        tool_choice=choice,  # type: ignore[arg-type]
        sampling=mesh_pb2.SamplingOptions(temperature=0.0),
    )
    tool_s = text_s = None
    tier, tool, arguments, unchosen = "", "", "", False
    try:
        async for response, now in stream(stub, request, deadline_s):
            if response.HasField("tool") and not response.tool.name:
                unchosen = True
            elif response.HasField("tool"):
                if tool_s is None:
                    tool_s, tool, arguments = now, response.tool.name, response.tool.arguments
            elif response.text and text_s is None:
                text_s, tier = now, mesh_pb2.Tier.Name(response.tier)
    except grpc.aio.AioRpcError as e:
        tier = e.code().name
    return Sample(npc_id, tool_s, text_s, unchosen, tier, tool, arguments)


async def measure(settings: Settings, rounds: int, deadline_s: float) -> dict[str, list[Sample]]:
    samples: dict[str, list[Sample]] = {name: [] for name in CHOICES}
    async with grpc.aio.insecure_channel(settings.router.listen) as channel:
        stub = mesh_pb2_grpc.MeshStub(channel)
        await one(stub, NPCS[0], mesh_pb2.TOOL_CHOICE_NONE, 60.0)  # warm the path
        for _ in range(rounds):
            for npc_id in NPCS:
                for name, choice in CHOICES.items():
                    samples[name].append(await one(stub, npc_id, choice, deadline_s))
    return samples


def ms(values: list[float | None]) -> str:
    seen = [v for v in values if v is not None]
    return f"{median(seen) * 1000:.0f}" if seen else "—"


def report(samples: dict[str, list[Sample]], rounds: int, deadline_s: float, name: str) -> str:
    rows = []
    for choice, runs in samples.items():
        tiers = sorted({s.tier for s in runs})
        answered = ", ".join(f"{t} {sum(s.tier == t for s in runs)}" for t in tiers)
        called = sum(s.tool_s is not None for s in runs)
        own = sum(s.tool_s is not None and s.npc_id in s.arguments for s in runs)
        unchosen = sum(s.unchosen for s in runs)
        rows.append(
            (choice, f"{called}/{len(runs)}", f"{own}/{called}" if called else "—", str(unchosen),
             ms([s.tool_s for s in runs]), ms([s.text_s for s in runs]), answered)
        )  # fmt: skip
    data = {
        "rounds": rounds,
        "deadline_s": deadline_s,
        "prompt": PROMPT,
        "samples": {c: [s.__dict__ for s in runs] for c, runs in samples.items()},
    }
    markdown = (
        f"# Silver's tools through the router\n\n`python -m bench.silver_tools --rounds {rounds} "
        f'--deadline {deadline_s}`: {", ".join(NPCS)} asked "{PROMPT}" at a {deadline_s} s deadline, '
        f"greedy, 16 tokens, cache bypassed; {rounds} rounds, the three choices in turn. Medians.\n\n"
        + table(
            (
                "tool_choice",
                "tool called",
                "about the call's NPC",
                "no tool chosen in time",
                "tool event ms",
                "first text ms",
                "answered by",
            ),
            rows,
        )
    )
    json_path, md_path = write(name, data, markdown)
    return f"{markdown}\n\nwritten: {json_path}, {md_path}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--deadline", type=float, default=2.0)
    parser.add_argument("--name", default="silver-tools", help="results file name")
    parser.add_argument("--config", default=None)
    args = parser.parse_args()
    settings = load_settings(args.config)
    with mesh_running(settings, args.config):
        samples = asyncio.run(measure(settings, args.rounds, args.deadline))
    print(report(samples, args.rounds, args.deadline, args.name))


if __name__ == "__main__":
    main()
