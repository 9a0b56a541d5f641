"""Intent selection on llama.cpp: trie walk vs GBNF grammar, side by side.

Runs in the Gold venv (it loads llama.cpp in-process, no server):

    .venv-gold/bin/python -m bench.gold_intents [--rounds 3]

Both methods see the same prompts in alternation on one instance; each prompt is a
persona + a varied situation (so the persona prefix is cached, the situation is not).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from bench.report import median
from services.gold.engine import LlamaPool, choose_by_trie
from services.gold.settings import GoldSettings
from tiermesh.chat import Message, chatml

PERSONA = "You are Brom, a gruff town guard. Answer with one intent."
INTENTS = ["GREET", "WARN", "ATTACK", "IGNORE", "FLEE"]
SITUATIONS = [
    f"{who} {what}."
    for who in ("A drunk farmer", "A masked stranger", "The herald", "A child", "An orc")
    for what in ("draws a blade", "asks for directions", "offers a bribe", "throws a stone")
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    pool = LlamaPool(GoldSettings(instances=1, threads=2))
    pool.load()
    worker = pool._free.get_nowait()  # one instance, used from this thread only
    llm = worker.llm
    times: dict[str, list[float]] = {"trie": [], "grammar": []}
    answers: dict[str, list[str]] = {"trie": [], "grammar": []}
    for _ in range(args.rounds):
        for situation in SITUATIONS:
            prompt = chatml([Message("system", PERSONA), Message("user", situation)])
            for method in ("trie", "grammar"):
                started = time.perf_counter()
                label = (
                    choose_by_trie(llm, prompt, INTENTS) or ""  # None only with a give-up time
                    if method == "trie"
                    else pool._by_grammar(llm, prompt, INTENTS)
                )
                times[method].append(time.perf_counter() - started)
                answers[method].append(label)
    result: dict[str, Any] = {
        method: {
            "p50_ms": round(median(t) * 1000, 1),
            "p95_ms": round(sorted(t)[int(0.95 * len(t))] * 1000, 1),
            "valid": all(a in INTENTS for a in answers[method]),
            "answers": {i: answers[method].count(i) for i in INTENTS},
        }
        for method, t in times.items()
    }
    result["ratio_grammar_over_trie_p50"] = round(result["grammar"]["p50_ms"] / result["trie"]["p50_ms"], 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
