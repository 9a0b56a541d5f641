"""The real local mesh, started once per test session through `tiermesh up`."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest
import pytest_asyncio
import yaml

from tiermesh.v1 import mesh_pb2_grpc

if TYPE_CHECKING:
    from tiermesh.v1.mesh_pb2_grpc import MeshAsyncStub

# Away from the defaults, so a developer's own `tiermesh up` does not collide.
ROUTER = "127.0.0.1:50151"
SILVER = "127.0.0.1:50161"
ROUTER_METRICS = 9564
SILVER_METRICS = 9565


@dataclass(frozen=True)
class Mesh:
    config: Path
    router: str
    silver: str
    silver_metrics: str

    def tiermesh(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tiermesh.cli", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


@pytest.fixture(scope="session")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    base = yaml.safe_load(Path("config/mesh.yaml").read_text())
    run_dir = tmp_path_factory.mktemp("mesh")
    base["router"].update(listen=ROUTER, metrics_port=ROUTER_METRICS)
    base["router"]["tiers"]["silver"]["endpoints"] = [SILVER]
    base["silver"].update(listen=SILVER, metrics_port=SILVER_METRICS)
    base["mesh"] = {"run_dir": str(run_dir)}
    config = run_dir / "mesh.yaml"
    config.write_text(yaml.safe_dump(base))
    handle = Mesh(config, ROUTER, SILVER, f"http://127.0.0.1:{SILVER_METRICS}/metrics")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIERMESH_")}
    up = subprocess.run(
        [sys.executable, "-m", "tiermesh.cli", "up", "--detach", "--config", str(config)],
        capture_output=True, text=True, timeout=400, env=env, check=False,
    )  # fmt: skip
    if up.returncode != 0:
        logs = "\n".join(p.read_text()[-3000:] for p in (run_dir / "logs").glob("*.log"))
        pytest.fail(f"tiermesh up failed:\n{up.stdout}\n{up.stderr}\n{logs}")
    yield handle
    handle.tiermesh("down", "--config", str(config))


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def mesh_stub(mesh: Mesh) -> AsyncIterator[MeshAsyncStub]:
    async with grpc.aio.insecure_channel(mesh.router) as channel:
        yield mesh_pb2_grpc.MeshStub(channel)


async def scrape(url: str) -> dict[str, float]:
    """One Prometheus scrape as {'name{label="v",...}': value}."""
    from urllib.request import urlopen

    from prometheus_client.parser import text_string_to_metric_families

    def fetch() -> str:
        with urlopen(url, timeout=5) as response:
            return str(response.read().decode())

    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(await asyncio.to_thread(fetch)):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples
