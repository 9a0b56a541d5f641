"""Gold's exported intent encoder (`make model`) under ONNX Runtime, as Gold serves it.
No mesh: the model file is what `make test-fast` does not build."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from services.gold.encoder import DIMENSIONS, IntentEncoder

FOLDER = Path(".models/intent-encoder")
pytestmark = pytest.mark.engine


@pytest.mark.parametrize(("precision", "threads"), [("int8", 1), ("fp32", 1), ("int8", 2)])
def test_a_situations_embedding_does_not_depend_on_its_batch(precision: str, threads: int) -> None:
    """Triton's dynamic batcher puts concurrent callers' situations in one batch; the int8
    graph's activation scales would otherwise be shared by the whole batch. With threads,
    rows still come back in their texts' order."""
    encoder = IntentEncoder(FOLDER, threads, precision)  # type: ignore[arg-type]
    situation = "An armed stranger charges at the gate, shouting."
    alone = encoder.encode([situation])
    batched = encoder.encode(["Hi!", situation, "A very long " + "and winding " * 40 + "story."])
    assert batched.shape == (3, DIMENSIONS)
    assert np.array_equal(alone[0], batched[1])
    assert np.allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-4)
    assert encoder.encode([]).shape == (0, DIMENSIONS)


def test_the_int8_graph_stays_close_to_the_fp32_graph_production_serves() -> None:
    """The CPU serves int8 weights and production the fp32 graph (TensorRT): for the local
    mesh's intents to be production's, quantising must not move the embeddings. With one
    scale per weight matrix the labelled situations sat at a mean cosine of 0.954 to fp32's,
    enough to change some intents; per output channel, 0.994 (docs/history.md)."""
    from ops.evaluate import load_set

    texts = [s.text for s in load_set(split="dev")]
    int8 = IntentEncoder(FOLDER, 1, "int8").encode(texts)
    fp32 = IntentEncoder(FOLDER, 1, "fp32").encode(texts)
    cosines = np.sum(int8 * fp32, axis=1)
    assert cosines.mean() >= 0.98, cosines.mean()
    assert cosines.min() >= 0.95, cosines.min()
