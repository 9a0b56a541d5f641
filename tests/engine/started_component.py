"""A component started on its own, as the mesh starts it: the stop-while-starting tests
signal the real process at the moment its log says it has reached a step of its start,
then judge its stop as the mesh's `down` does."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

import yaml

from ops.mesh import FOLLOW_LEADER_S, group_alive

REPO = Path(__file__).resolve().parents[2]


def wait_for_log(log: Path, line: bytes, process: subprocess.Popen[bytes], within_s: float) -> None:
    """Until `line` is in `log`; fails with the log's end if the process exits first."""
    deadline = time.monotonic() + within_s
    while line not in log.read_bytes():
        assert process.poll() is None, log.read_text(errors="replace")[-2000:]
        assert time.monotonic() < deadline, f"no {line!r} in {log.name} after {within_s} s"
        time.sleep(0.02)


def group_left_running(leader: int, within_s: float = FOLLOW_LEADER_S) -> bool:
    """Whether the exited `leader`'s group still runs `within_s` after: by default the
    time `down` gives a group to follow its leader out (its own children, such as
    multiprocessing's resource tracker, exit only once they see their parent gone)."""
    deadline = time.monotonic() + within_s
    while group_alive(leader):
        if time.monotonic() > deadline:
            return True
        time.sleep(0.02)
    return False


def start_alone(
    argv: list[str], section: str, settings: Mapping[str, object], run_dir: Path
) -> tuple[subprocess.Popen[bytes], Path]:
    """Start one component as the mesh does (a session of its own, from the repository),
    with config/mesh.yaml's `section` updated by `settings` (ports away from a running
    mesh's); the process, and its log."""
    config = yaml.safe_load((REPO / "config/mesh.yaml").read_text())
    config[section].update(settings)
    path = run_dir / "mesh.yaml"
    path.write_text(yaml.safe_dump(config))
    log = run_dir / f"{section}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*argv, "--config", str(path)],
            cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    return process, log
