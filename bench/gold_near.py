"""The intent cache's near-duplicate stage, in-process: which labelled pairs are near at the
mesh's threshold, and what the stage adds to every intent miss (bench.gold reports it).

Pairs: eval/near_pairs.yaml (near-duplicates that should hit, near-misses that must not;
dev chose the threshold, held-out is only scored) and every two differently labelled
situations of one persona in eval/intents.yaml, which must never be near.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ops.evaluate import load_set
from router.near_index import NearIndex
from router.policies.cache import normalize
from router.settings import IntentCacheSettings
from tiermesh.static_embedding import StaticEmbedder

REPO = Path(__file__).resolve().parents[1]
NEAR_PAIRS = REPO / "eval/near_pairs.yaml"


def pairs() -> list[dict[str, str]]:
    return list(yaml.safe_load(NEAR_PAIRS.read_text())["pairs"])


def near_duplicates(embedder: StaticEmbedder, threshold: float) -> list[dict[str, str]]:
    """The near-duplicate pairs whose second situation is near its first: a near hit each."""
    return [p for p in pairs() if p["kind"] == "same" and similarity(embedder, p["a"], p["b"]) >= threshold]


def similarity(embedder: StaticEmbedder, a: str, b: str) -> float:
    va, vb = embedder.embed(normalize(a)), embedder.embed(normalize(b))
    return float(va @ vb) if va is not None and vb is not None else 0.0


def embedder_of(cache: IntentCacheSettings) -> StaticEmbedder:
    return StaticEmbedder(REPO / cache.near_model)


def quality(cache: IntentCacheSettings) -> dict[str, Any]:
    embedder = embedder_of(cache)
    threshold = cache.near_threshold
    results: dict[str, Any] = {"threshold": threshold}
    for split in ("dev", "held_out"):
        for kind in ("same", "different"):
            chosen = [p for p in pairs() if p["split"] == split and p["kind"] == kind]
            cosines = [similarity(embedder, p["a"], p["b"]) for p in chosen]
            results[f"{split}_{kind}"] = {
                "near": sum(c >= threshold for c in cosines),
                "pairs": len(chosen),
                "min": round(min(cosines), 3),
                "max": round(max(cosines), 3),
            }
    for name, splits in (("dev_val", ("dev", "val")), ("held_out", ("held_out",))):
        situations = [s for s in load_set() if s.split in splits]
        vectors = [embedder.embed(normalize(s.text)) for s in situations]
        cosines = [
            float(va @ vb)
            for (a, va), (b, vb) in itertools.combinations(zip(situations, vectors, strict=True), 2)
            if a.npc == b.npc and a.label != b.label and va is not None and vb is not None
        ]
        results[f"labelled_{name}"] = {
            "near": sum(c >= threshold for c in cosines),
            "pairs": len(cosines),
            "min": round(min(cosines), 3),
            "max": round(max(cosines), 3),
        }
    results["cost_us"] = stage_cost(embedder, [s.text for s in load_set()], cache.near_per_persona)
    return results


def stage_cost(embedder: StaticEmbedder, texts: list[str], per_persona: int) -> dict[str, float]:
    """What the stage adds to a miss: normalising and embedding the situation, then the
    lookup in a persona's full index (`near_per_persona` rows), one thread."""
    index: NearIndex[str, int] = NearIndex(embedder.dimensions, per_persona)
    rng = np.random.default_rng(0)
    for i in range(per_persona):
        row = rng.standard_normal(embedder.dimensions).astype(np.float32)
        index.put("persona", i, row / np.linalg.norm(row))
    embed, lookup = [], []
    for text in texts * 5:
        started = time.perf_counter()
        vector = embedder.embed(normalize(text))
        embedded = time.perf_counter()
        assert vector is not None
        index.nearest("persona", vector)
        embed.append(embedded - started)
        lookup.append(time.perf_counter() - embedded)
    return {
        "embed_p50": round(float(np.median(embed)) * 1e6, 1),
        "embed_p95": round(float(np.percentile(embed, 95)) * 1e6, 1),
        "lookup_p50": round(float(np.median(lookup)) * 1e6, 1),
        "lookup_p95": round(float(np.percentile(lookup, 95)) * 1e6, 1),
    }
