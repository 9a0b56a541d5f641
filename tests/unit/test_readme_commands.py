"""The README's commands work as printed on a fresh clone (#28): each names a make target
the Makefile has, or a tool by its path in the venv that `make` builds (nothing assumes the
venv is on PATH), and each `tiermesh` command line names a command the CLI has."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ops.cli import app

ROOT = Path(__file__).resolve().parents[2]
VENV_TOOLS = {".venv/bin/tiermesh", ".venv/bin/grpcurl"}  # what `make setup` installs


def readme_commands() -> list[str]:
    blocks = re.findall(r"```sh\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    lines = (line.split("#", 1)[0].strip() for block in blocks for line in block.splitlines())
    return [line for line in lines if line]


def make_targets() -> set[str]:
    return set(re.findall(r"^([a-z][\w-]*):", (ROOT / "Makefile").read_text(), re.M))


def test_the_readme_has_commands_to_check() -> None:
    assert len(readme_commands()) >= 10


@pytest.mark.parametrize("line", readme_commands())
def test_a_readme_command_runs_from_a_fresh_clone(line: str) -> None:
    words = shlex.split(line)
    if words[0] == "make":
        assert set(words[1:]) <= make_targets(), f"{line!r}: no such make target"
        return
    assert words[0] in VENV_TOOLS, f"{line!r}: run a tool by its venv path or a make target"
    if words[0] == ".venv/bin/tiermesh":
        commands = [word for word in words[1:3] if not word.startswith("-")]
        # The command (and sub-command) exists: its --help exits 0 without running it.
        for depth in range(len(commands), 0, -1):
            result = CliRunner().invoke(app, [*commands[:depth], "--help"])
            if result.exit_code == 0 and "No such command" not in result.output:
                break
        else:
            pytest.fail(f"{line!r}: the CLI has no such command")
