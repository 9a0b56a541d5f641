"""docs/contract.md's C++ and Node snippets are cut from the example clients that
`make test` builds and runs (tests/engine/test_examples.py), so they cannot drift."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = [REPO / "examples/cpp/client.cc", REPO / "examples/node/client.mjs"]
REGION = re.compile(r"^[ \t]*// \[START ([\w-]+)\]\n(.*?)^[ \t]*// \[END \1\]\n", re.S | re.M)


def regions(path: Path) -> dict[str, str]:
    return {name: textwrap.dedent(body).rstrip("\n") for name, body in REGION.findall(path.read_text())}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_snippet_in_the_contract_is_cut_from_an_example(path: Path) -> None:
    found = regions(path)
    assert len(found) >= 4, f"{path.name}: its [START …] / [END …] regions"
    contract = (REPO / "docs/contract.md").read_text()
    for name, body in found.items():
        assert body in contract, f"docs/contract.md lacks {path.name}'s {name!r}, as the file has it"
