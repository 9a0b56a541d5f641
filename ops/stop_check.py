"""What a stopped mesh left behind: ports still bound, shared-memory segments,
tracebacks its components logged while stopping, and processes a component had to kill
to stop.

A clean stop (#28) is judged from outside, as a developer would see it after Ctrl-C:
the engine tests fail on any of these, and bench.stop records them beside the times.
Taken in two steps, because only the stop's own leftovers count: `before_stop` notes
what already existed (another process's segments, the logs so far), `left_after`
compares.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tiermesh.process_group import KILLED_STRAGGLERS

TRACEBACK = b"Traceback (most recent call last)"


def shared_memory() -> set[str]:
    return set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()


def config_ports(config: dict[str, Any]) -> list[int]:
    """Every port the mesh listens on, as its configuration (a parsed mesh.yaml) says."""
    found: list[int] = []

    def walk(node: object, key: str = "") -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, k)
        elif isinstance(node, int) and key.endswith("port") and node:
            found.append(node)
        elif isinstance(node, str) and key == "listen":
            found.append(int(node.rpartition(":")[2]))

    walk(config)
    return found


def bound(port: int) -> bool:
    """Whether something still listens on the port (a server binds with SO_REUSEADDR,
    so connections in TIME_WAIT do not count)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


@dataclass(frozen=True)
class BeforeStop:
    memory: frozenset[str]
    log_sizes: dict[Path, int]

    def written_since(self, log: Path) -> bytes:
        """What `log` has had written to it since (all of it, if it is new)."""
        if not log.exists():
            return b""
        with log.open("rb") as f:
            f.seek(self.log_sizes.get(log, 0))
            return f.read()


@dataclass(frozen=True)
class Leftovers:
    shared_memory: list[str]
    ports: list[int]
    tracebacks: list[str]  # the logs (by file name) that logged one while stopping
    # The logs of components that killed processes of their own group that outlived
    # their stop (tiermesh/process_group.py): killed by the component, not by `down`, but
    # killed all the same.
    killed_own: list[str]

    def problems(self) -> list[str]:
        found = []
        if self.shared_memory:
            found.append(f"left in /dev/shm: {self.shared_memory}")
        if self.ports:
            found.append(f"ports still bound: {self.ports}")
        found += [f"{name} logged a traceback while stopping" for name in self.tracebacks]
        found += [f"{name}: {KILLED_STRAGGLERS}" for name in self.killed_own]
        return found


def before_stop(logs: Path, memory: set[str] | None = None) -> BeforeStop:
    """What exists before the stop: /dev/shm (or `memory`, taken before the mesh
    started, so that segments it made while running count too) and each log's size."""
    sizes = {log: log.stat().st_size for log in sorted(logs.glob("*.log"))}
    return BeforeStop(frozenset(shared_memory() if memory is None else memory), sizes)


def left_after(before: BeforeStop, config: dict[str, Any]) -> Leftovers:
    killed = KILLED_STRAGGLERS.encode()
    return Leftovers(
        shared_memory=sorted(shared_memory() - before.memory),
        ports=[port for port in config_ports(config) if bound(port)],
        tracebacks=[log.name for log in before.log_sizes if TRACEBACK in before.written_since(log)],
        killed_own=[log.name for log in before.log_sizes if killed in before.written_since(log)],
    )
