"""The real local mesh, started once per test session through `tiermesh up`."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest
import pytest_asyncio
import yaml

from ops.stop_check import before_stop, left_after, shared_memory
from tiermesh.v1 import mesh_pb2_grpc

if TYPE_CHECKING:
    from tiermesh.v1.mesh_pb2_grpc import MeshAsyncStub

# Away from the defaults, so a developer's own `tiermesh up` does not collide.
ROUTER = "127.0.0.1:50151"
SILVER = "127.0.0.1:50161"
ROUTER_METRICS = 9564
SILVER_METRICS = 9565
GOLD_PORTS = {"grpc_port": 8101, "http_port": 8100, "metrics_port": 8102}
BRONZE = "127.0.0.1:50171"
MOTO = "http://127.0.0.1:5105"
BRONZE_SETTINGS = {
    "listen": BRONZE,
    "moto_port": 5105,
    "emulator_port": 8185,
    "container_port": 8180,
    "s3_url": MOTO,
    "sns_url": MOTO,
    "sqs_url": MOTO,
    "sagemaker_url": MOTO,
    "runtime_url": "http://127.0.0.1:8185",
    # Small, so a test can go over it with a valid prompt.
    "max_payload_bytes": 4096,
    "metrics_port": 9566,
}
PROMETHEUS = "http://127.0.0.1:9190"


@dataclass(frozen=True)
class Mesh:
    config: Path
    router: str
    silver: str
    silver_metrics: str
    gold: str
    router_metrics: str

    @property
    def run_dir(self) -> Path:
        return self.config.parent

    def tiermesh(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ops.cli", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


def start_mesh(config: dict[str, Any], run_dir: Path) -> Path:
    """`tiermesh up --detach` with `config` written into `run_dir`; the config path."""
    config["mesh"] = {**config.get("mesh", {}), "run_dir": str(run_dir)}
    path = run_dir / "mesh.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIERMESH_")}
    up = subprocess.run(
        [sys.executable, "-m", "ops.cli", "up", "--detach", "--config", str(path)],
        capture_output=True, text=True, timeout=400, env=env, check=False,
    )  # fmt: skip
    if up.returncode != 0:
        logs = "\n".join(p.read_text()[-3000:] for p in (run_dir / "logs").glob("*.log"))
        pytest.fail(f"tiermesh up failed:\n{up.stdout}\n{up.stderr}\n{logs}")
    return path


def stop_mesh(config: Path) -> str:
    """`tiermesh down`; what it printed."""
    down = subprocess.run(
        [sys.executable, "-m", "ops.cli", "down", "--config", str(config)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    return down.stdout + down.stderr


def stop_cleanly(path: Path, memory_before: set[str]) -> None:
    """Stop the mesh as a developer would, and fail unless the stop was clean: every
    component out on SIGTERM (none killed after `down`'s grace), no traceback logged
    while stopping, no shared-memory segment and no port left behind (#28)."""
    before = before_stop(path.parent / "logs", memory_before)
    printed = stop_mesh(path)
    problems = left_after(before, yaml.safe_load(path.read_text())).problems()
    if "stopped:" not in printed or "(killed)" in printed:
        problems.insert(0, f"tiermesh down: {printed.strip()}")
    print(f"\n{printed.strip()}")  # each component's stop time, in the test log
    assert not problems, "the mesh did not stop cleanly:\n" + "\n".join(problems)


@pytest.fixture(scope="session")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    """The local mesh (Gold, Silver, router) as config/mesh.yaml has it, on test ports."""
    config = yaml.safe_load(Path("config/mesh.yaml").read_text())
    config["router"].update(listen=ROUTER, metrics_port=ROUTER_METRICS)
    config["router"]["tiers"]["silver"]["endpoints"] = [SILVER]
    config["router"]["tiers"]["gold"]["endpoints"] = [f"127.0.0.1:{GOLD_PORTS['grpc_port']}"]
    config["silver"].update(listen=SILVER, metrics_port=SILVER_METRICS)
    config["gold"].update(GOLD_PORTS)
    config["router"]["tiers"]["bronze"]["endpoints"] = [BRONZE]
    config["bronze"].update(BRONZE_SETTINGS)
    config["mesh"] = {"prometheus_port": 9190, "scrape_interval_s": 1}
    memory_before = shared_memory()
    path = start_mesh(config, tmp_path_factory.mktemp("mesh"))
    yield Mesh(
        path,
        ROUTER,
        SILVER,
        f"http://127.0.0.1:{SILVER_METRICS}/metrics",
        f"127.0.0.1:{GOLD_PORTS['grpc_port']}",
        f"http://127.0.0.1:{ROUTER_METRICS}/metrics",
    )
    # Every engine-test session ends by checking the stop of the mesh it used.
    stop_cleanly(path, memory_before)


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
