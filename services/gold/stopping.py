"""Gold's stop, where PyTriton's own is slow or leaves something behind (#28: the
mesh stops in under 5 s and leaves nothing in /dev/shm).

PyTriton (pinned in the Makefile) has no public call for either step below: what they
touch is reached by name, and a version without it is stopped as PyTriton stops it.
Production Gold (Triton with TensorRT-LLM) has no PyTriton.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger("tiermesh.gold")
SHM = Path("/dev/shm")
# How long Gold waits, once Triton has exited, for the rest of its process group (a
# model stub Triton gave up on at its exit timeout, that stub's resource tracker) to
# notice and exit on its own, before it kills them (tiermesh/process_group.py). Within
# `down`'s 5 s target for the usual stop (Triton out at ~3.5 s, nothing left over).
STRAGGLERS_GRACE_S = 1.5


class StopWhileStarting:
    """The signal handler while Gold starts. With SIGTERM's default, the mesh's stop
    during start-up killed Gold at once, and Triton and its model stubs, mid-load, ran
    on until `down` killed them, now and then with their shared memory left behind.

    Before Triton starts, a stop ends the start-up as Ctrl-C does (KeyboardInterrupt).
    Once Triton is starting, it is only remembered: a KeyboardInterrupt raised while
    PyTriton waits for a model to load is swallowed in a callback and the load then
    hangs for half a minute. `check`, between the start's steps, raises it then, inside
    PyTriton's context, which stops Triton on its way out. It also catches a stop that a
    C library swallowed before Triton (llama.cpp's load-progress callback).
    """

    def __init__(self) -> None:
        self.asked = False
        self._interrupt = True

    def __call__(self, signum: int, frame: object) -> None:
        self.asked = True
        if self._interrupt:
            raise KeyboardInterrupt

    def defer(self) -> None:
        """From here a stop waits for the next `check`."""
        self._interrupt = False

    def check(self) -> None:
        if self.asked:
            raise KeyboardInterrupt


def close_clients_once_triton_exits(triton: object) -> None:
    """Close every model's request client in this process the moment Triton's process
    has exited, all at once (from PyTriton's own exit callback; returns at once).

    Once Triton has exited, PyTriton closes the clients one model after the other, and
    each notices only at its next once-a-second check: up to a second per model of
    Gold's stop (docs/history.md). Told together when Triton is gone, they wind down in
    one such wait, and PyTriton's own close finds them done. Not before Triton has
    exited: until then a model's stub may still pass a request on, and a client that
    has stopped reading would leave it unanswered and the unload hung.
    """
    server = getattr(triton, "_triton_server", None)
    manager = getattr(triton, "_model_manager", None)
    if server is None or manager is None:
        return

    def close(success: bool, exit_code: int) -> None:
        for model in list(getattr(manager, "models", ())):
            for connector in getattr(model, "_requests_respones_connectors", ()):
                connector.close()

    server.register_on_exit(close)


def remove_orphaned_regions(shm: Path = SHM) -> list[str]:
    """Remove the shared-memory regions this process's Triton left behind; their names.

    Triton's Python backend names its regions with the prefix PyTriton gives it,
    `pytrtion<this process's pid>-…`, and removes them as each model unloads. A model
    still unloading when Triton's exit timeout passes (now and then right after a
    burst, with the mesh's other engines stopping on the same cores) has its stub ended
    before it can, and the regions stay (python_backend fixed it upstream in #450,
    after the Triton that PyTriton 0.7.0 ships). Called once Triton has exited, when
    nothing uses them any more.
    """
    prefix = f"pytrtion{os.getpid()}-"
    removed = []
    for region in shm.glob(f"{prefix}*") if shm.is_dir() else ():
        region.unlink(missing_ok=True)
        removed.append(region.name)
    if removed:
        log.warning("removed %d shared-memory regions Triton left behind: %s", len(removed), removed)
    return removed
