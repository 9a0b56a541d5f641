"""The benchmarks' child processes: started with their output in a log file, stopped
together."""

from __future__ import annotations

import subprocess
from collections.abc import Iterable
from pathlib import Path


def start(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    """`argv` in the background, its stdout and stderr in `log`."""
    with log.open("wb") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def stop(processes: Iterable[subprocess.Popen[bytes]]) -> None:
    """SIGTERM to each, then wait for each: they stop side by side, not one after another."""
    processes = list(processes)
    for process in processes:
        process.terminate()
    for process in processes:
        process.wait(10)
