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
