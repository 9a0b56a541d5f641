"""`tiermesh up` in the foreground stops the mesh on SIGTERM, SIGHUP and SIGINT as on
Ctrl-C: each becomes the KeyboardInterrupt its `finally` stops the mesh on. Checked in a
child process that first ignores SIGINT, as a shell starts a background job (set in the
child itself: a `preexec_fn` runs Python between fork and exec, which gRPC's and
OpenTelemetry's fork handlers in this threaded test process made abort now and then). The
whole stop is the engine tests' and bench.stop's."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

CHILD = """
import os, signal, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
from ops.cli import stop_on_signals
stop_on_signals()
try:
    os.kill(os.getpid(), int(sys.argv[1]))
    time.sleep(10)
    print("not interrupted")
except KeyboardInterrupt:
    print("interrupted")
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_signal_stops_up_as_ctrl_c_does(sig: signal.Signals) -> None:
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(int(sig))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert child.stdout.strip() == "interrupted", child.stdout + child.stderr
