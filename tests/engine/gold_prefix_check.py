"""Run in the Gold venv by test_gold_prefix_states.py (llama.cpp lives there): one
instance answers bark prompts with personas in turn through PrefixStates, another
evaluates each from scratch; prints what the test judges, as one JSON line."""

from __future__ import annotations

import json
import sys
from typing import Any

from llama_cpp import Llama

from services.gold.prefix_states import PrefixStates
from services.gold.server import openings
from services.gold.settings import GoldSettings, Personas
from tiermesh.config import load_section
from tiermesh.model import gguf_path


def answer(llm: Any, prompt: str) -> str:
    out = llm.create_completion(prompt, max_tokens=8, temperature=0.0)
    return str(out["choices"][0]["text"])


def main() -> None:
    prompts: list[str] = json.load(sys.stdin)
    model = str(gguf_path())
    kept, fresh = (Llama(model_path=model, n_ctx=512, n_threads=1, verbose=False) for _ in range(2))
    flags = set(sys.argv[2:])
    states = PrefixStates(capacity_bytes=int(sys.argv[1]))
    tokens = [kept.tokenize(p.encode("utf-8"), special=True) for p in prompts]
    report: dict[str, list[Any]] = {
        name: [] for name in ("reused", "held", "same_text", "kept", "shared_with_earlier")
    }
    warmed: list[list[int]] = []
    if "warm" in flags:  # as Gold starts: the configured personas' openings kept first
        texts = openings(load_section(GoldSettings, "gold"), load_section(Personas, "personas"))
        warmed = [kept.tokenize(text.encode("utf-8"), special=True) for text in texts]
        for opening in warmed:
            states.keep(kept, opening)
    for i, prompt in enumerate(prompts):
        earlier = (Llama.longest_token_prefix(t, tokens[i]) for t in [*warmed, *tokens[:i]])
        report["shared_with_earlier"].append(max(earlier, default=0))
        report["reused"].append(states.restore(kept, tokens[i]))
        # What llama-cpp-python will take as evaluated: the tokens the instance says it holds.
        report["held"].append(Llama.longest_token_prefix(kept.input_ids[: kept.n_tokens].tolist(), tokens[i]))
        text = answer(kept, prompt)
        states.save(kept)
        fresh.reset()  # nothing carried over: the reference
        report["same_text"].append(text == answer(fresh, prompt))
        report["kept"].append(len(states))
    if "refuse" in flags:  # a stored state llama.cpp refuses: dropped, and answered all the same
        key = max(states._states, key=lambda k: Llama.longest_token_prefix(k, tokens[0]))
        states._states[key] = b"\x00" * 16
        report["refused_reused"] = [states.restore(kept, tokens[0])]
        report["refused_same_text"] = [answer(kept, prompts[0]) == answer(fresh, prompts[0])]
    print(json.dumps(report))


if __name__ == "__main__":
    main()
