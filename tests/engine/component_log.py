"""Waiting on a component's log: the stop-while-starting tests signal a real process at
the moment its log says it has reached a step of its start."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path


def wait_for_log(log: Path, line: bytes, process: subprocess.Popen[bytes], within_s: float) -> None:
    """Until `line` is in `log`; fails with the log's end if the process exits first."""
    deadline = time.monotonic() + within_s
    while line not in log.read_bytes():
        assert process.poll() is None, log.read_text(errors="replace")[-2000:]
        assert time.monotonic() < deadline, f"no {line!r} in {log.name} after {within_s} s"
        time.sleep(0.02)
