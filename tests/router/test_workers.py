"""Several router processes on one port (router.data_path.workers, SO_REUSEPORT):
the real `tiermesh router` command, spawned workers, connections spread by the kernel."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
import yaml

from bench.paths import children
from tests.doubles import ScriptedTier
from tiermesh.config import load_settings
from tiermesh.mesh import wait_serving
from tiermesh.v1 import mesh_pb2, mesh_pb2_grpc

LISTEN = "127.0.0.1:50371"
METRICS_PORT = 9791
WORKERS = 2
REQUEST = mesh_pb2.GenerateRequest(npc_id="guard-1", prompt="hi", task=mesh_pb2.TASK_DIALOGUE)


def worker_pids(parent: int) -> list[int]:
    """The spawned workers (not multiprocessing's resource tracker)."""
    return [pid for pid in children(parent) if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]


def running(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def requests_served(metrics_port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("tiermesh_router_requests_total{") and 'code="OK"' in line
    )


@pytest.fixture
def config(tmp_path: Path, scripted_silver: tuple[ScriptedTier, int], redis_server: str) -> Path:
    _, port = scripted_silver
    path = tmp_path / "router.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "router": {
                    "listen": LISTEN,
                    "metrics_port": METRICS_PORT,
                    "tiers": {"silver": {"endpoints": [f"127.0.0.1:{port}"]}},
                    "data_path": {"workers": WORKERS},
                },
                "state": {"backend": "redis", "redis_url": redis_server},
            }
        )
    )
    return path


@pytest_asyncio.fixture
async def workers(config: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    parent = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tiermesh.cli", "router", "--config", str(config)
    )
    try:
        await asyncio.to_thread(wait_serving, "router", LISTEN, 60)
        yield parent
    finally:
        if parent.returncode is None:
            parent.kill()
            await parent.wait()


async def test_connections_spread_over_workers_that_all_serve(
    workers: asyncio.subprocess.Process, silver: ScriptedTier
) -> None:
    assert len(worker_pids(workers.pid)) == WORKERS

    async def one_connection() -> str:
        # A channel of its own (not the process-wide subchannel pool): its own TCP connection.
        options = [("grpc.use_local_subchannel_pool", 1)]
        async with grpc.aio.insecure_channel(LISTEN, options=options) as channel:
            replies = [r async for r in mesh_pb2_grpc.MeshStub(channel).Generate(REQUEST, timeout=10)]
        return "".join(r.text for r in replies)

    texts = await asyncio.gather(*(one_connection() for _ in range(24)))
    assert set(texts) == {"Halt! Who goes there?"}
    served = [await asyncio.to_thread(requests_served, METRICS_PORT + i) for i in range(WORKERS)]
    assert sum(served) == 24
    assert all(served), f"every worker takes connections: {served}"

    workers.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(workers.wait(), 20) == 0


async def test_a_dead_worker_stops_the_router_so_it_restarts_whole(
    workers: asyncio.subprocess.Process,
) -> None:
    pids = worker_pids(workers.pid)
    os.kill(pids[0], signal.SIGKILL)
    assert await asyncio.wait_for(workers.wait(), 20) == 1
    assert not any(map(running, pids[1:])), "the other workers were stopped and reaped"


def test_workers_need_shared_state(tmp_path: Path) -> None:
    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump({"router": {"listen": LISTEN, "data_path": {"workers": 2}}}))
    with pytest.raises(ValueError, match=r"state\.backend: redis"):
        load_settings(path)
