"""Bronze against moto (S3, SNS→SQS, SageMaker control plane), the project's
async-endpoint emulator and the inference container (llama.cpp), behind the router."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import grpc
import pytest

from ops.mesh import REPO, components, wait_serving
from ops.settings import load_settings
from tests.engine.conftest import Mesh
from tiermesh.v1 import mesh_pb2

if TYPE_CHECKING:
    from tiermesh.v1.mesh_pb2_grpc import MeshAsyncStub

pytestmark = pytest.mark.engine
FINISHED = {mesh_pb2.JOB_STATE_SUCCEEDED, mesh_pb2.JOB_STATE_FAILED, mesh_pb2.JOB_STATE_CANCELLED}


def lore(prompt: str, max_tokens: int = 24, **fields: object) -> mesh_pb2.GenerateRequest:
    base: dict[str, object] = {
        "npc_id": "innkeeper-1",
        "prompt": prompt,
        "task": mesh_pb2.TASK_LONGFORM,
        "max_tokens": max_tokens,
    }
    base.update(fields)
    return mesh_pb2.GenerateRequest(**base)  # type: ignore[arg-type]


async def submit(stub: MeshAsyncStub, request: mesh_pb2.GenerateRequest, key: str = "") -> mesh_pb2.Job:
    reply = await stub.SubmitJob(mesh_pb2.SubmitJobRequest(request=request, idempotency_key=key), timeout=15)
    return reply.job


async def finished(stub: MeshAsyncStub, job_id: str, within_s: float = 120) -> list[mesh_pb2.Job]:
    """Every state WatchJob reports, up to the finished one."""
    updates = [u.job async for u in stub.WatchJob(mesh_pb2.WatchJobRequest(job_id=job_id), timeout=within_s)]
    assert updates[-1].state in FINISHED
    return updates


async def test_submit_watch_and_get_the_result(mesh_stub: MeshAsyncStub) -> None:
    started = time.monotonic()
    job = await submit(mesh_stub, lore(f"A rumour about the old mill, told at {time.time()}."))
    assert time.monotonic() - started < 5  # accepted at once, not generated first
    assert job.job_id
    assert job.state in (mesh_pb2.JOB_STATE_QUEUED, mesh_pb2.JOB_STATE_RUNNING)
    updates = await finished(mesh_stub, job.job_id)
    done = updates[-1]
    assert done.state == mesh_pb2.JOB_STATE_SUCCEEDED, done.error
    assert done.text.split()
    assert done.usage.completion_tokens > 0
    fetched = (await mesh_stub.GetJob(mesh_pb2.GetJobRequest(job_id=job.job_id), timeout=5)).job
    assert fetched.text == done.text
    assert fetched.request.prompt == job.request.prompt


async def test_a_finished_job_prewarms_generate(mesh_stub: MeshAsyncStub) -> None:
    request = lore(f"The backstory of the blacksmith, version {time.time()}.")
    job = await submit(mesh_stub, request)
    done = (await finished(mesh_stub, job.job_id))[-1]
    assert done.state == mesh_pb2.JOB_STATE_SUCCEEDED, done.error
    started = time.monotonic()
    served = [r async for r in mesh_stub.Generate(request, timeout=30)]
    assert [(r.text, r.tier) for r in served] == [(done.text, mesh_pb2.TIER_CACHE)]
    assert time.monotonic() - started < 1.0
    fresh = [r async for r in mesh_stub.Generate(lore(request.prompt, bypass_cache=True), timeout=60)]
    assert mesh_pb2.TIER_CACHE not in {r.tier for r in fresh}


async def test_a_long_form_generate_served_by_bronze_is_cached_for_the_next(mesh_stub: MeshAsyncStub) -> None:
    request = lore(f"A ballad about the bridge troll, verse {time.time()}.")
    first = [r async for r in mesh_stub.Generate(request, timeout=120)]
    assert {r.tier for r in first} == {mesh_pb2.TIER_BRONZE}
    again = [r async for r in mesh_stub.Generate(request, timeout=30)]
    assert [(r.text, r.tier) for r in again] == [("".join(r.text for r in first), mesh_pb2.TIER_CACHE)]


async def test_resubmitting_with_the_same_key_returns_the_same_job(mesh_stub: MeshAsyncStub) -> None:
    key = f"quest-{time.time()}"
    first = await submit(mesh_stub, lore("A quest about a lost ring."), key)
    again = await submit(mesh_stub, lore("A quest about a lost ring."), key)
    other = await submit(mesh_stub, lore("A quest about a lost ring."), key + "-b")
    assert again.job_id == first.job_id
    assert other.job_id != first.job_id


async def test_a_failed_inference_fails_the_job_with_the_reason(mesh_stub: MeshAsyncStub) -> None:
    # The container takes at most 512 tokens; the router's long-form limit is 1024.
    job = await submit(mesh_stub, lore("An epic saga.", max_tokens=1000))
    done = (await finished(mesh_stub, job.job_id))[-1]
    assert done.state == mesh_pb2.JOB_STATE_FAILED
    assert "max_tokens 1000" in done.error


async def test_bad_job_calls_get_precise_statuses(mesh_stub: MeshAsyncStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await mesh_stub.GetJob(mesh_pb2.GetJobRequest(job_id="no-such-job"), timeout=5)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await submit(mesh_stub, lore("x" * 5000))  # over the payload limit (4096 bytes here)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "limit is 4096" in (caught.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await submit(mesh_stub, lore(""))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    job = await submit(mesh_stub, lore("A short toast."))
    await finished(mesh_stub, job.job_id)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await mesh_stub.CancelJob(mesh_pb2.CancelJobRequest(job_id=job.job_id), timeout=5)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_a_running_job_can_be_cancelled(mesh_stub: MeshAsyncStub) -> None:
    job = await submit(mesh_stub, lore("The full history of the kingdom.", max_tokens=400))
    cancelled = (await mesh_stub.CancelJob(mesh_pb2.CancelJobRequest(job_id=job.job_id), timeout=5)).job
    assert cancelled.state == mesh_pb2.JOB_STATE_CANCELLED
    assert (await finished(mesh_stub, job.job_id))[-1].state == mesh_pb2.JOB_STATE_CANCELLED


async def test_bridge_killed_with_20_running_jobs_loses_none(mesh: Mesh, mesh_stub: MeshAsyncStub) -> None:
    jobs = [
        await submit(mesh_stub, lore(f"Tavern gossip number {i} at {time.time()}.", max_tokens=16))
        for i in range(20)
    ]
    state_file = mesh.run_dir / "mesh.json"
    pids = json.loads(await asyncio.to_thread(state_file.read_text))
    os.killpg(pids["bronze"], signal.SIGKILL)
    # Restarted without notifications: every job must finish by polling S3 alone
    # (and the notifications sent while it was down are as good as lost).
    settings = load_settings(mesh.config)
    [bronze] = [c for c in components(settings, mesh.config) if c.name == "bronze"]
    env = os.environ | {"TIERMESH_BRONZE__NOTIFICATIONS": "false"}
    log = await asyncio.to_thread((mesh.run_dir / "logs" / "bronze-restarted.log").open, "ab")
    process = await asyncio.to_thread(
        subprocess.Popen, bronze.argv, cwd=REPO, env=env, stdout=log, stderr=log, start_new_session=True
    )
    pids["bronze"] = process.pid
    await asyncio.to_thread(state_file.write_text, json.dumps(pids))  # `tiermesh down` stops it
    await asyncio.to_thread(wait_serving, "bronze", bronze.grpc_health, 60)
    results = await asyncio.gather(*(finished(mesh_stub, job.job_id, within_s=180) for job in jobs))
    assert [updates[-1].state for updates in results] == [mesh_pb2.JOB_STATE_SUCCEEDED] * 20
    for job in jobs:
        fetched = (await mesh_stub.GetJob(mesh_pb2.GetJobRequest(job_id=job.job_id), timeout=5)).job
        assert fetched.text


def test_endpoint_status_command(mesh: Mesh) -> None:
    run = [sys.executable, "-m", "ops.cli", "bronze-status", "--json", "--config", str(mesh.config)]
    ok = subprocess.run(run, capture_output=True, text=True, timeout=60, check=False)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert json.loads(ok.stdout)["ok"] is True
    env = os.environ | {"TIERMESH_BRONZE__ENDPOINT_NAME": "no-such-endpoint"}
    bad = subprocess.run(run, capture_output=True, text=True, timeout=60, check=False, env=env)
    assert bad.returncode == 1
    failed = [c["name"] for c in json.loads(bad.stdout)["checks"] if not c["ok"]]
    assert failed == ["endpoint"]
