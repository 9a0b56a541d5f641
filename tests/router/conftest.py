from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from typing import Literal

import grpc
import pytest
import pytest_asyncio

from bench.paths import redis_command
from ops.settings import Settings
from router.app import Router, start_router
from router.settings import Persona, RouterSettings, TierSettings
from tests.doubles import ScriptedTier, start_scripted_tier
from tiermesh.v1 import mesh_pb2_grpc

REDIS_PORT = 6391


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """A real redis-server (Debian's) for the tests of shared state."""
    assert shutil.which("redis-server"), (
        "redis-server is installed by `make setup` (Debian package redis-server)"
    )
    process = subprocess.Popen(redis_command(REDIS_PORT), stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{REDIS_PORT}/0"
    deadline = time.monotonic() + 10
    while (
        subprocess.run(["redis-cli", "-p", str(REDIS_PORT), "ping"], capture_output=True, check=False).stdout
        != b"PONG\n"
    ):
        assert time.monotonic() < deadline, "redis-server did not start"
        time.sleep(0.1)
    yield url
    process.terminate()
    process.wait(10)


def router_settings(silver_endpoint: str) -> Settings:
    return Settings(
        router=RouterSettings(
            listen="127.0.0.1:0",
            metrics_port=0,
            max_message_bytes=64 * 1024,
            tiers={"silver": TierSettings(endpoints=[silver_endpoint])},
        ),
        personas={"guard-1": Persona(system="You are Brom, the north gate guard.")},
    )


async def start_on(plane: Literal["grpc", "native"], settings: Settings) -> Router:
    """A router whose data path is `plane` on both sides: grpc.aio's, or nghttp2's for the
    callers' connections and the tier's (data_path.edge, data_path.tier_client)."""
    settings.router.data_path.edge = settings.router.data_path.tier_client = plane
    return await start_router(settings.router_config())


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def scripted_silver() -> AsyncIterator[tuple[ScriptedTier, int]]:
    tier = ScriptedTier()
    serving = await start_scripted_tier(tier)
    yield tier, serving.port
    await serving.server.stop(None)


@pytest.fixture
def silver(scripted_silver: tuple[ScriptedTier, int]) -> ScriptedTier:
    tier, _ = scripted_silver
    tier.reset()
    return tier


# Every test of the router runs on both data planes: grpc.aio's, and nghttp2's for the
# callers' connections and the tier's (data_path.edge, data_path.tier_client).
@pytest_asyncio.fixture(scope="session", loop_scope="session", params=["grpc", "native"])
async def router(
    request: pytest.FixtureRequest, scripted_silver: tuple[ScriptedTier, int]
) -> AsyncIterator[Router]:
    _, port = scripted_silver
    router = await start_on(request.param, router_settings(f"127.0.0.1:{port}"))
    yield router
    await router.close(None)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def stub(router: Router) -> AsyncIterator[mesh_pb2_grpc.MeshAsyncStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{router.port}") as channel:
        yield mesh_pb2_grpc.MeshStub(channel)
