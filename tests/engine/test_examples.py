"""The example game clients in other languages (examples/), built by `make examples`,
against the real local mesh: health, a dialogue under a 2 s deadline, an intent within
500 ms, a cancelled stream, NOT_FOUND for an unknown NPC, and (Node) a two-turn Converse.
Each exits 1 on any failure and prints what it got."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.engine.conftest import Mesh

pytestmark = pytest.mark.engine
REPO = Path(__file__).resolve().parents[2]
CPP = REPO / "build/examples/cpp/client"
NODE = REPO / "examples/node"


def run(argv: list[str], cwd: Path) -> str:
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, f"{argv[0]} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def expect_every_call(out: str) -> None:
    assert "health: SERVING" in out
    assert "dialogue (2 s): TIER_" in out
    assert "intent (500 ms): TIER_" in out
    assert "cancelled: CANCELLED" in out
    assert "unknown npc: NOT_FOUND" in out


def test_the_cpp_client_calls_the_mesh(mesh: Mesh) -> None:
    assert CPP.exists(), "`make examples` builds the C++ client (make test does)"
    expect_every_call(run([str(CPP), mesh.router], REPO))


def test_the_node_client_calls_the_mesh(mesh: Mesh) -> None:
    node = shutil.which("node")
    assert node, "Node.js is on these machines (the npm registry is how buf is installed)"
    assert (NODE / "node_modules/@grpc/grpc-js").exists(), "`make examples` installs @grpc/grpc-js"
    out = run([node, "client.mjs", mesh.router], NODE)
    expect_every_call(out)
    assert "converse: " in out
