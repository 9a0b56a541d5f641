"""Gold's intents: accuracy and latency of every method, side by side, at 1 and 16
concurrent callers; exact and near-duplicate cache hits (and, in-process, which labelled
pairs the near-duplicate stage counts as near: bench/gold_near.py); bark tokens/s.

    python -m bench.gold [--calls 154]

Uses the local mesh (started here unless already up) and the held-out part of
eval/intents.yaml (never used to tune). Methods: the intent encoder through the router
(the shipped path), through a second router whose intents count against the LLM's stream
slots (no `max_streams_by_task`: what the per-task slots change), and direct (the router's
own Triton adapter in-process: no router hop, no policies); the LLM's guided decoding
direct (Gold's `intent_method`, trie); and, in the Gold venv on one llama.cpp instance, the
trie and grammar methods (bench/gold_intents.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np

from bench.gold_near import embedder_of, near_duplicates, quality
from bench.paths import running
from bench.report import median, table, update_readme, write
from bench.silver import mesh_running
from ops.evaluate import Situation, load_set
from ops.mesh import REPO
from ops.settings import Settings, load_settings
from router.backends.intent_encoder import IntentLabeller, guide_texts
from router.backends.triton import TritonTier
from router.stats import nearest_rank
from router.validation import resolve
from services.gold.encoder import ENCODER_FILE, INT8_FILE, TOKENIZER_FILE
from services.gold.encoder_export import quantize
from tiermesh.chat import chatml
from tiermesh.v1 import mesh_pb2, mesh_pb2_grpc

if TYPE_CHECKING:
    from tiermesh.v1.mesh_pb2_grpc import MeshAsyncStub

HELD_OUT = load_set(split="held_out")


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def at(q: float) -> float:
        return round(nearest_rank(ordered, q) * 1000, 1)

    return {
        "p50_ms": round(median(ordered) * 1000, 1),
        "p95_ms": at(0.95),
        "p99_ms": at(0.99),
        "n": len(ordered),
    }


async def timed_calls(call: Callable[[int], Awaitable[None]], calls: int, concurrency: int) -> list[float]:
    """`calls` calls spread over `concurrency` workers; each call's latency."""
    latencies: list[float] = []
    counter = iter(range(calls))

    async def worker() -> None:
        for i in counter:
            started = time.perf_counter()
            await call(i)
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


def offset(call: Callable[[int], Awaitable[None]], start: int) -> Callable[[int], Awaitable[None]]:
    return lambda i: call(start + i)


def intent_request(situation: Situation, bypass: bool) -> mesh_pb2.GenerateRequest:
    return mesh_pb2.GenerateRequest(
        npc_id=situation.npc, prompt=situation.text, task=mesh_pb2.TASK_INTENT, bypass_cache=bypass
    )


class Scored:
    """One intent path: its latencies, and which answers matched the set's labels."""

    def __init__(self, answer: Callable[[Situation], Awaitable[tuple[str, float | None]]]) -> None:
        self._answer = answer
        self.right = 0
        self.asked = 0
        self.scores: dict[bool, list[float]] = {True: [], False: []}

    async def __call__(self, i: int) -> None:
        situation = HELD_OUT[i % len(HELD_OUT)]
        label, score = await self._answer(situation)
        self.asked += 1
        self.right += label == situation.label
        if score is not None:
            self.scores[label == situation.label].append(score)

    def accuracy(self) -> float:
        return round(self.right / max(1, self.asked), 4)


class NearAsk:
    """Asks the near-duplicates in turn; counts the answers that came from the cache."""

    def __init__(self, router: MeshAsyncStub, near: list[dict[str, str]]) -> None:
        self._router = router
        self._near = near
        self.cached = 0
        self.asked = 0

    async def __call__(self, i: int) -> None:
        pair = self._near[i % len(self._near)]
        request = mesh_pb2.GenerateRequest(npc_id=pair["npc"], prompt=pair["b"], task=mesh_pb2.TASK_INTENT)
        tiers = {response.tier async for response in self._router.Generate(request, timeout=30)}
        self.asked += 1
        self.cached += tiers == {mesh_pb2.TIER_CACHE}


async def measure(settings: Settings, calls: int, shared_slots: str) -> dict[str, Any]:
    """`shared_slots`: a router like the mesh's but with intents in the LLM's stream slots
    (no max_streams_by_task), measured beside it."""
    config = settings.router_config()
    address = settings.router.tiers["gold"].endpoints[0]
    llm = TritonTier("gold", address, "ensemble")
    encoder = TritonTier(
        "gold", address, "ensemble", labeller=IntentLabeller(settings.personas), encoder="intent_encoder"
    )

    async def label_of(responses: Any) -> tuple[str, float | None]:
        last = None
        text = ""
        async for response in responses:
            text += response.text
            last = response
        score = last.score if last is not None and last.HasField("score") else None
        return text.strip(), score

    cache = settings.router.intent_cache
    near = near_duplicates(embedder_of(cache), cache.near_threshold) if cache.near_model else []
    results: dict[str, Any] = {}
    async with (
        grpc.aio.insecure_channel(settings.router.listen) as channel,
        grpc.aio.insecure_channel(shared_slots) as shared_channel,
    ):
        router = mesh_pb2_grpc.MeshStub(channel)
        shared_router = mesh_pb2_grpc.MeshStub(shared_channel)

        def via_router(
            bypass: bool, stub: mesh_pb2_grpc.MeshStub = router
        ) -> Callable[[Situation], Awaitable[tuple[str, float | None]]]:
            return lambda s: label_of(stub.Generate(intent_request(s, bypass), timeout=30))

        def direct(tier: TritonTier) -> Callable[[Situation], Awaitable[tuple[str, float | None]]]:
            return lambda s: label_of(tier.generate(resolve(intent_request(s, True), config, 30.0)))

        # Warm: connections, every persona's prototypes (as the router's health check does),
        # llama.cpp's prefix caches.
        await encoder.warm()
        for situation in HELD_OUT[:4]:
            for warm in (via_router(True), via_router(True, shared_router), direct(encoder), direct(llm)):
                await warm(situation)
        for concurrency in (1, 16):
            paths: dict[str, Scored] = {
                "router_encoder": Scored(via_router(True)),
                "router_encoder_shared_slots": Scored(via_router(True, shared_router)),
                "direct_encoder": Scored(direct(encoder)),
                "direct_llm_trie": Scored(direct(llm)),
            }
            latencies: dict[str, list[float]] = {name: [] for name in paths}
            # Interleave the paths in blocks so each sees the same machine state.
            for block in range(0, calls, 16):
                n = min(16, calls - block)
                for name, scored_path in paths.items():
                    latencies[name] += await timed_calls(offset(scored_path, block), n, min(concurrency, n))
            for situation in HELD_OUT:  # cached by now: asked once without bypass
                await via_router(False)(situation)
            hits = Scored(via_router(False))
            latencies["router_hit"] = await timed_calls(hits, calls, concurrency)
            # Near hits: each pair's first situation answered once, then its near-duplicate
            # asked (never stored itself, so every ask is a near hit, not an exact one).
            for pair in near:
                await via_router(False)(Situation(pair["npc"], pair["a"], "", "held_out"))
            near_ask = NearAsk(router, near)
            latencies["router_near_hit"] = await timed_calls(near_ask, calls, concurrency)
            results[f"near_answered_from_cache_c{concurrency}"] = [near_ask.cached, near_ask.asked]
            results[f"c{concurrency}"] = {
                name: {
                    **percentiles(latencies[name]),
                    **({"accuracy": paths[name].accuracy()} if name in paths else {}),
                }
                for name in latencies
            }
            if concurrency == 1:
                scored = paths["router_encoder"].scores
                results["encoder_scores"] = {
                    "right_p50": round(median(scored[True]), 3) if scored[True] else None,
                    "wrong_p50": round(median(scored[False]), 3) if scored[False] else None,
                    "right_p10": round(sorted(scored[True])[len(scored[True]) // 10], 3)
                    if scored[True]
                    else None,
                }
        # The whole held-out set once, one caller, for accuracy over every situation.
        for name, answer in (("router_encoder", via_router(True)), ("direct_llm_trie", direct(llm))):
            whole = Scored(answer)
            for i in range(len(HELD_OUT)):
                await whole(i)
            results[f"accuracy_{name}"] = whole.accuracy()
        bark = mesh_pb2.GenerateRequest(
            npc_id="guard-1", prompt="A thief runs past the gate.", task=mesh_pb2.TASK_BARK, max_tokens=16,
            sampling=mesh_pb2.SamplingOptions(temperature=0.0),
        )  # fmt: skip
        rates = []
        for _ in range(8):
            started = time.perf_counter()
            first = 0.0
            tokens = 0
            async for response in router.Generate(bark, timeout=30):
                first = first or time.perf_counter() - started
                tokens = response.usage.completion_tokens or tokens
            rates.append((tokens - 1) / (time.perf_counter() - started - first))
        results["bark_tokens_per_s"] = round(median(rates), 1)
    await llm.close()
    await encoder.close()
    return results


def intent_methods(settings: Settings) -> dict[str, Any]:
    """The LLM's trie and grammar methods in-process, on the held-out set's prompts as the
    router builds them."""
    config = settings.router_config()
    cases = []
    for situation in HELD_OUT:
        call = resolve(intent_request(situation, True), config, 30.0)
        cases.append(
            {"prompt": chatml(call.messages), "labels": list(call.intents), "expected": situation.label}
        )
    out = subprocess.run(
        [str(REPO / ".venv-gold/bin/python"), "-m", "bench.gold_intents"],
        cwd=REPO, input=json.dumps(cases), capture_output=True, text=True, timeout=900, check=True,
    )  # fmt: skip
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


ENCODER_VARIANTS = REPO / ".models/bench-encoders"


def encoder_variants(settings: Settings) -> dict[str, Any]:
    """Every encoder tried, in-process in the Gold venv: accuracy on the val and held-out
    splits (scored by the router's own labeller) and time, one thread. The served folder is
    the shipped one; the published and 6-layer tuned models are exported here."""
    exports = {"published": ["--untuned"], "tuned-6-layers": ["--layers", "6"]}
    for name, flags in exports.items():
        subprocess.run(
            [str(REPO / ".venv/bin/python"), "-m", "services.gold.encoder_export",
             "--out", str(ENCODER_VARIANTS / name), *flags],
            cwd=REPO, capture_output=True, check=True, timeout=900,
        )  # fmt: skip
    served = REPO / settings.gold.intent_encoder
    per_matrix = ENCODER_VARIANTS / "tuned-4-layers-per-matrix"
    per_matrix.mkdir(parents=True, exist_ok=True)
    for name in (ENCODER_FILE, TOKENIZER_FILE):
        shutil.copy(served / name, per_matrix / name)
    quantize(per_matrix / ENCODER_FILE, per_matrix / INT8_FILE, per_channel=False)
    # (name, folder, precision, the fp32 variant an int8 one was quantised from)
    variants = [
        ("published, 6 layers, fp32", str(ENCODER_VARIANTS / "published"), "fp32", None),
        ("tuned, 6 layers, fp32", str(ENCODER_VARIANTS / "tuned-6-layers"), "fp32", None),
        ("tuned, 6 layers, int8", str(ENCODER_VARIANTS / "tuned-6-layers"), "int8", "tuned, 6 layers, fp32"),
        ("tuned, 4 layers, fp32", str(served), "fp32", None),
        ("tuned, 4 layers, int8, one scale per matrix", str(per_matrix), "int8", "tuned, 4 layers, fp32"),
        ("tuned, 4 layers, int8", str(served), "int8", "tuned, 4 layers, fp32"),
    ]
    splits = {"val": load_set(split="val"), "held_out": HELD_OUT}
    guides = {
        text
        for persona in settings.personas.values()
        for label in persona.intents
        for text in guide_texts(persona, label)
    }
    texts = sorted(guides | {s.text for chosen in splits.values() for s in chosen})
    job = {
        "variants": [{"name": n, "folder": f, "precision": p} for n, f, p, _ in variants],
        "texts": texts,
        "timed": [s.text for s in HELD_OUT[:64]],
    }
    out = subprocess.run(
        [str(REPO / ".venv-gold/bin/python"), "-m", "bench.gold_encoders"],
        cwd=REPO, input=json.dumps(job), capture_output=True, text=True, timeout=900, check=True,
    )  # fmt: skip
    measured = json.loads(out.stdout.strip().splitlines()[-1])
    config = settings.router_config()
    results: dict[str, Any] = {}
    embeddings = {name: np.asarray(measured[name]["embeddings"], dtype=np.float32) for name, *_ in variants}
    for name, _, _, fp32 in variants:
        rows = dict(zip(texts, embeddings[name], strict=True))

        async def encode(chosen: Sequence[str]) -> np.ndarray[Any, np.dtype[np.float32]]:
            return np.stack([rows[text] for text in chosen])  # noqa: B023 (used at once)

        async def accuracy(situations: list[Situation]) -> float:
            labeller = IntentLabeller(settings.personas)
            right = 0
            for s in situations:
                label, _ = await labeller.label(resolve(intent_request(s, True), config, 30.0), encode)
                right += label == s.label
            return round(right / len(situations), 4)

        results[name] = {
            **{split: asyncio.run(accuracy(chosen)) for split, chosen in splits.items()},
            # How far quantising moved the embeddings (1 is not at all), over every text.
            "cosine_to_fp32": None
            if fp32 is None
            else round(float(np.mean(np.sum(embeddings[name] * embeddings[fp32], axis=1))), 4),
            "one_ms_p50": measured[name]["one_ms_p50"],
            "batch16_ms_p50": measured[name]["batch16_ms_p50"],
        }
    return results


SHARED_SLOTS_LISTEN = "127.0.0.1:50151"


def shared_slots_config(settings: Settings) -> dict[str, Any]:
    """The mesh's router settings, but Gold's intents count against the LLM's stream
    slots (max_streams), as before they had their own: the comparison for #23."""
    config = settings.model_dump(mode="json")
    config["router"] |= {"listen": SHARED_SLOTS_LISTEN, "metrics_port": 0}
    config["router"]["tiers"]["gold"]["max_streams_by_task"] = {}
    return config


PATHS = (
    ("router_encoder", "encoder, through the router"),
    ("router_encoder_shared_slots", "encoder, through a router with intents in the LLM's slots"),
    ("direct_encoder", "encoder, direct Triton"),
    ("direct_llm_trie", "LLM trie (guided decoding), direct Triton"),
    ("router_hit", "router, exact cache hit"),
    ("router_near_hit", "router, near-duplicate cache hit"),
)


def near_report(near: dict[str, Any], results: dict[str, Any]) -> str:
    names = {
        "dev_same": "dev near-duplicates (should be near)",
        "dev_different": "dev near-misses (must not be)",
        "held_out_same": "held-out near-duplicates (should be near)",
        "held_out_different": "held-out near-misses (must not be)",
        "labelled_dev_val": "two differently labelled situations of a persona, dev + val",
        "labelled_held_out": "two differently labelled situations of a persona, held-out",
    }
    rows = [
        (label, f"{n['near']}/{n['pairs']}", f"{n['min']}–{n['max']}")
        for key, label in names.items()
        for n in (near[key],)
    ]
    cost = near["cost_us"]
    answered = [results.get(f"near_answered_from_cache_c{c}", [0, 0]) for c in (1, 16)]
    return (
        "\nThe intent cache's near-duplicate stage (router/policies/cache.py): a situation that "
        "misses the exact cache takes the label of one already answered for its persona and labels "
        "when their cosine, in the encoder's distilled word-piece vectors (tiermesh/static_embedding.py), "
        f"is at least **{near['threshold']}** (chosen on the dev pairs of eval/near_pairs.yaml: above "
        "their closest near-miss; held-out only scored):\n\n"
        + table(("pairs", f"near at {near['threshold']}", "cosine min–max"), rows)
        + f"\n\nWhat the stage adds to every intent miss, in-process, one thread: the situation's "
        f"embedding p50 {cost['embed_p50']} µs (p95 {cost['embed_p95']}), the lookup in a persona's full "
        f"index p50 {cost['lookup_p50']} µs (p95 {cost['lookup_p95']}). In the near-hit rows above, "
        f"{answered[0][0]}/{answered[0][1]} and {answered[1][0]}/{answered[1][1]} calls were answered "
        "from the cache.\n"
    )


def report(
    results: dict[str, Any], methods: dict[str, Any], encoders: dict[str, Any], near: dict[str, Any] | None
) -> str:
    rows = []
    for level in ("c1", "c16"):
        for path, label in PATHS:
            p = results[level][path]
            accuracy = f"{p['accuracy']:.1%}" if "accuracy" in p else "—"
            rows.append(
                (level.replace("c", ""), label, p["p50_ms"], p["p95_ms"], p["p99_ms"], accuracy, p["n"])
            )
    method_rows = [
        (m, f"{methods[m]['accuracy']:.1%}", methods[m]["p50_ms"], methods[m]["p95_ms"], methods[m]["n"])
        for m in ("trie", "grammar")
    ]
    encoder_rows = [
        (
            name,
            f"{e['val']:.1%}",
            f"{e['held_out']:.1%}",
            "—" if e.get("cosine_to_fp32") is None else f"{e['cosine_to_fp32']:.3f}",
            e["one_ms_p50"],
            e["batch16_ms_p50"],
        )
        for name, e in encoders.items()
    ]
    scores = results["encoder_scores"]
    return (
        "# Gold: intents and barks (CPU stand-in)\n\n"
        "`python -m bench.gold` on the local mesh: Triton 2.51 (PyTriton) serving llama.cpp "
        "(SmolLM2-135M Q4_1, 2 instances × 1 thread) and the intent encoder (all-MiniLM-L6-v2 tuned "
        "to the intents, 4 layers, int8 weights per output channel, ONNX Runtime, the situations of a batch "
        f"{results['encoder_threads']} at a time on a thread each, dynamic batching), on 2 shared vCPUs. "
        "Situations: the held-out part of "
        f"eval/intents.yaml ({len(HELD_OUT)} situations, 5 personas, never used to tune), cache "
        "bypassed except for hits. Accuracy in the latency rows is over the calls of that row "
        "(situations taken in order, so the first calls' share).\n\n"
        + table(("callers", "path", "p50 ms", "p95 ms", "p99 ms", "accuracy", "calls"), rows)
        + f"\n\nWhole held-out set, one caller: encoder through the router "
        f"**{results['accuracy_router_encoder']:.1%}**, LLM trie {results['accuracy_direct_llm_trie']:.1%}. "
        f"Encoder scores (cosine): right answers p50 {scores['right_p50']}, p10 {scores['right_p10']}; "
        f"wrong answers p50 {scores['wrong_p50']}. Bark through the router: "
        f"{results['bark_tokens_per_s']} tokens/s.\n\n"
        "The LLM's methods on one llama.cpp instance (2 threads), in-process, same prompts as the "
        "router builds, alternated:\n\n"
        + table(("method", "accuracy", "p50 ms", "p95 ms", "situations"), method_rows)
        + "\n\nThe encoders tried, in-process (Gold's venv, ONNX Runtime, one thread), scored by the "
        "router's labeller; the mesh serves the last. Tuned: on the personas' guide examples and the "
        "dev split (services/gold/encoder_tune.py); val chose the settings; held-out was never used "
        "to choose. int8 weights have one scale per output channel unless the row says otherwise; "
        "cosine to fp32 is the mean over every text of an int8 embedding's cosine to its fp32 "
        "model's:\n\n"
        + table(
            ("encoder", "val", "held-out", "cosine to fp32", "one situation p50 ms", "batch of 16 p50 ms"),
            encoder_rows,
        )
        + "\n\nAn encoder miss is one ~20-token forward pass of a 4-layer MiniLM encoder plus a dot "
        "product in the router; an LLM miss evaluates the persona and situation (~60 tokens) on a "
        "135M-parameter model, which scores its labels by their first tokens and mostly picks GREET. "
        "With 16 callers, encoder calls that queue together share one Triton execution (the dynamic "
        "batcher), in which each situation runs its own forward pass, two at a time; LLM calls queue "
        "for one of two instances.\n" + (near_report(near, results) if near is not None else "")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    # Each held-out situation twice per path and level: at 16 callers that is ten blocks
    # of the paths in turn, so one slow stretch of the machine moves a p95 less than in 3.
    parser.add_argument("--calls", type=int, default=2 * len(HELD_OUT))
    parser.add_argument("--config", default=None)
    args = parser.parse_args()
    settings = load_settings(args.config)
    work = Path(tempfile.mkdtemp(prefix="tiermesh-gold-"))
    with mesh_running(settings, args.config), running(work) as processes:
        processes.router("router, intents in the LLM's slots", shared_slots_config(settings))
        results = asyncio.run(measure(settings, args.calls, SHARED_SLOTS_LISTEN))
    results["encoder_threads"] = settings.gold.encoder_threads
    methods = intent_methods(settings)
    encoders = encoder_variants(settings)
    cache = settings.router.intent_cache
    near = quality(cache) if cache.near_model else None
    markdown = report(results, methods, encoders, near)
    recorded = {"intents": results, "intent_methods": methods, "encoders": encoders, "near_cache": near}
    json_path, md_path = write("gold", recorded, markdown)
    update_readme("gold", markdown.split("\n", 2)[2])  # without the title
    print(f"{markdown}\nwritten: {json_path}, {md_path}")


if __name__ == "__main__":
    main()
