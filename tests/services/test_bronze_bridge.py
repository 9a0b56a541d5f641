"""The Bronze bridge when its AWS dependencies are unreachable: nothing is accepted
that could be lost, and the caller hears UNAVAILABLE (no engine, no AWS needed)."""

from __future__ import annotations

import grpc
import pytest

from services.bronze.bridge import Bridge
from services.bronze.settings import BronzeSettings
from tiermesh.chat import Message, to_tier
from tiermesh.errors import StatusError
from tiermesh.tier.v1 import tier_pb2
from tiermesh.v1 import mesh_pb2

DEAD = "http://127.0.0.1:1"  # nothing listens: connection refused


def a_job(prompt: str = "A quest about a lost ring.") -> tier_pb2.SubmitJobRequest:
    job = tier_pb2.SubmitJobRequest(
        messages=to_tier([Message("system", "You tell quests."), Message("user", prompt)]),
        max_tokens=16,
        content_key="longform/abc",
    )
    job.submit.request.CopyFrom(
        mesh_pb2.GenerateRequest(npc_id="npc-1", prompt=prompt, task=mesh_pb2.TASK_LONGFORM)
    )
    return job


async def test_s3_unreachable_is_unavailable_and_accepts_nothing() -> None:
    bridge = Bridge(
        BronzeSettings(s3_url=DEAD, sns_url=DEAD, sqs_url=DEAD, sagemaker_url=DEAD, runtime_url=DEAD)
    )
    with pytest.raises(StatusError) as caught:
        await bridge.submit(a_job())
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert "job store (S3) unavailable" in caught.value.message


async def test_oversized_payload_is_refused_before_touching_aws() -> None:
    bridge = Bridge(BronzeSettings(s3_url=DEAD, max_payload_bytes=1024))
    with pytest.raises(StatusError) as caught:
        await bridge.submit(a_job("x" * 2000))
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "the limit is 1024" in caught.value.message


async def test_the_jobs_service_maps_bridge_errors_to_statuses() -> None:
    from services.bronze.server import register
    from tiermesh.serving import start_grpc_server
    from tiermesh.tier.v1 import tier_pb2_grpc

    bridge = Bridge(BronzeSettings(s3_url=DEAD, max_payload_bytes=1024))
    serving = await start_grpc_server(
        "127.0.0.1:0", lambda server: register(server, bridge), ["tiermesh.tier.v1.Jobs"]
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{serving.port}") as channel:
            jobs = tier_pb2_grpc.JobsStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await jobs.SubmitJob(a_job("x" * 2000), timeout=10)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await jobs.GetJob(tier_pb2.GetJobRequest(job_id="j1"), timeout=20)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE  # S3 is down
    finally:
        await serving.server.stop(None)
