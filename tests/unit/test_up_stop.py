"""`tiermesh up` stopped while it starts: the stop is its own `finally`'s, shielded from a
second Ctrl-C and reported, and an `up` that finds a mesh running leaves that mesh alone.
Checked in a child process, since `up` sets the process's signal handlers, with the mesh
scripted: the real stop while starting is the engine tests' (Gold's and Silver's)."""

from __future__ import annotations

import subprocess
import sys

CHILD = """
import sys
import ops.mesh

class ScriptedMesh:
    '''TEST DOUBLE: a LocalMesh whose start is interrupted, or that finds one running.'''

    def __init__(self, settings, config_file):
        pass

    def check_not_running(self):
        if sys.argv[1] == "running":
            raise ops.mesh.MeshError("the mesh is already running")

    def up(self, stop_if_unfinished=True):
        print(f"up stop_if_unfinished={stop_if_unfinished}")
        raise KeyboardInterrupt  # Ctrl-C while a component loads

    def down(self, timeout=20.0):
        print("down")
        return [ops.mesh.Stopped("silver", 1.5, False), ops.mesh.Stopped("gold", 3.0, False)]

ops.mesh.LocalMesh = ScriptedMesh
from ops.cli import app
app(["up"])
"""


def up(mode: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", CHILD, mode], capture_output=True, text=True, timeout=60, check=False
    )


def test_an_up_interrupted_while_starting_stops_once_and_says_what_stopped() -> None:
    child = up("interrupted")
    assert child.returncode == 0, child.stderr
    # The start leaves the stop to `up`, which stops once, with signals ignored, and says so.
    assert child.stdout.count("up stop_if_unfinished=False") == 1
    assert child.stdout.count("down") == 1
    assert "stopped: silver 1.5 s, gold 3.0 s" in child.stdout
    assert "stopped while starting" in child.stderr


def test_an_up_that_finds_the_mesh_running_leaves_it_alone() -> None:
    child = up("running")
    assert child.returncode == 1
    assert "already running" in child.stderr
    assert "down" not in child.stdout
    assert "up stop_if" not in child.stdout
