"""The encoder's labelling over a scripted encoder: nearest guide wins, the reply is always
one of the call's labels, prototypes are built once, labels without guides still work."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from router.backends.intent_encoder import IntentLabeller, guide_texts, situation
from router.settings import IntentGuide, Persona
from tests.fakes import a_call
from tiermesh.v1 import mesh_pb2

# A scripted encoder: each text is a bag of the words it shares with these axes.
AXES = ["sword", "hello", "dragon", "gate"]


class BagEncoder:
    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    async def __call__(self, texts: Sequence[str]) -> np.ndarray[Any, np.dtype[np.float32]]:
        self.calls.append(list(texts))
        rows = [[float(text.lower().count(word)) + 0.01 for word in AXES] for text in texts]
        return np.asarray(rows, dtype=np.float32)


PERSONAS = {
    "guard-1": Persona(
        system="You guard the gate.",
        intents=["GREET", "ATTACK", "FLEE"],
        intent_guides={
            "GREET": IntentGuide(description="someone says hello", examples=["hello there"]),
            "ATTACK": IntentGuide(description="a sword fight", examples=["he draws a sword"]),
            "FLEE": IntentGuide(description="a dragon", examples=["a dragon lands"]),
        },
    )
}


def intent_call(prompt: str, intents: list[str] | None = None) -> Any:
    return a_call(mesh_pb2.TASK_INTENT, prompt=prompt, npc_id="guard-1", intents=intents or [])


async def test_the_nearest_guide_labels_the_situation() -> None:
    labeller, encode = IntentLabeller(PERSONAS), BagEncoder()
    for prompt, expected in [("A man swings his sword", "ATTACK"), ("Hello, guard!", "GREET"),
                             ("A dragon!", "FLEE")]:  # fmt: skip
        call = intent_call(prompt, intents=["GREET", "ATTACK", "FLEE"])
        label, score = await labeller.label(call, encode)
        assert label == expected
        assert 0.5 < score <= 1.0 + 1e-6


async def test_prototypes_are_encoded_once_per_persona_and_label_set() -> None:
    labeller, encode = IntentLabeller(PERSONAS), BagEncoder()
    calls = [intent_call(p, intents=["GREET", "ATTACK", "FLEE"]) for p in ("a", "b", "c")]
    await asyncio.gather(*(labeller.label(c, encode) for c in calls))
    guide_batches = [batch for batch in encode.calls if len(batch) > 1]
    assert len(guide_batches) == 1  # concurrent first calls share one build
    assert len(encode.calls) == 1 + 3  # the guides once, then each situation


async def test_warm_builds_every_persona_before_any_call() -> None:
    labeller, encode = IntentLabeller(PERSONAS), BagEncoder()
    await labeller.warm(encode)
    await labeller.label(intent_call("hello", intents=["GREET", "ATTACK", "FLEE"]), encode)
    assert [len(batch) for batch in encode.calls] == [6, 1]


async def test_labels_without_a_guide_stand_for_themselves() -> None:
    """A request's own label set (allowed as today) is described by the labels' names."""
    labeller, encode = IntentLabeller(PERSONAS), BagEncoder()
    call = intent_call("The dragon is at the gate", intents=["OPEN_GATE", "SAY_HELLO"])
    label, _ = await labeller.label(call, encode)
    assert label == "OPEN_GATE"
    assert guide_texts(None, "OPEN_GATE") == ["open gate"]


async def test_a_failed_build_is_retried_by_the_next_call() -> None:
    labeller, encode = IntentLabeller(PERSONAS), BagEncoder()

    async def broken(texts: Sequence[str]) -> np.ndarray[Any, np.dtype[np.float32]]:
        raise RuntimeError("encoder down")

    call = intent_call("hello", intents=["GREET", "ATTACK", "FLEE"])
    with pytest.raises(RuntimeError):
        await labeller.label(call, broken)
    assert (await labeller.label(call, encode))[0] == "GREET"


async def test_label_sets_from_requests_are_kept_bounded() -> None:
    labeller, encode = IntentLabeller(PERSONAS, kept=2), BagEncoder()
    await labeller.warm(encode)
    for i in range(5):
        await labeller.label(intent_call("hello", intents=[f"A{i}", f"B{i}"]), encode)
    await labeller.label(intent_call("hello", intents=["GREET", "ATTACK", "FLEE"]), encode)
    guide_batches = [batch for batch in encode.calls if len(batch) > 1]
    assert len(guide_batches) == 1 + 5  # the persona's set was never dropped
    await labeller.label(intent_call("hello", intents=["A0", "B0"]), encode)
    assert len([batch for batch in encode.calls if len(batch) > 1]) == 7  # A0 was: built again


async def test_a_caller_that_stops_waiting_does_not_stop_the_build() -> None:
    labeller, encode = IntentLabeller(PERSONAS), BagEncoder()
    started = asyncio.Event()

    async def slow(texts: Sequence[str]) -> np.ndarray[Any, np.dtype[np.float32]]:
        started.set()
        await asyncio.sleep(0.05)
        return await encode(texts)

    first = asyncio.create_task(labeller.prototypes("guard-1", ("GREET", "ATTACK", "FLEE"), slow))
    await started.wait()
    first.cancel()
    prototypes = await labeller.prototypes("guard-1", ("GREET", "ATTACK", "FLEE"), slow)
    assert prototypes.shape == (3, len(AXES))
    assert len(encode.calls) == 1  # one build served both


def test_the_situation_is_the_last_user_line() -> None:
    call = intent_call("An orc charges.")
    assert situation(call) == "An orc charges."


def test_guides_must_name_the_personas_intents() -> None:
    with pytest.raises(ValueError, match="not among the intents"):
        Persona(system="x", intents=["GREET"], intent_guides={"WAVE": IntentGuide(description="waves")})
