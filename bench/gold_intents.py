"""Intent selection on llama.cpp: trie walk vs GBNF grammar, side by side, scored.

Runs in the Gold venv (it loads llama.cpp in-process, no server), reading on stdin the
cases bench/gold.py prepares: [{"prompt": ChatML text as the router sends it, "labels":
[...], "expected": label}, ...]:

    .venv-gold/bin/python -m bench.gold_intents < cases.json

Both methods see the same prompts in alternation on one instance, so the persona prefix
is cached and the situation is not. Prints one JSON line: per method, latency and accuracy.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from bench.report import median
from router.stats import nearest_rank
from services.gold.engine import LlamaPool, choose_by_trie
from services.gold.settings import GoldSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.parse_args()
    cases = json.load(sys.stdin)
    pool = LlamaPool(GoldSettings(instances=1, threads=2))
    pool.load()
    worker = pool._free.get_nowait()  # one instance, used from this thread only
    times: dict[str, list[float]] = {"trie": [], "grammar": []}
    right: dict[str, int] = {"trie": 0, "grammar": 0}
    for case in cases:
        for method in ("trie", "grammar"):
            started = time.perf_counter()
            label = (
                choose_by_trie(worker.llm, case["prompt"], case["labels"], worker.prefixes) or ""
                if method == "trie"  # None only with a give-up time
                else pool._by_grammar(worker, case["prompt"], case["labels"])
            )
            times[method].append(time.perf_counter() - started)
            right[method] += label == case["expected"]
    result: dict[str, Any] = {
        method: {
            "p50_ms": round(median(t) * 1000, 1),
            "p95_ms": round(nearest_rank(sorted(t), 0.95) * 1000, 1),
            "accuracy": round(right[method] / len(cases), 4),
            "n": len(cases),
        }
        for method, t in times.items()
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
