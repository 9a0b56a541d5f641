"""The `make run` demo: a short NPC conversation streamed through the router."""

from __future__ import annotations

import re
import time

from rich import box
from rich.console import Console
from rich.table import Table

from ops import client
from tiermesh.v1 import mesh_pb2, mesh_pb2_grpc

# Each turn with the deadline a game would set for it: an intent inside a few frames, a
# bark before the moment passes, a line of dialogue while the player reads it.
TURNS = [
    ("guard-1", "intent", "A stranger in a dark cloak draws a dagger at the gate.", 0.2),
    ("guard-1", "bark", "A thief runs past the gate with a stolen purse.", 0.5),
    (
        "guard-1",
        "dialogue",
        "Halt! Who goes there? ...Sorry, I didn't see you. What brings you here?",
        4.0,
    ),
    ("guard-1", "dialogue", "Have you seen anything strange near the north gate tonight?", 4.0),
    ("merchant-1", "dialogue", "What do you have for sale, and how much for a healing potion?", 4.0),
    (
        "innkeeper-1",
        "dialogue",
        "I need a room for the night and a hot meal. Any news from the road?",
        4.0,
    ),
]
MAX_TOKENS = {"intent": 0, "bark": 0, "dialogue": 96}  # 0: the task's default
# How each answer ended, in a word (the contract's finish reasons).
ENDED = {
    "FINISH_REASON_STOP": "done",
    "FINISH_REASON_LENGTH": "budget",
    "FINISH_REASON_DEADLINE": "deadline",
}
# Reading the finished job back through Generate: a result-cache hit.
JOB_READ_DEADLINE_S = 30.0
NUMERIC = ("deadline", "first", "last", "tokens")
# Answers that ended before they were done, and what ended them.
CUT = {"FINISH_REASON_LENGTH": "token budget", "FINISH_REASON_DEADLINE": "deadline"}
# Where a sentence ends: . ! ? (or an ellipsis), closing quotes, then a space or the end.
SENTENCE_END = re.compile(r"""[.!?…]+["'”’)]*(?=\s|$)""")


class Sentences:
    """Prints a streamed reply a whole sentence at a time, so a reply cut off by its token
    budget or its deadline ends at its last full sentence, not mid-word."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._pending = ""

    def __call__(self, text: str) -> None:
        self._pending += text
        ends = list(SENTENCE_END.finditer(self._pending))
        if ends:
            cut = ends[-1].end()
            self._console.print(self._pending[:cut], end="", soft_wrap=True, highlight=False)
            self._pending = self._pending[cut:]

    def finish(self, reason: str) -> None:
        """The rest: printed when the answer ended by itself; dropped (and said so) when
        its token budget or its deadline cut it mid-sentence (the router ends a shaped
        answer at a sentence end only where one came near the deadline)."""
        rest, self._pending = self._pending, ""
        if not rest.strip():
            return
        if reason in CUT:
            self._console.print(f" [dim](cut at the {CUT[reason]})[/]", end="")
        else:
            self._console.print(rest, end="", soft_wrap=True, highlight=False)


async def run_demo(
    address: str, console: Console | None = None, bronze_tiers: frozenset[str] = frozenset()
) -> list[client.Reply]:
    console = console or Console()
    # Narrow enough for 80 columns: the deadline and the first and last message's times
    # in ms, as the game saw them.
    table = Table(
        title="tiermesh demo: each turn as the game saw it (ms)", box=box.SIMPLE_HEAD, show_edge=False
    )
    columns = ("npc", "task", "deadline", "tier", "first", "last", "tokens", "ended")
    for column in columns:
        table.add_column(column, justify="right" if column in NUMERIC else "left", no_wrap=True)
    replies = []
    session = f"demo-{time.time_ns()}"  # a rerun against the same mesh starts afresh
    async with client.channel(address) as channel:
        stub = mesh_pb2_grpc.MeshStub(channel)
        for npc, task, line, deadline_s in TURNS:
            console.print(f"\n[bold cyan]player → {npc}:[/] {line}")
            console.print(f"[bold green]{npc}:[/] ", end="")
            request = mesh_pb2.GenerateRequest(
                npc_id=npc,
                session_id=session,
                prompt=line,
                task=client.TASKS[task],
                max_tokens=MAX_TOKENS[task],
            )
            sentences = Sentences(console)
            reply = await client.collect(stub, request, deadline_s=deadline_s, on_text=sentences)
            sentences.finish(reply.finish_reason)
            console.print()
            replies.append(reply)
            add_turn(table, npc, task, deadline_s, reply)
        if "bronze" in bronze_tiers:
            await prewarm_with_a_job(stub, console, table)
    console.print()
    console.print(table)
    return replies


def add_turn(table: Table, npc: str, task: str, deadline_s: float, reply: client.Reply) -> None:
    """One row of the timing table: the turn as the game saw it."""
    table.add_row(
        npc,
        task,
        f"{deadline_s * 1000:.0f}",
        reply.tier,
        f"{reply.ttft_s * 1000:.0f}",
        f"{reply.total_s * 1000:.0f}",
        str(reply.usage.completion_tokens),
        ENDED.get(reply.finish_reason, reply.finish_reason),
    )


async def prewarm_with_a_job(stub: mesh_pb2_grpc.MeshAsyncStub, console: Console, table: Table) -> None:
    """Bronze: a backstory written as a job, watched, then served by Generate from the cache."""
    request = mesh_pb2.GenerateRequest(
        npc_id="innkeeper-1",
        prompt="Write the backstory of the Crooked Lantern inn in three sentences.",
        task=mesh_pb2.TASK_LONGFORM,
        max_tokens=64,
    )
    console.print("\n[bold cyan]game → Bronze job:[/] pre-generate the inn's backstory")
    started = time.perf_counter()
    submitted = await stub.SubmitJob(mesh_pb2.SubmitJobRequest(request=request), timeout=30)
    async for update in stub.WatchJob(mesh_pb2.WatchJobRequest(job_id=submitted.job.job_id), timeout=300):
        state = mesh_pb2.JobState.Name(update.job.state).removeprefix("JOB_STATE_")
        console.print(f"  job {update.job.job_id[:8]}: {state} at {time.perf_counter() - started:.1f}s")
    console.print("[bold green]innkeeper-1 (job):[/] ", end="")
    sentences = Sentences(console)
    sentences(update.job.text.strip())
    cut = update.job.usage.completion_tokens >= request.max_tokens
    sentences.finish("FINISH_REASON_LENGTH" if cut else "FINISH_REASON_STOP")
    console.print()
    reply = await client.collect(stub, request, deadline_s=JOB_READ_DEADLINE_S)
    console.print(
        f"[bold green]Generate, same content:[/] served by {reply.tier} in {reply.ttft_s * 1000:.1f} ms"
    )
    add_turn(table, "innkeeper-1", "longform", JOB_READ_DEADLINE_S, reply)
