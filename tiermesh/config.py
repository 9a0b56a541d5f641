"""The mesh's configuration, as the floor below everything reads it: the names every
part shares, where the YAML file is, and one section of it for a process that needs only
its own. Each section's model lives beside its owner (router/settings.py,
services/*/settings.py); the whole mesh's composes them on the top floor (ops/settings.py).

Precedence (highest first): environment variables (`TIERMESH_GOLD__GRPC_PORT=...`), the
YAML file, the section's defaults. The YAML file is `--config`, else `$TIERMESH_CONFIG`,
else `config/mesh.yaml` when present.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel

TaskName = Literal["intent", "bark", "dialogue", "longform"]
TierName = Literal["gold", "silver", "bronze"]
TASKS: tuple[TaskName, ...] = ("intent", "bark", "dialogue", "longform")
# Traffic classes, highest first (tiermesh.v1.Priority): the router's queues serve them
# in this order and shed them in the reverse.
PriorityName = Literal["critical", "standard", "sheddable"]
PRIORITIES: tuple[PriorityName, ...] = ("critical", "standard", "sheddable")

DEFAULT_CONFIG = Path("config/mesh.yaml")
ENV_PREFIX = "TIERMESH_"
M = TypeVar("M", bound=BaseModel)


def config_path(explicit: str | Path | None = None) -> Path | None:
    """The YAML file to read: explicit, $TIERMESH_CONFIG, or config/mesh.yaml if present."""
    if explicit:
        return Path(explicit)
    if env := os.environ.get("TIERMESH_CONFIG"):
        return Path(env)
    return DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None


def load_section(model: type[M], *keys: str, path: str | Path | None = None) -> M:
    """The section at `keys` (e.g. "gold"; "security", "mesh_tls") of the YAML file (see
    `config_path`), with TIERMESH_<KEY>__<FIELD> environment variables over it, as the
    whole mesh's settings would read it."""
    yaml_file = config_path(path)
    if yaml_file is not None and not yaml_file.exists():
        raise FileNotFoundError(f"config file not found: {yaml_file}")
    data: Any = yaml.safe_load(yaml_file.read_text()) if yaml_file is not None else {}
    for key in keys:
        data = (data or {}).get(key) or {}
    prefix = ENV_PREFIX + "__".join(key.upper() for key in keys) + "__"
    for name, value in os.environ.items():
        if name.startswith(prefix):
            *parents, leaf = name.removeprefix(prefix).lower().split("__")
            node = data
            for parent in parents:
                node = node.setdefault(parent, {})
            node[leaf] = _env_value(value)
    return model.model_validate(data)


def _env_value(value: str) -> Any:
    """An environment value as pydantic-settings reads one: JSON where it parses (lists,
    maps, numbers), else the string."""
    try:
        return json.loads(value)
    except ValueError:
        return value
