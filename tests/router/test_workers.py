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
from typing import Any

import grpc
import pytest
import pytest_asyncio
import yaml

from bench.paths import children, proc_kb
from ops.mesh import wait_http_ready, wait_serving
from ops.settings import load_settings
from tests.doubles import ScriptedTier
from tiermesh.v1 import mesh_pb2, mesh_pb2_grpc

LISTEN = "127.0.0.1:50371"
METRICS_PORT = 9791
WORKERS = 2
REQUEST = mesh_pb2.GenerateRequest(npc_id="guard-1", prompt="hi", task=mesh_pb2.TASK_DIALOGUE)


def worker_pids(parent: int) -> list[int]:
    """The spawned workers (not multiprocessing's resource tracker)."""
    return [pid for pid in children(parent) if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]


def running(pid: int) -> bool:
    """Alive, not a zombie (an orphan's exit may never be reaped in a container)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def requests_served(metrics_port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("tiermesh_router_requests_total{") and 'code="OK"' in line
    )


def cpus(listed: str) -> set[int]:
    """'0-2,5' → {0, 1, 2, 5}: the kernel's CPU list format."""
    out: set[int] = set()
    for part in listed.split(","):
        first, _, last = part.partition("-")
        out.update(range(int(first), int(last or first) + 1))
    return out


def thread_cpus(pid: int) -> list[set[int]]:
    """The CPUs each thread of `pid` may run on."""
    found = []
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        for line in status.read_text().splitlines():
            if line.startswith("Cpus_allowed_list:"):
                found.append(cpus(line.split(":", 1)[1].strip()))
    return found


@pytest.fixture
def data_path() -> dict[str, Any]:
    return {"workers": WORKERS}


@pytest.fixture
def config(
    tmp_path: Path, scripted_silver: tuple[ScriptedTier, int], redis_server: str, data_path: dict[str, Any]
) -> Path:
    _, port = scripted_silver
    path = tmp_path / "router.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "router": {
                    "listen": LISTEN,
                    "metrics_port": METRICS_PORT,
                    "tiers": {"silver": {"endpoints": [f"127.0.0.1:{port}"]}},
                    "data_path": data_path,
                },
                "state": {"backend": "redis", "redis_url": redis_server},
                "personas": {"guard-1": {"system": "You are Brom, the north gate guard."}},
            }
        )
    )
    return path


@pytest_asyncio.fixture
async def workers(config: Path, data_path: dict[str, Any]) -> AsyncIterator[asyncio.subprocess.Process]:
    parent = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ops.cli", "router", "--config", str(config)
    )
    try:
        await asyncio.to_thread(wait_serving, "router", LISTEN, 60)
        # SERVING is the first worker's word only: each worker serves /metrics once it
        # listens, and until every one does the kernel spreads connections over fewer.
        urls = tuple(f"http://127.0.0.1:{METRICS_PORT + i}/metrics" for i in range(data_path["workers"]))
        await asyncio.to_thread(wait_http_ready, "router workers", urls, 60)
        yield parent
    finally:
        if parent.returncode is None:
            parent.terminate()
            try:
                await asyncio.wait_for(parent.wait(), 20)
            except TimeoutError:
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


@pytest.mark.parametrize("data_path", [{"workers": WORKERS, "pin_cpus": True}])
async def test_pinned_workers_run_each_on_one_cpu_of_its_own(workers: asyncio.subprocess.Process) -> None:
    allowed = sorted(os.sched_getaffinity(0))
    per_worker = []
    for pid in worker_pids(workers.pid):
        threads = thread_cpus(pid)
        assert len(threads) > 1, "gRPC's threads are there too"
        assert all(len(cpus) == 1 for cpus in threads), f"every thread on one CPU: {threads}"
        assert len({min(cpus) for cpus in threads}) == 1, f"all threads on the same CPU: {threads}"
        per_worker.append(min(threads[0]))
    assert sorted(per_worker) == sorted(allowed[i % len(allowed)] for i in range(WORKERS))
    async with grpc.aio.insecure_channel(LISTEN) as channel:
        replies = [r async for r in mesh_pb2_grpc.MeshStub(channel).Generate(REQUEST, timeout=10)]
    assert "".join(r.text for r in replies) == "Halt! Who goes there?"


async def test_a_dead_worker_stops_the_router_so_it_restarts_whole(
    workers: asyncio.subprocess.Process,
) -> None:
    pids = worker_pids(workers.pid)
    os.kill(pids[0], signal.SIGKILL)
    assert await asyncio.wait_for(workers.wait(), 20) == 1
    assert not any(map(running, pids[1:])), "the other workers were stopped and reaped"


async def test_workers_stop_when_their_supervisor_is_killed(workers: asyncio.subprocess.Process) -> None:
    pids = worker_pids(workers.pid)
    workers.kill()
    await workers.wait()
    for _ in range(100):
        if not any(map(running, pids)):
            break
        await asyncio.sleep(0.1)
    assert not any(map(running, pids)), "no orphaned worker holds the port"


def environment(pid: int) -> dict[str, str]:
    pairs = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(pair.decode().partition("=")[::2] for pair in pairs if pair)


THP_OFF = "[never]" in Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()


@pytest.mark.parametrize(
    ("data_path", "huge"), [({"workers": WORKERS}, True), ({"workers": 1, "huge_page_heap": False}, False)]
)
async def test_the_router_command_puts_its_heap_on_huge_pages(
    workers: asyncio.subprocess.Process, huge: bool
) -> None:
    # The command started itself again in place (same pid), and its workers inherited it.
    processes = [workers.pid, *worker_pids(workers.pid)]
    for pid in processes:
        env = environment(pid)
        assert (env.get("PYTHONMALLOC") == "malloc") is huge
        assert ("glibc.malloc.hugetlb=1" in env.get("GLIBC_TUNABLES", "").split(":")) is huge
    async with grpc.aio.insecure_channel(LISTEN) as channel:
        replies = [r async for r in mesh_pb2_grpc.MeshStub(channel).Generate(REQUEST, timeout=10)]
    assert "".join(r.text for r in replies) == "Halt! Who goes there?"
    if huge and not THP_OFF:  # the kernel backs the serving process's heap with 2 MiB pages
        assert proc_kb(processes[-1], "smaps_rollup", "AnonHugePages") >= 2048


def test_workers_need_shared_state(tmp_path: Path) -> None:
    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump({"router": {"listen": LISTEN, "data_path": {"workers": 2}}}))
    with pytest.raises(ValueError, match=r"state\.backend: redis"):
        load_settings(path)
