"""Silver stopped while vLLM builds its engine: the real Silver process, as the mesh
starts it (a session of its own), sent SIGTERM once vLLM's engine process is starting.
The build runs in a thread a stop cannot cancel; what it builds after the stop must be
shut down then, not left to interpreter exit, where vLLM's shutdown fails and logs."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

from ops.mesh import group_alive
from ops.stop_check import TRACEBACK
from tests.engine.started_component import group_left_running, start_alone, wait_for_log

pytestmark = pytest.mark.engine

# vLLM's engine process has started and is building the engine (its log line).
BUILDING = b"Initializing a V1 LLM engine"


def test_a_silver_stopped_while_its_engine_builds_leaves_nothing(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "ops.cli", "silver"]
    silver, log = start_alone(argv, "silver", {"listen": "127.0.0.1:8461", "metrics_port": 8462}, tmp_path)
    try:
        wait_for_log(log, BUILDING, silver, 120)
        os.kill(silver.pid, signal.SIGTERM)
        # The build runs on to its end (seconds here, more on a loaded machine) before the
        # engine it built is shut down: a generous bound, since what is tested is the exit.
        assert silver.wait(timeout=60) == 0  # not killed by the signal: it stopped itself
        assert not group_left_running(silver.pid), "vLLM's engine process and the tool server are gone"
        assert TRACEBACK not in log.read_bytes(), log.read_text(errors="replace")[-3000:]
    finally:
        if group_alive(silver.pid):
            os.killpg(silver.pid, signal.SIGKILL)
