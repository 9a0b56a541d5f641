"""Gold's barks with personas interleaved on one llama.cpp instance: how prompt prefixes
are kept, side by side.

- `none`: llama-cpp-python reuses only what the instance last evaluated, so a persona
  after another pays for its whole prompt;
- `llama_ram_cache`: llama-cpp-python's own LlamaRAMCache (what Gold used before);
- `prefix_states`: services/gold/prefix_states.py, what Gold uses.

Each has an instance of its own (one thread, as the mesh runs it); the three take turns
call by call on the same prompts (the router's ChatML for a bark, three personas in turn,
every situation once), greedy, so their answers must be the same.

    python -m bench.gold_prefixes      # prepares the prompts, runs the engine side in
                                       # the Gold venv, writes bench/results/gold-prefixes.*
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import Any

from bench.report import median, table, write
from router.stats import nearest_rank

STRATEGIES = ("none", "llama_ram_cache", "prefix_states")
PERSONAS = ("guard-1", "merchant-1", "innkeeper-1")
WHO = ("A farmer", "A masked stranger", "The herald", "A child", "An orc", "A knight", "A thief", "A bard")
WHAT = ("draws a blade", "asks the way", "offers a bribe", "throws a stone", "sings loudly", "runs past")


def prompts(config: str | None) -> list[str]:
    """Every situation once; the personas take turns, as a scene's NPCs would."""
    from ops.settings import load_settings
    from router.validation import resolve
    from tiermesh.chat import chatml
    from tiermesh.v1 import mesh_pb2

    router_config = load_settings(config).router_config()
    out = []
    for i, (who, what) in enumerate((who, what) for who in WHO for what in WHAT):
        req = mesh_pb2.GenerateRequest(
            npc_id=PERSONAS[i % len(PERSONAS)],
            prompt=f"Shout something short: {who} {what}.",
            task=mesh_pb2.TASK_BARK,
        )
        out.append(chatml(resolve(req, router_config, 30.0).messages))
    return out


def engine(cases: list[str]) -> dict[str, Any]:
    """In the Gold venv: each strategy's instance answers every prompt, in turns."""
    from llama_cpp import Llama, LlamaRAMCache

    from services.gold.prefix_states import PrefixStates
    from services.gold.settings import GoldSettings
    from tiermesh.model import gguf_path

    gold = GoldSettings()
    capacity = gold.prefix_cache_mib << 20
    instances = {}
    for name in STRATEGIES:
        llm = Llama(model_path=str(gguf_path()), n_ctx=gold.n_ctx, n_threads=1, n_batch=256, verbose=False)
        llm.create_completion("Hello", max_tokens=2, temperature=0.0)
        if name == "llama_ram_cache":
            llm.set_cache(LlamaRAMCache(capacity_bytes=capacity))
        instances[name] = llm
    states = PrefixStates(capacity)
    ttft: dict[str, list[float]] = {name: [] for name in STRATEGIES}
    whole: dict[str, list[float]] = {name: [] for name in STRATEGIES}
    texts: dict[str, list[str]] = {name: [] for name in STRATEGIES}
    evaluated: list[int] = []
    for prompt in cases:
        for name, llm in instances.items():
            started = time.perf_counter()
            if name == "prefix_states":
                tokens = llm.tokenize(prompt.encode("utf-8"), special=True)
                evaluated.append(len(tokens) - states.restore(llm, tokens))
            first, text = 0.0, ""
            for chunk in llm.create_completion(prompt, max_tokens=16, temperature=0.0, stream=True):
                first = first or time.perf_counter() - started
                text += chunk["choices"][0]["text"]
            whole[name].append(time.perf_counter() - started)
            if name == "prefix_states":
                states.save(llm)  # after the answer, as Gold does
            ttft[name].append(first)
            texts[name].append(text)
    return {
        name: {
            "ttft_p50_ms": round(median(ttft[name]) * 1000, 1),
            "ttft_p95_ms": round(nearest_rank(sorted(ttft[name]), 0.95) * 1000, 1),
            "whole_p50_ms": round(median(whole[name]) * 1000, 1),
            "same_text_as_none": sum(a == b for a, b in zip(texts[name], texts["none"], strict=True)),
        }
        for name in STRATEGIES
    } | {"calls": len(cases), "prefix_states_evaluated_p50": median([float(n) for n in evaluated])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--engine", action="store_true", help="the Gold venv's side: prompts on stdin")
    parser.add_argument("--config", default=None)
    args = parser.parse_args()
    if args.engine:
        print(json.dumps(engine(json.load(sys.stdin))))
        return
    from ops.mesh import REPO  # not in the Gold venv, which runs the engine side

    cases = prompts(args.config)
    out = subprocess.run(
        [str(REPO / ".venv-gold/bin/python"), "-m", "bench.gold_prefixes", "--engine"],
        cwd=REPO, input=json.dumps(cases), capture_output=True, text=True, timeout=900, check=True,
    )  # fmt: skip
    results = json.loads(out.stdout.strip().splitlines()[-1])
    rows = [
        [
            name,
            r["ttft_p50_ms"],
            r["ttft_p95_ms"],
            r["whole_p50_ms"],
            f"{r['same_text_as_none']}/{results['calls']}",
        ]
        for name, r in ((name, results[name]) for name in STRATEGIES)
    ]
    markdown = (
        "# Gold: persona prefixes kept across interleaved barks (`python -m bench.gold_prefixes`)\n\n"
        f"{results['calls']} barks (16 tokens, greedy), three personas in turn, each situation once; "
        "one llama.cpp instance (1 thread) per strategy, the strategies taking turns call by call. "
        "Times in ms, measured in-process (no Triton, no router). With prefix_states, "
        f"{results['prefix_states_evaluated_p50']:.0f} prompt tokens evaluated per call (median).\n\n"
        + table(["strategy", "first token p50", "first token p95", "whole answer p50", "same text"], rows)
    )
    for path in write("gold-prefixes", results, markdown):
        print(path)
    print(markdown)


if __name__ == "__main__":
    main()
