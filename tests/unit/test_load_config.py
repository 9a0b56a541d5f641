"""ghz configs and durations, as `tiermesh load` reads them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ops.load import go_duration, load_config


def test_the_committed_load_configs_parse_and_name_real_calls() -> None:
    for path in Path("tests/load").glob("*.json"):
        parsed = load_config(path.read_text())
        assert parsed.call == "tiermesh.v1.Mesh.Generate"
        assert json.loads(path.read_text())["proto"] == "protos/tiermesh/v1/mesh.proto"  # for real ghz


def test_go_durations() -> None:
    assert go_duration("20s") == 20
    assert go_duration("1m30s") == 90
    assert go_duration("250ms") == pytest.approx(0.25)
    with pytest.raises(ValueError, match="not a duration"):
        go_duration("20 seconds")
