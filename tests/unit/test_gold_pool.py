"""Gold's llama.cpp pool (services/gold/engine.py) with stand-ins for `llama_cpp.Llama`
and its kept prefixes (the real ones run in the engine tests): a stream ends for its
caller at the last token, not after the instance's own work that follows it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from services.gold.engine import LlamaPool, PromptTokens, Worker
from services.gold.prefix_states import PrefixStates
from services.gold.settings import GoldSettings


class StreamingLlama:
    """Streams two tokens and a final chunk."""

    def tokenize(self, text: bytes, special: bool = False) -> list[int]:
        return list(range(len(text.split())))

    def create_completion(self, prompt: str, **options: Any) -> Iterator[dict[str, Any]]:
        yield {"choices": [{"text": "Halt", "finish_reason": None}]}
        yield {"choices": [{"text": "!", "finish_reason": None}]}
        yield {"choices": [{"text": "", "finish_reason": "length"}]}


class SlowSave(PrefixStates):
    """Keeps the evaluated prompt after the answer, as Gold does: here it blocks until
    the test lets it finish."""

    def __init__(self) -> None:
        super().__init__(capacity_bytes=0)
        self.saving = threading.Event()
        self.may_finish = threading.Event()

    def restore(self, llm: Any, tokens: Sequence[int]) -> int:
        return 0

    def save(self, llm: Any) -> None:
        self.saving.set()
        assert self.may_finish.wait(10), "the test never let the save finish"


async def test_a_stream_ends_at_its_last_token_before_the_prefix_save() -> None:
    pool = LlamaPool(GoldSettings())
    llm, states = StreamingLlama(), SlowSave()
    pool._free.put_nowait(Worker(llm, ThreadPoolExecutor(1), states))  # as load() does
    try:
        pieces = [piece async for piece in pool.stream("Who goes there?", max_tokens=2)]
        assert pieces == [PromptTokens(3), "Halt", "!", ""]
        # The caller has its whole answer while the instance is still saving.
        assert not states.may_finish.is_set()
        assert pool._free.empty()  # and the instance is not handed out meanwhile
    finally:
        states.may_finish.set()
    worker = await asyncio.wait_for(pool._free.get(), 10)  # back once its thread is done
    assert worker.llm is llm
    assert states.saving.is_set()
