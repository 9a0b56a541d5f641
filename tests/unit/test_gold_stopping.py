"""Gold's stop steps (services/gold/stopping.py) against stand-ins for PyTriton's server,
models and request clients, and a directory standing in for /dev/shm; the real stop is
checked by the engine tests' clean-stop check and measured by bench.stop."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from services.gold.stopping import StopWhileStarting, close_clients_once_triton_exits, remove_orphaned_regions


class TritonProcess:
    """PyTriton's server: its exit callbacks, called when the process has ended."""

    def __init__(self) -> None:
        self.on_exit: list[Callable[[bool, int], None]] = []

    def register_on_exit(self, callback: Callable[[bool, int], None]) -> None:
        self.on_exit.append(callback)

    def exit(self) -> None:
        for callback in self.on_exit:
            callback(False, 1)


class Client:
    def __init__(self) -> None:
        self.closed = threading.Event()

    def close(self) -> None:
        self.closed.set()


class Model:
    def __init__(self) -> None:
        self._requests_respones_connectors = [Client()]


class Models:
    def __init__(self) -> None:
        self.models = [Model(), Model()]


class PyTriton:
    def __init__(self) -> None:
        self._triton_server = TritonProcess()
        self._model_manager = Models()


def clients(triton: PyTriton) -> list[Client]:
    return [c for m in triton._model_manager.models for c in m._requests_respones_connectors]


def test_clients_close_together_only_once_triton_has_exited() -> None:
    triton = PyTriton()
    close_clients_once_triton_exits(triton)
    assert not any(c.closed.is_set() for c in clients(triton)), "closed while Triton still ran"
    triton._triton_server.exit()
    assert all(c.closed.is_set() for c in clients(triton))


def test_a_pytriton_without_those_parts_is_left_to_stop_itself() -> None:
    close_clients_once_triton_exits(object())  # no error


def test_only_this_process_regions_are_removed(tmp_path: Path) -> None:
    ours = [
        tmp_path / f"pytrtion{os.getpid()}-1a2b3c4d-model_0",
        tmp_path / f"pytrtion{os.getpid()}-1a2b3c4d-x",
    ]
    others = [
        tmp_path / "pytrtion1-1a2b3c4d-model_0",
        tmp_path / "psm_1234",
        tmp_path / f"pytrtion{os.getpid()}0-ff",
    ]
    for region in ours + others:
        region.write_bytes(b"")
    assert sorted(remove_orphaned_regions(tmp_path)) == sorted(r.name for r in ours)
    assert not any(r.exists() for r in ours)
    assert all(r.exists() for r in others)
    assert remove_orphaned_regions(tmp_path) == []


def test_a_stop_while_starting_interrupts_until_triton_starts_then_waits_for_a_check() -> None:
    starting = StopWhileStarting()
    starting.check()  # nothing asked: the start goes on
    with pytest.raises(KeyboardInterrupt):
        starting(signal.SIGTERM, None)
    starting = StopWhileStarting()
    starting.defer()
    starting(signal.SIGTERM, None)  # Triton is starting: remembered, not raised
    with pytest.raises(KeyboardInterrupt):
        starting.check()
