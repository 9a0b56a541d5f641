"""vLLM's AsyncLLM, in-process: chat template, context check, streamed deltas, abort.

The engine is built in a worker thread (it spawns its own processes and takes tens
of seconds) so the gRPC server keeps answering health checks while it loads.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from services.silver.settings import SilverSettings
from tiermesh.chat import Message
from tiermesh.errors import StatusError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Sampling:
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    # Answer with exactly one of these (vLLM structured outputs, choice mode)…
    choices: tuple[str, ...] = ()
    # …or with text matching this regex (tool calls).
    regex: str | None = None


@dataclass(frozen=True, slots=True)
class Delta:
    text: str
    prompt_tokens: int
    completion_tokens: int
    # None until the last delta: "stop" or "length".
    finish_reason: str | None


def structured(sampling: Sampling) -> Any:
    from vllm.sampling_params import StructuredOutputsParams

    if sampling.choices:
        return StructuredOutputsParams(choice=list(sampling.choices))
    if sampling.regex:
        return StructuredOutputsParams(regex=sampling.regex)
    return None


# How long vLLM's engine process gets to exit before it is killed.
SHUTDOWN_TIMEOUT_S = 1.5


class SilverEngine:
    def __init__(self, settings: SilverSettings) -> None:
        self._settings = settings
        self._llm: Any = None
        self._tokenizer: Any = None
        # The build's thread hands its engine over under this lock, unless `close` came
        # first: a stop cannot cancel that thread, only tell it the engine is unwanted.
        self._handover = threading.Lock()
        self._closing = False

    @property
    def ready(self) -> bool:
        return self._llm is not None

    @property
    def max_model_len(self) -> int:
        return self._settings.max_model_len

    async def start(self) -> None:
        await asyncio.to_thread(self._build)
        if self._llm is None:
            return  # closed while it loaded
        await self.warm()
        log.info("silver engine ready: %s", self._settings.model)

    async def warm(self) -> None:
        """One short answer and one structured one before the tier says SERVING: a first
        request pays for what the engine sets up lazily (a plain one and a choice grammar
        several times a warm one), and the router would judge the tier by it."""
        for choices in ((), ("YES", "NO")):
            sampling = Sampling(max_tokens=2, temperature=0.0, top_p=1.0, choices=choices)
            async for _ in self.generate(f"warm-{len(choices)}", [Message("user", "Hello")], sampling):
                pass

    def _build(self) -> None:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        if self._settings.omp_threads_bind:
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", self._settings.omp_threads_bind)
        args = AsyncEngineArgs(
            model=self._settings.model,
            dtype=self._settings.dtype,
            max_model_len=self._settings.max_model_len,
            max_num_seqs=self._settings.max_num_seqs,
            kv_cache_memory_bytes=int(self._settings.kv_cache_gib * (1 << 30)),
            enforce_eager=True,
            enable_prefix_caching=self._settings.prefix_caching,
            block_size=self._settings.block_size,
            # On: vLLM's Prometheus counters (the prefix cache's among them) in this
            # process's registry, served on Silver's metrics port.
            disable_log_stats=False,
        )
        llm = AsyncLLM.from_engine_args(args)
        tokenizer = llm.get_tokenizer()
        with self._handover:
            if not self._closing:
                # The tokenizer first: a call sees the engine as loaded once `_llm` is set.
                self._tokenizer = tokenizer
                self._llm = llm
                return
        # A stop came while the engine loaded, and the process cannot exit before this
        # thread ends: shut it down now, not when it is collected at interpreter exit,
        # where its shutdown fails.
        self._shut_down(llm)

    def unfinished_requests(self) -> int:
        """Requests the engine still holds: 0 once every caller finished or was aborted."""
        if self._llm is None:
            return 0
        return int(self._llm.output_processor.get_num_unfinished_requests())

    async def render(self, messages: Sequence[Message]) -> list[int]:
        """Token ids of the conversation under the model's chat template.

        Tokenising is CPU work proportional to the prompt: off the event loop.
        """
        chat = [{"role": m.role, "content": m.content} for m in messages]
        # The last assistant message, if any, is a prefix to continue, not a turn to close.
        continue_final = chat[-1]["role"] == "assistant"

        def tokenize() -> list[int]:
            text = self._tokenizer.apply_chat_template(
                chat,
                tokenize=False,
                add_generation_prompt=not continue_final,
                continue_final_message=continue_final,
            )
            return list(self._tokenizer.encode(text, add_special_tokens=False))

        return await asyncio.to_thread(tokenize)

    async def generate(
        self, request_id: str, messages: Sequence[Message], sampling: Sampling
    ) -> AsyncGenerator[Delta, None]:
        """Stream deltas. Closing the iterator early (caller cancelled, deadline
        passed) aborts the engine request."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        if self._llm is None:
            raise StatusError(grpc.StatusCode.UNAVAILABLE, "silver engine is still loading")
        prompt_ids = await self.render(messages)
        limit = self._settings.max_model_len
        if len(prompt_ids) + sampling.max_tokens > limit:
            raise StatusError(
                grpc.StatusCode.OUT_OF_RANGE,
                f"prompt is {len(prompt_ids)} tokens and max_tokens is {sampling.max_tokens}; "
                f"together they exceed the model's context of {limit} tokens",
            )
        params = SamplingParams(
            max_tokens=sampling.max_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k or 0,
            seed=sampling.seed,
            stop=list(sampling.stop) or None,
            output_kind=RequestOutputKind.DELTA,
            structured_outputs=structured(sampling),
        )
        completion_tokens = 0
        finished = False
        stream = self._llm.generate(TokensPrompt(prompt_token_ids=prompt_ids), params, request_id)
        try:
            async for output in stream:
                step = output.outputs[0]
                completion_tokens += len(step.token_ids)
                finished = output.finished
                yield Delta(
                    text=step.text,
                    prompt_tokens=len(prompt_ids),
                    completion_tokens=completion_tokens,
                    finish_reason=step.finish_reason if finished else None,
                )
        finally:
            if not finished:
                # vLLM aborts on its generator's cancellation too; closing it here
                # makes that immediate instead of waiting for garbage collection.
                await stream.aclose()
                await self._llm.abort(request_id)

    async def close(self) -> None:
        """Stop the engine, from the loop that serves it. vLLM's output handler task still
        awaits the engine's outputs: cancelled first, or it wakes to the dead engine and
        logs EngineDeadError's traceback. The shutdown itself blocks: in a thread."""
        with self._handover:
            self._closing = True
        handler = getattr(self._llm, "output_handler", None)
        if handler is not None:
            handler.cancel()
        await asyncio.to_thread(self.shutdown)

    def shutdown(self) -> None:
        llm, self._llm = self._llm, None
        if llm is not None:
            self._shut_down(llm)

    @staticmethod
    def _shut_down(llm: Any) -> None:
        # vLLM waits 5 s by default for its engine process; its worker is done in
        # ~3 s and then sits on teardown. A mesh's stop must take under 5 s.
        llm.shutdown(timeout=SHUTDOWN_TIMEOUT_S)
        # AsyncLLM shuts down again when it is collected, which for vLLM's own
        # references is at interpreter exit, when its module globals are gone
        # (TypeError in __del__): once is enough.
        llm.shutdown = lambda timeout=None: None
