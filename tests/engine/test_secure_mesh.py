"""The local mesh in its secure profile: mutual TLS between router and Silver, TLS at
the router's edge, API-key authentication (`tiermesh up` with certificates from
`tiermesh certs`)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ops.certs import write_local_certs
from tests.engine.conftest import start_mesh, stop_mesh
from tests.fakes import request
from tiermesh.v1 import mesh_pb2, mesh_pb2_grpc

pytestmark = pytest.mark.engine
ROUTER, SILVER = "127.0.0.1:50351", "127.0.0.1:50361"
API_KEY = "local-test-key"


@pytest.fixture(scope="module")
def secure_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    run_dir = tmp_path_factory.mktemp("secure-mesh")
    certs = run_dir / "certs"
    write_local_certs(certs)
    base = yaml.safe_load(Path("config/mesh.yaml").read_text())
    pem = {"ca": str(certs / "ca.crt")}
    mesh_pem = {**pem, "cert": str(certs / "mesh.crt"), "key": str(certs / "mesh.key")}
    key_digest = hashlib.sha256(API_KEY.encode()).hexdigest()
    config: dict[str, Any] = {
        "router": {
            "listen": ROUTER,
            "metrics_port": 0,
            "tiers": {"silver": {"endpoints": [SILVER], "hedge": False}},
            "tasks": {task: {**rule, "tiers": ["silver"]} for task, rule in base["router"]["tasks"].items()},
        },
        "silver": {**base["silver"], "listen": SILVER, "metrics_port": 0, "mcp_servers": []},
        "personas": base["personas"],
        # The CPU stand-ins' SLOs, as the local mesh has them (not production's 250 ms).
        "validation": base["validation"],
        "security": {
            "edge_tls": {**pem, "cert": str(certs / "edge.crt"), "key": str(certs / "edge.key")},
            "mesh_tls": {**mesh_pem, "require_client_cert": True},
            "auth": {
                "required": True,
                "api_keys": [{"client_id": "test-studio", "sha256": key_digest}],
            },
        },
    }  # fmt: skip
    path = start_mesh(config, run_dir)
    yield path, certs
    stop_mesh(path)


async def test_authenticated_client_gets_silver_text_through_mtls(secure_mesh: tuple[Path, Path]) -> None:
    _, certs = secure_mesh
    credentials = grpc.ssl_channel_credentials(root_certificates=(certs / "ca.crt").read_bytes())
    async with grpc.aio.secure_channel(ROUTER, credentials) as channel:
        stub = mesh_pb2_grpc.MeshStub(channel)
        req = request(prompt="Good evening.", max_tokens=8)
        responses = [r async for r in stub.Generate(req, timeout=60, metadata=(("x-api-key", API_KEY),))]
        assert "".join(r.text for r in responses).strip()
        assert responses[0].tier == mesh_pb2.TIER_SILVER
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            [r async for r in stub.Generate(req, timeout=60)]
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_silver_refuses_callers_without_the_mesh_certificate(secure_mesh: tuple[Path, Path]) -> None:
    _, certs = secure_mesh
    server_only = grpc.ssl_channel_credentials(root_certificates=(certs / "ca.crt").read_bytes())
    for channel in (grpc.aio.insecure_channel(SILVER), grpc.aio.secure_channel(SILVER, server_only)):
        async with channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_validate_speaks_mtls_to_silver(secure_mesh: tuple[Path, Path]) -> None:
    config, _ = secure_mesh
    command = [sys.executable, "-m", "ops.cli", "validate", "silver", "--json", "--config", str(config)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
