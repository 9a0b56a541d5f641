"""Gold's kept prompt prefixes (services/gold/prefix_states.py) on a real llama.cpp
instance, in the Gold venv: personas in turn reuse their own system text, answers are
the same as from scratch, memory stays within its bound, and a state llama.cpp refuses
costs a full evaluation, not a wrong answer."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from bench.gold_prefixes import prompts

pytestmark = pytest.mark.engine

REPO = Path(__file__).resolve().parents[2]
GOLD_PYTHON = REPO / ".venv-gold/bin/python"
STATE_BYTES = 1_700_000  # about one bark's evaluated prompt and answer on the stand-in


def run(capacity_bytes: int, *flags: str) -> dict[str, Any]:
    out = subprocess.run(
        [str(GOLD_PYTHON), "tests/engine/gold_prefix_check.py", str(capacity_bytes), *flags],
        cwd=REPO, input=json.dumps(prompts(None)[:9]), capture_output=True, text=True,
        timeout=300, check=True, env={"PYTHONPATH": str(REPO)},
    )  # fmt: skip
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def test_personas_in_turn_reuse_their_own_system_text_and_answer_the_same() -> None:
    report = run(64 << 20, "refuse")
    assert all(report["same_text"])
    # The first prompt of each of the three personas shares only the ChatML opening; from
    # the fourth on, each reuses everything it shares with its persona's earlier prompt.
    assert report["reused"][3:] == report["shared_with_earlier"][3:]
    assert report["held"] == report["reused"]
    assert min(report["reused"][3:]) > 40
    assert report["refused_reused"] == [0]
    assert report["refused_same_text"] == [True]


def test_warmed_persona_openings_serve_each_personas_first_prompt() -> None:
    report = run(64 << 20, "warm")
    assert all(report["same_text"])
    # Without the warm-up the first three (one per persona) share only the ChatML
    # opening's few tokens; warmed, each reuses its persona's system text (~40 tokens).
    assert report["reused"][:3] == report["shared_with_earlier"][:3]
    assert min(report["reused"][:3]) > 30


def test_states_beyond_the_capacity_are_dropped() -> None:
    report = run(2 * STATE_BYTES)
    assert max(report["kept"]) <= 2
    assert all(report["same_text"])
