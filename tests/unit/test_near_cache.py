"""The intent cache's near-duplicate stage, with the encoder's real distilled table
(`make model` builds it before the tests): near-duplicates hit, near-misses do not, and the
index follows the exact cache's evictions and expiry."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from prometheus_client import REGISTRY

from ops.settings import load_settings
from router.call import Call
from router.near_index import NearIndex
from router.policies.cache import IntentCache, NearMatch, normalize
from tests.fakes import FakeBackend, FakeClock, Step, a_call, drain
from tiermesh.static_embedding import StaticEmbedder
from tiermesh.v1 import mesh_pb2

REPO = Path(__file__).resolve().parents[2]
MESH = load_settings(REPO / "config/mesh.yaml").router.intent_cache
THRESHOLD = MESH.near_threshold


@pytest.fixture(scope="module")
def embedder() -> StaticEmbedder:
    return StaticEmbedder(REPO / MESH.near_model)


def intent_call(prompt: str, **kw: object) -> Call:
    call = a_call(mesh_pb2.TASK_INTENT, prompt=prompt, intents=["ATTACK", "FLEE"])
    return dataclasses.replace(call, **kw)  # type: ignore[arg-type]


def near_hits() -> float:
    labels = {"cache": "intent", "result": "near_hit"}
    return REGISTRY.get_sample_value("tiermesh_router_cache_requests_total", labels) or 0.0


FAR = "A lone merchant's cart rolls along the forest road, 40 m ahead."
NEARER = "A lone merchant's cart rolls along the forest road, 25 m ahead."
NEAREST = "A lone merchant's cart rolls along the forest road, 30 m ahead."
FINE = "A traveller offers to sell you a fine sword."
STOLEN = "A traveller offers to sell you a stolen sword."


async def test_a_near_duplicate_takes_the_answered_label(embedder: StaticEmbedder) -> None:
    gold = FakeBackend(Step(tokens=["ATTACK"]), tier=mesh_pb2.TIER_GOLD)
    cache = IntentCache(gold, 10, 60, near=NearMatch(embedder, THRESHOLD, 16))
    before = near_hits()
    await drain(cache.generate(intent_call(FAR)))
    again = await drain(cache.generate(intent_call(NEARER)))
    assert [(r.text, r.tier) for r in again] == [("ATTACK", mesh_pb2.TIER_CACHE)]
    assert len(gold.calls) == 1
    assert near_hits() == before + 1


async def test_a_near_miss_and_other_labels_go_to_the_tier(embedder: StaticEmbedder) -> None:
    gold = FakeBackend(Step(tokens=["ATTACK"]), tier=mesh_pb2.TIER_GOLD)
    cache = IntentCache(gold, 10, 60, near=NearMatch(embedder, THRESHOLD, 16))
    await drain(cache.generate(intent_call(FINE)))
    await drain(cache.generate(intent_call(STOLEN)))  # one word, another intent
    await drain(cache.generate(intent_call(FAR)))
    await drain(cache.generate(intent_call(NEARER, intents=("ATTACK", "FLEE", "WARN"))))
    await drain(cache.generate(intent_call(NEARER, bypass_cache=True)))
    assert len(gold.calls) == 5


async def test_the_near_index_forgets_what_the_cache_evicts_or_expires(embedder: StaticEmbedder) -> None:
    # Near enough to hit, so only the eviction and the expiry can stop it.
    assert similarity(embedder, FAR, NEARER) >= THRESHOLD
    assert similarity(embedder, NEARER, NEAREST) >= THRESHOLD
    clock = FakeClock()
    gold = FakeBackend(Step(tokens=["ATTACK"]), tier=mesh_pb2.TIER_GOLD)
    near = NearMatch(embedder, THRESHOLD, 16)
    cache = IntentCache(gold, max_entries=1, ttl_s=10, clock=clock, near=near)
    await drain(cache.generate(intent_call(FAR)))
    await drain(cache.generate(intent_call("A cat wanders past the gate.")))  # evicts FAR
    assert len(near.index) == 1
    await drain(cache.generate(intent_call(NEARER)))
    assert len(gold.calls) == 3
    clock.advance(11)
    await drain(cache.generate(intent_call(NEAREST)))
    assert len(gold.calls) == 4  # NEARER expired: neither its key nor its vector answers


def test_an_empty_situation_has_no_vector(embedder: StaticEmbedder) -> None:
    assert embedder.embed("") is None
    assert embedder.embed(" \t ") is None
    long = embedder.embed("guards " * 5000)  # read up to the encoder's window, not all of it
    assert long is not None
    assert abs(float(np.linalg.norm(long)) - 1) < 1e-4


# --- the default threshold, on the labelled pairs --------------------------------------


def similarity(embedder: StaticEmbedder, a: str, b: str) -> float:
    va, vb = embedder.embed(normalize(a)), embedder.embed(normalize(b))
    assert va is not None
    assert vb is not None
    return float(va @ vb)


PAIRS: list[dict[str, Any]] = yaml.safe_load((REPO / "eval/near_pairs.yaml").read_text())["pairs"]


def test_no_near_miss_pair_is_near_at_the_mesh_threshold(embedder: StaticEmbedder) -> None:
    different = [p for p in PAIRS if p["kind"] == "different"]
    near = [p["b"] for p in different if similarity(embedder, p["a"], p["b"]) >= THRESHOLD]
    assert near == []


def test_most_near_duplicates_are_near_at_the_mesh_threshold(embedder: StaticEmbedder) -> None:
    same = [p for p in PAIRS if p["kind"] == "same"]
    hits = sum(similarity(embedder, p["a"], p["b"]) >= THRESHOLD for p in same)
    # A regression guard, not the target: bench/results/gold.md gives the rate.
    assert hits >= len(same) // 3, f"{hits}/{len(same)}"


def test_no_two_differently_labelled_situations_are_near(embedder: StaticEmbedder) -> None:
    """Over every persona's labelled situations (eval/intents.yaml), all splits."""
    situations = yaml.safe_load((REPO / "eval/intents.yaml").read_text())["situations"]
    vectors = [embedder.embed(normalize(s["text"])) for s in situations]
    near = [
        (a["text"], b["text"])
        for (a, va), (b, vb) in itertools.combinations(zip(situations, vectors, strict=True), 2)
        if a["npc"] == b["npc"] and a["label"] != b["label"] and float(va @ vb) >= THRESHOLD  # type: ignore[operator]
    ]
    assert near == []


# --- the index alone -------------------------------------------------------------------


def unit(*values: float) -> np.ndarray[Any, np.dtype[np.float32]]:
    v = np.array(values, dtype=np.float32)
    return np.asarray(v / np.linalg.norm(v), dtype=np.float32)


def test_the_index_finds_the_nearest_in_its_group_only() -> None:
    index: NearIndex[str, str] = NearIndex(2, per_group=4)
    index.put("guard", "east", unit(1, 0))
    index.put("guard", "north", unit(0, 1))
    index.put("merchant", "northeast", unit(1, 1))
    found = index.nearest("guard", unit(1, 0.2))
    assert found is not None
    assert found[0] == "east"
    assert index.nearest("innkeeper", unit(1, 0)) is None


def test_the_index_is_bounded_oldest_first_and_stays_packed() -> None:
    index: NearIndex[str, str] = NearIndex(2, per_group=3)
    for i, key in enumerate(["a", "b", "c", "d"]):  # "a" goes when "d" comes
        index.put("g", key, unit(1, i))
    assert len(index) == 3
    index.remove("g", "b")  # the last row moves into b's slot
    index.put("g", "e", unit(-1, 0))
    index.put("g", "f", unit(0, -1))  # over the bound again: the oldest left is "c"
    keys = {index.nearest("g", v)[0] for v in (unit(1, 2), unit(1, 3), unit(-1, 0), unit(0, -1))}  # type: ignore[index]
    assert keys == {"d", "e", "f"}
    for key in ("d", "e", "f"):
        index.remove("g", key)
    assert len(index) == 0
    assert index.nearest("g", unit(1, 0)) is None
