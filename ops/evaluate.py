"""`tiermesh eval intents`: how often the mesh's intents match what a designer expects.

The labelled set is eval/intents.yaml: situations per persona, each with its expected
label and its split. `dev` may guide the personas' intent guides and tunes Gold's encoder;
`val` chooses between methods and settings; `held_out` is only ever scored. Every call
goes through the router as a game's would (cache bypassed), one at a time, so the latency
is one caller's.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import grpc
import yaml

from router.stats import nearest_rank
from tiermesh.v1 import mesh_pb2

if TYPE_CHECKING:
    from tiermesh.v1.mesh_pb2_grpc import MeshAsyncStub

EVAL_SET = Path("eval/intents.yaml")
Split = Literal["dev", "val", "held_out", "all"]


@dataclass(frozen=True)
class Situation:
    npc: str
    text: str
    label: str
    split: str


@dataclass(frozen=True)
class Answer:
    situation: Situation
    label: str  # what came back ("" on an error: the status code's name is in `error`)
    tier: str
    score: float | None
    seconds: float
    error: str = ""


def load_set(path: Path = EVAL_SET, split: Split = "all") -> list[Situation]:
    items = yaml.safe_load(path.read_text())["situations"]
    situations = [Situation(i["npc"], i["text"], i["label"], i["split"]) for i in items]
    return [s for s in situations if split == "all" or s.split == split]


Ask = Callable[[Situation], Awaitable[Answer]]


def router_asker(stub: MeshAsyncStub, deadline_s: float) -> Ask:
    async def ask(situation: Situation) -> Answer:
        request = mesh_pb2.GenerateRequest(
            npc_id=situation.npc, prompt=situation.text, task=mesh_pb2.TASK_INTENT, bypass_cache=True
        )
        started = time.perf_counter()
        try:
            replies = [r async for r in stub.Generate(request, timeout=deadline_s)]
        except grpc.aio.AioRpcError as e:
            return Answer(situation, "", "", None, time.perf_counter() - started, e.code().name)
        took = time.perf_counter() - started
        last = replies[-1]
        return Answer(
            situation,
            "".join(r.text for r in replies).strip(),
            mesh_pb2.Tier.Name(last.tier),
            last.score if last.HasField("score") else None,
            took,
        )

    return ask


async def run(ask: Ask, situations: Sequence[Situation]) -> list[Answer]:
    return [await ask(s) for s in situations]  # one caller: latency without queueing


def quantile(values: Sequence[float], q: float) -> float:
    return nearest_rank(sorted(values), q) if values else 0.0


@dataclass
class Report:
    answers: list[Answer]
    by_split: dict[str, tuple[int, int]] = field(default_factory=dict)  # split: (right, all)

    def __post_init__(self) -> None:
        for split in sorted({a.situation.split for a in self.answers}):
            chosen = [a for a in self.answers if a.situation.split == split]
            self.by_split[split] = (sum(a.label == a.situation.label for a in chosen), len(chosen))

    @property
    def accuracy(self) -> float:
        return sum(a.label == a.situation.label for a in self.answers) / max(1, len(self.answers))

    def recall(self) -> dict[str, tuple[int, int]]:
        """Per expected label: (answered right, expected)."""
        counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for a in self.answers:
            counts[a.situation.label][1] += 1
            counts[a.situation.label][0] += a.label == a.situation.label
        return {label: (right, total) for label, (right, total) in sorted(counts.items())}

    def confusion(self) -> dict[str, dict[str, int]]:
        """expected → answered → count (answered "" is an error)."""
        table: dict[str, Counter[str]] = defaultdict(Counter)
        for a in self.answers:
            table[a.situation.label][a.label or a.error] += 1
        return {label: dict(row) for label, row in sorted(table.items())}

    def as_dict(self) -> dict[str, Any]:
        seconds = [a.seconds for a in self.answers]
        return {
            "situations": len(self.answers),
            "accuracy": round(self.accuracy, 4),
            "by_split": {
                s: {"right": r, "of": n, "accuracy": round(r / max(1, n), 4)}
                for s, (r, n) in self.by_split.items()
            },
            "recall": {label: round(r / max(1, n), 4) for label, (r, n) in self.recall().items()},
            "confusion": self.confusion(),
            "tiers": dict(Counter(a.tier or a.error for a in self.answers)),
            "latency_ms": {
                "p50": round(quantile(seconds, 0.5) * 1000, 1),
                "p95": round(quantile(seconds, 0.95) * 1000, 1),
            },
            "wrong": [
                {
                    "npc": a.situation.npc,
                    "text": a.situation.text,
                    "expected": a.situation.label,
                    "answered": a.label or a.error,
                    "score": a.score,
                    "split": a.situation.split,
                }
                for a in self.answers
                if a.label != a.situation.label
            ],
        }

    def lines(self) -> list[str]:
        d = self.as_dict()
        out = [f"{d['situations']} situations: accuracy {d['accuracy']:.1%}"]
        out += [f"  {s}: {v['right']}/{v['of']} ({v['accuracy']:.1%})" for s, v in d["by_split"].items()]
        out.append(
            f"latency through the router, one caller: p50 {d['latency_ms']['p50']} ms, "
            f"p95 {d['latency_ms']['p95']} ms; answered by {d['tiers']}"
        )
        out.append("recall per label:")
        out += [f"  {label:<12} {r:.0%}" for label, r in d["recall"].items()]
        labels = sorted({x for row in d["confusion"].values() for x in row} | set(d["confusion"]))
        out.append("confusion (rows expected, columns answered):")
        out.append("  " + " " * 12 + " ".join(f"{x[:6]:>6}" for x in labels))
        for expected, row in d["confusion"].items():
            out.append(f"  {expected:<12}" + " ".join(f"{row.get(x, 0) or '.':>6}" for x in labels))
        return out
