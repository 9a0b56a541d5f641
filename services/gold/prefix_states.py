"""Evaluated prompt prefixes of one llama.cpp instance, kept so that a persona seen
before costs its situation only.

Production's TensorRT-LLM reuses KV blocks across requests (`enable_kv_cache_reuse`).
Locally each llama.cpp instance holds one context: personas interleave on it, and a
persona's system text would otherwise be evaluated again on every call after another
persona's. llama-cpp-python's own `LlamaRAMCache` keeps states too, but each save and
load also copies the Python side's score matrix (the vocabulary's logits per evaluated
token, megabytes) and clears the rest of it, which on this CPU costs about as much as
evaluating the prefix it saves. This keeps only what is needed: the sequence's KV cells
(llama.cpp's own per-sequence state) and the tokens they hold. The logits are never
restored: at least the prompt's last token is always evaluated again.

Used from the instance's one thread only, like the `Llama` itself.
"""

from __future__ import annotations

import ctypes
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

# The high-level API evaluates everything in sequence 0.
SEQUENCE = 0


class PrefixStates:
    """Least recently used states, up to `capacity_bytes` of KV data in all."""

    def __init__(self, capacity_bytes: int) -> None:
        self._capacity = capacity_bytes
        self._used = 0
        self._states: OrderedDict[tuple[int, ...], bytes] = OrderedDict()

    def __len__(self) -> int:
        return len(self._states)

    def restore(self, llm: Any, tokens: Sequence[int]) -> int:
        """Put the instance in the state that shares the most with `tokens`, from what
        it holds or from a stored state, and say how many of them are evaluated. Never
        all of them: the last is left to evaluate, which gives the logits to sample
        from. The caller (or llama-cpp-python's prefix match) evaluates the rest."""
        from llama_cpp import Llama

        common: Callable[[Sequence[int], Sequence[int]], int] = Llama.longest_token_prefix
        held = common(llm.input_ids[: llm.n_tokens].tolist(), tokens)
        best, shared = None, held
        for key in self._states:
            n = common(key, tokens)
            if n > shared:
                best, shared = key, n
        if best is not None and not self._load(llm, best):
            shared = 0  # the instance's sequence is empty now
        usable = max(0, min(shared, len(tokens) - 1))
        llm.n_tokens = usable
        return usable

    def keep(self, llm: Any, tokens: Sequence[int]) -> None:
        """Evaluate `tokens` (from the longest prefix already held or kept) and keep the
        state, with no call waiting on it: a warm-up."""
        common = self.restore(llm, tokens)
        llm.eval(list(tokens[common:]))
        self.save(llm)

    def save(self, llm: Any) -> None:
        """Keep what the instance has evaluated (its tokens and their KV cells)."""
        import llama_cpp

        n = int(llm.n_tokens)
        if n == 0:
            return
        key = tuple(llm.input_ids[:n].tolist())
        if key in self._states:
            self._states.move_to_end(key)
            return
        ctx = llm.ctx
        size = int(llama_cpp.llama_state_seq_get_size(ctx, SEQUENCE))
        buffer = (ctypes.c_uint8 * size)()
        written = int(llama_cpp.llama_state_seq_get_data(ctx, buffer, size, SEQUENCE))
        if written == 0 or written > size:
            return  # nothing worth keeping (llama.cpp reports failure as 0)
        data = bytes(buffer)[:written]
        self._states[key] = data
        self._used += len(data)
        while self._used > self._capacity and self._states:
            _, dropped = self._states.popitem(last=False)
            self._used -= len(dropped)

    def _load(self, llm: Any, tokens: tuple[int, ...]) -> bool:
        """Whether the stored state is now the instance's; if llama.cpp refused it, the
        state is dropped and the sequence starts empty."""
        import llama_cpp

        data = self._states.pop(tokens)
        buffer = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        ctx = llm.ctx
        if int(llama_cpp.llama_state_seq_set_data(ctx, buffer, len(data), SEQUENCE)) != len(data):
            self._used -= len(data)
            llm.n_tokens = 0
            return False
        self._states[tokens] = data  # most recently used
        llm.input_ids[: len(tokens)] = tokens
        llm.n_tokens = len(tokens)
        return True
