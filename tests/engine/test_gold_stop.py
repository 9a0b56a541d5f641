"""Gold stopped while it starts (services/gold/stopping.py): the real Gold process, as the
mesh starts it (a session of its own), sent SIGTERM while Triton loads its models, the
moment the mesh's stop during start-up used to kill it and leave Triton behind."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from ops.mesh import group_alive
from ops.stop_check import TRACEBACK
from tests.engine.started_component import group_left_running, start_alone, wait_for_log

pytestmark = pytest.mark.engine

REPO = Path(__file__).resolve().parents[2]
GOLD_PYTHON = REPO / ".venv-gold/bin/python"
# Triton has started and is loading the LLM ensemble (its log line).
LOADING = b"loading: ensemble"


def test_a_gold_stopped_while_triton_loads_stops_it_and_leaves_nothing(tmp_path: Path) -> None:
    argv = [str(GOLD_PYTHON), "-m", "services.gold.server"]
    ports = {"grpc_port": 8401, "http_port": 8400, "metrics_port": 8402, "instances": 1}
    gold, log = start_alone(argv, "gold", ports, tmp_path)
    try:
        wait_for_log(log, LOADING, gold, 120)
        os.kill(gold.pid, signal.SIGTERM)
        assert gold.wait(timeout=20) == 0  # not killed by the signal: it stopped itself
        assert not group_left_running(gold.pid), "Triton and its model stubs are gone with it"
        regions = [name for name in os.listdir("/dev/shm") if name.startswith(f"pytrtion{gold.pid}-")]
        assert regions == []
        assert TRACEBACK not in log.read_bytes()
        assert b"stopped while starting" in log.read_bytes()
    finally:
        if group_alive(gold.pid):
            os.killpg(gold.pid, signal.SIGKILL)
