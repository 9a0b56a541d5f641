"""BENCHMARK DOUBLE: a TierService with the shape of an engine's capacity.

Each replica decodes at most `slots` streams at once; further requests wait in a
FIFO queue, as in vLLM's scheduler. Every stream takes `ttft_ms` to its first token
and `token_ms` per further token. Its usage counts the prompt as the router estimates
it (a token per 4 characters), as an engine counts the prompt with its tokenizer: the
router charges a tenant what a tier says it used. It measures the router's policies
under overload; it is not a model and stands in for none in the product.

    python -m bench.synthetic_tier --listen 127.0.0.1:7001 --slots 4 --tokens 12
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator

import grpc

from router.call import estimate_tokens
from tiermesh.serving import start_grpc_server, wait_for_signal
from tiermesh.tier.v1 import tier_pb2, tier_pb2_grpc
from tiermesh.v1 import mesh_pb2


class SyntheticEngine(tier_pb2_grpc.TierServiceServicer):
    def __init__(self, tier: int, slots: int, tokens: int, ttft_s: float, token_s: float) -> None:
        self._tier = mesh_pb2.Tier.ValueType(tier)
        self._slots = asyncio.Semaphore(slots)
        self._tokens = tokens
        self._ttft_s = ttft_s
        self._token_s = token_s

    async def Generate(
        self,
        request: tier_pb2.GenerateRequest,
        context: grpc.aio.ServicerContext[tier_pb2.GenerateRequest, tier_pb2.GenerateResponse],
    ) -> AsyncIterator[tier_pb2.GenerateResponse]:
        tokens = min(self._tokens, request.max_tokens)
        prompt_tokens = estimate_tokens(message.content for message in request.messages)
        async with self._slots:  # queued here while the engine is full
            await asyncio.sleep(self._ttft_s)
            for index in range(tokens):
                if index:
                    await asyncio.sleep(self._token_s)
                response = tier_pb2.GenerateResponse(text=" tok", index=index, tier=self._tier)
                if index == tokens - 1:
                    response.finish_reason = mesh_pb2.FINISH_REASON_LENGTH
                    response.usage.completion_tokens = tokens
                    response.usage.prompt_tokens = prompt_tokens
                yield response


async def serve(args: argparse.Namespace) -> None:
    engine = SyntheticEngine(args.tier, args.slots, args.tokens, args.ttft_ms / 1000, args.token_ms / 1000)
    # Keep the handle: a grpc.aio server that is garbage-collected stops serving.
    serving = await start_grpc_server(
        args.listen,
        lambda server: tier_pb2_grpc.add_TierServiceServicer_to_server(engine, server),
        ["tiermesh.tier.v1.TierService"],
    )
    await wait_for_signal()
    await serving.stop(1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", required=True)
    parser.add_argument("--tier", type=int, default=mesh_pb2.TIER_SILVER)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=12)
    parser.add_argument("--ttft-ms", type=float, default=20.0)
    parser.add_argument("--token-ms", type=float, default=15.0)
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
