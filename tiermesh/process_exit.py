"""How an engine's process leaves once its service has stopped."""

from __future__ import annotations

import gc


def skip_exit_collection() -> None:
    """Leave the objects made so far out of the interpreter's collections at exit.

    At exit the interpreter collects every object still alive; in a process that loaded
    an engine (vLLM and torch in Silver; PyTriton, llama.cpp and onnxruntime in Gold)
    that is millions of objects and seconds of a mesh's stop, only to free memory the
    operating system takes back at once. Frozen objects are skipped by those
    collections, and nothing else at exit changes: atexit handlers (log and span
    flushes) still run. Call it after the service has stopped and its engine closed.
    """
    gc.freeze()
