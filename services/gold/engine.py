"""llama.cpp behind Gold: a pool of instances, streaming, and intent selection.

A `Llama` is not thread-safe (shared by two threads it segfaults), so each instance
has one thread of its own (a one-thread executor) and serves one request at a time;
a request waits for a free instance. Tokens cross back to the event loop through a
queue. Instances × threads stay within the cores: on 2 cores, 2 × 1.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.gold.prefix_states import PrefixStates
from services.gold.settings import GoldSettings
from tiermesh.model import gguf_path


class GaveUp(Exception):
    """The request's caller stopped waiting before its work was done."""


@dataclass(frozen=True)
class GiveUp:
    """When the router stops waiting for a request (Unix time): for its first response,
    and for its last (router/backends/triton.py, give_up_times)."""

    start_by: float
    end_by: float


@dataclass(frozen=True)
class PromptTokens:
    """What a stream sends first: how many tokens its prompt is, as the model counts
    them (the usage a caller is billed for, like Silver's)."""

    count: int


# What a work item emits once its caller's answer is whole, before the instance's own
# work after it (llama.cpp saves the evaluated prefix into its cache after the last
# token): the stream ends for the caller there, and the instance returns to the pool
# when its thread is done.
ANSWERED = object()


@dataclass
class Worker:
    llm: Any  # llama_cpp.Llama
    thread: ThreadPoolExecutor
    # Personas interleave on an instance: each one's evaluated prompt is kept, so a
    # persona seen before costs its situation only, not its whole prompt again.
    prefixes: PrefixStates


class LlamaPool:
    def __init__(self, settings: GoldSettings) -> None:
        self._settings = settings
        self._free: asyncio.Queue[Worker] = asyncio.Queue()
        self._grammars: dict[tuple[str, ...], Any] = {}

    def load(self, openings: Sequence[str] = ()) -> None:
        """Load the instances. `openings`: prompt beginnings (the personas' system text)
        each instance evaluates and keeps now, so that the first call for a persona after
        a start costs its situation only, like every later one, rather than its whole
        system text on a caller's deadline (docs/history.md has the measurements)."""
        from llama_cpp import Llama

        model = Path(self._settings.model) if self._settings.model else gguf_path()
        for i in range(self._settings.instances):
            llm = Llama(
                model_path=str(model),
                n_ctx=self._settings.n_ctx,
                n_threads=self._settings.threads,
                n_batch=256,
                verbose=False,
            )
            # A first evaluation pays for what llama.cpp sets up lazily (its weights paged
            # in, its buffers): done here, before Triton serves, not on a caller's intent.
            llm.create_completion("Hello", max_tokens=2, temperature=0.0)
            prefixes = PrefixStates(self._settings.prefix_cache_mib << 20)
            for text in openings:
                prefixes.keep(llm, llm.tokenize(text.encode("utf-8"), special=True))
            thread = ThreadPoolExecutor(1, thread_name_prefix=f"llama-{i}")
            self._free.put_nowait(Worker(llm, thread, prefixes))

    async def _run(self, work: Any, start_by: float | None = None) -> AsyncIterator[Any]:
        """Run `work(worker, emit, stopped)` on a free instance's thread; yield what it emits.

        Closing the iterator sets `stopped`, so decoding ends at the next token; the
        instance goes back to the pool only once its thread has let go of it. A request
        still waiting for an instance at `start_by` (Unix time) is dropped unrun: its
        caller has given up (GaveUp).
        """
        worker = await self._free.get()
        if start_by is not None and time.time() > start_by:
            self._free.put_nowait(worker)
            raise GaveUp("the caller gave up before an instance was free")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        stopped = threading.Event()

        def emit(kind: str, value: Any) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, (kind, value))

        def body() -> None:
            try:
                work(worker, lambda item: emit("item", item), stopped)
            except BaseException as e:  # delivered to the awaiting side
                emit("error", e)
            finally:
                emit("end", None)

        running = loop.run_in_executor(worker.thread, body)
        running.add_done_callback(lambda _: self._free.put_nowait(worker))
        try:
            while True:
                kind, value = await queue.get()
                if kind == "end" or value is ANSWERED:
                    return
                if kind == "error":
                    raise value
                yield value
        finally:
            stopped.set()

    async def stream(
        self,
        prompt: str,
        max_tokens: int,
        temperature: float = 0.7,
        top_k: int = 40,
        top_p: float = 0.95,
        seed: int | None = None,
        give_up: GiveUp | None = None,
    ) -> AsyncIterator[PromptTokens | str]:
        """The prompt's token count, then the completion of `prompt`, one text piece per
        generated token; it stops at `give_up.end_by` (Unix time), when its caller stops
        waiting."""
        end_by = give_up.end_by if give_up is not None else None

        def work(worker: Worker, emit: Any, stopped: threading.Event) -> None:
            llm = worker.llm
            # As create_completion would tokenize the text (its streamed chunks carry no
            # usage); it is given the tokens, so the prompt is tokenized once.
            tokens = llm.tokenize(prompt.encode("utf-8"), special=True)
            emit(PromptTokens(len(tokens)))
            # create_completion evaluates only what follows the prefix the instance holds.
            worker.prefixes.restore(llm, tokens)
            pieces = llm.create_completion(
                tokens,
                max_tokens=max_tokens,
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                seed=seed if seed is not None else -1,
                stream=True,
            )
            for chunk in pieces:
                if stopped.is_set() or (end_by is not None and time.time() > end_by):
                    break
                choice = chunk["choices"][0]
                emit(choice["text"])
                if choice["finish_reason"] is not None:
                    emit(ANSWERED)  # the prefix's save comes after (see ANSWERED)
            pieces.close()
            worker.prefixes.save(llm)

        async for piece in self._run(work, give_up.start_by if give_up is not None else None):
            yield piece

    async def choose(
        self, prompt: str, labels: Sequence[str], method: str = "trie", give_up: GiveUp | None = None
    ) -> str:
        """One of `labels`, always; GaveUp when its caller stops waiting first."""
        start_by = give_up.start_by if give_up is not None else None

        def work(worker: Worker, emit: Any, stopped: threading.Event) -> None:
            emit(
                choose_by_trie(worker.llm, prompt, labels, worker.prefixes, start_by)
                if method == "trie"
                else self._by_grammar(worker, prompt, labels)
            )

        async for label in self._run(work, start_by):
            if label is None:
                raise GaveUp("the caller gave up while the label was being chosen")
            return str(label)
        raise RuntimeError("no label chosen")

    def _by_grammar(self, worker: Worker, prompt: str, labels: Sequence[str]) -> str:
        from llama_cpp import LlamaGrammar

        llm = worker.llm

        key = tuple(labels)
        if key not in self._grammars:
            alternatives = " | ".join('"' + label.replace('"', '\\"') + '"' for label in labels)
            self._grammars[key] = LlamaGrammar.from_string(f"root ::= {alternatives}", verbose=False)
        # Room for the longest label's tokens: a shorter limit cut "ATTACK" to "ATTAC".
        longest = max(len(llm.tokenize(label.encode(), add_bos=False)) for label in labels)
        tokens = llm.tokenize(prompt.encode("utf-8"), special=True)
        worker.prefixes.restore(llm, tokens)
        out = llm.create_completion(
            tokens, max_tokens=longest + 1, temperature=0.0, grammar=self._grammars[key]
        )
        worker.prefixes.save(llm)
        text = str(out["choices"][0]["text"]).strip()
        return text if text in labels else labels[0]  # the grammar admits only labels


# Tokens of a prompt evaluated at a time: between two, a request whose caller gave up stops.
EVAL_CHUNK = 32


def choose_by_trie(
    llm: Any, prompt: str, labels: Sequence[str], prefixes: PrefixStates, start_by: float | None = None
) -> str | None:
    """Greedy decoding restricted to the labels' token trie.

    The prompt is evaluated once (from the longest prefix the instance holds or has
    kept: the persona's system text repeats); at each branch of the trie the label
    group whose next token scores highest survives; a branch with one group costs
    nothing, and decoding stops as soon as one label is left. Labels with distinct
    first tokens: exactly one forward pass.
    """
    tokens = llm.tokenize(prompt.encode(), add_bos=False, special=True)
    common = prefixes.restore(llm, tokens)
    for start in range(common, len(tokens), EVAL_CHUNK):
        if start_by is not None and time.time() > start_by:
            return None  # nobody waits for the label any more
        llm.eval(tokens[start : start + EVAL_CHUNK])
    prefixes.save(llm)
    label_tokens = {label: llm.tokenize(label.encode(), add_bos=False) for label in labels}
    end = llm.token_eos()
    alive = list(labels)
    depth = 0
    while len(alive) > 1:
        groups: dict[int, list[str]] = defaultdict(list)
        for label in alive:
            ids = label_tokens[label]
            groups[ids[depth] if depth < len(ids) else end].append(label)
        if len(groups) > 1:
            logits = llm.scores[llm.n_tokens - 1]
            best = max(groups, key=lambda token: float(logits[token]))
        else:
            [best] = groups
        alive = groups[best]
        if len(alive) > 1:
            llm.eval([best])
            depth += 1
    return alive[0]
