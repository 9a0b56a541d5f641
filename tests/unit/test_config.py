from pathlib import Path

import pytest
from pydantic import ValidationError

from ops.settings import load_settings
from services.gold.settings import GoldSettings
from tiermesh.config import load_section
from tiermesh.tls import TlsSettings

YAML = """
router:
  listen: 127.0.0.1:7000
  tiers:
    silver: {endpoints: ["127.0.0.1:7001"]}
personas:
  guard-1:
    system: You guard the gate.
    intents: [GREET, WARN]
"""


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "mesh.yaml"
    path.write_text(YAML)
    return path


def test_yaml_file_is_read(config_file: Path) -> None:
    settings = load_settings(config_file)
    assert settings.router.listen == "127.0.0.1:7000"
    assert settings.router.tiers["silver"].endpoints == ["127.0.0.1:7001"]
    assert settings.personas["guard-1"].intents == ["GREET", "WARN"]
    # Unset keys keep their defaults.
    assert settings.router.tasks["dialogue"].tiers == ["silver"]


def test_environment_overrides_yaml(config_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIERMESH_ROUTER__LISTEN", "127.0.0.1:7100")
    monkeypatch.setenv("TIERMESH_SILVER__MAX_MODEL_LEN", "1024")
    settings = load_settings(config_file)
    assert settings.router.listen == "127.0.0.1:7100"
    assert settings.silver.max_model_len == 1024
    assert settings.router.tiers["silver"].endpoints == ["127.0.0.1:7001"]


def test_config_path_from_environment(config_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIERMESH_CONFIG", str(config_file))
    assert load_settings().router.listen == "127.0.0.1:7000"


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_settings(tmp_path / "absent.yaml")


def test_route_to_an_unconfigured_tier_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "router:\n  tasks:\n"
        "    intent: {tiers: [gold], default_max_tokens: 4, max_tokens_limit: 8,"
        " default_deadline_s: 1}\n"
    )
    with pytest.raises(ValidationError, match="unconfigured tiers"):
        load_settings(path)


def test_unknown_keys_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "typo.yaml"
    path.write_text("routr:\n  listen: x\n")
    with pytest.raises(ValidationError, match="routr"):
        load_settings(path)


def test_persona_names_must_be_npc_ids(tmp_path: Path) -> None:
    path = tmp_path / "personas.yaml"
    path.write_text("personas:\n  'bad name': {system: x}\n")
    with pytest.raises(ValidationError, match="valid npc ids"):
        load_settings(path)


def test_shipped_local_config_loads() -> None:
    settings = load_settings(Path("config/mesh.yaml"))
    assert {"guard-1", "merchant-1", "innkeeper-1"} <= settings.personas.keys()
    assert all(p.intents for p in settings.personas.values())


def test_a_process_reads_its_own_section_with_the_environment_over_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "mesh.yaml"
    path.write_text("gold:\n  grpc_port: 8101\n  instances: 3\nsecurity:\n  mesh_tls:\n    ca: /ca.pem\n")
    monkeypatch.setenv("TIERMESH_GOLD__INSTANCES", "1")
    gold = load_section(GoldSettings, "gold", path=path)
    assert (gold.grpc_port, gold.instances) == (8101, 1)
    assert load_section(TlsSettings, "security", "mesh_tls", path=path).ca == "/ca.pem"
    assert load_section(GoldSettings, "gold", path=None).threads >= 1  # defaults, no file needed
