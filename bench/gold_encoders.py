"""Intent encoder variants side by side, in-process: time and embeddings.

Runs in the Gold venv (ONNX Runtime, no server), reading on stdin what bench/gold.py
prepares: {"variants": [{"name", "folder", "precision"}], "texts": [...], "timed": [...]}.
Each variant encodes every text (the router then scores them with its own labeller), and
times one situation at a time and batches of 16 on one thread, the variants alternating so
that the machine's drift falls on all of them alike. Prints one JSON line.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from bench.report import median
from services.gold.encoder import IntentEncoder

ROUNDS = 5
BATCH = 16


def main() -> None:
    job = json.load(sys.stdin)
    encoders = {v["name"]: IntentEncoder(v["folder"], 1, v["precision"]) for v in job["variants"]}
    out: dict[str, Any] = {}
    for name, encoder in encoders.items():
        out[name] = {"embeddings": encoder.encode(job["texts"]).round(5).tolist(), "one_s": [], "batch_s": []}
    timed: list[str] = job["timed"]
    for _ in range(ROUNDS):
        for name, encoder in encoders.items():
            for text in timed:
                started = time.perf_counter()
                encoder.encode([text])
                out[name]["one_s"].append(time.perf_counter() - started)
            for start in range(0, len(timed) - BATCH + 1, BATCH):
                started = time.perf_counter()
                encoder.encode(timed[start : start + BATCH])
                out[name]["batch_s"].append(time.perf_counter() - started)
    for result in out.values():
        result["one_ms_p50"] = round(median(result.pop("one_s")) * 1000, 2)
        result["batch16_ms_p50"] = round(median(result.pop("batch_s")) * 1000, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
