"""TLS, mutual TLS and client authentication over real gRPC: a game client → router
(edge TLS requiring client certificates, API keys or JWT) → a tier that requires
the router's mesh certificate."""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import jwt
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ops.certs import write_local_certs
from ops.settings import SecuritySettings, Settings
from router.app import Router
from router.settings import ApiKey, AuthSettings, JwtSettings
from tests.doubles import ScriptedTier, start_scripted_tier
from tests.fakes import request
from tests.router.conftest import router_settings, start_on
from tiermesh.tls import TlsSettings
from tiermesh.v1 import mesh_pb2, mesh_pb2_grpc

pytestmark = pytest.mark.asyncio(loop_scope="session")
KEYS = {"studio-a": "key-for-studio-a", "tiny": "key-for-a-tiny-quota"}
JWT_SECRET = "a-shared-secret-for-hs256-tokens-0123456789"
Metadata = tuple[tuple[str, str], ...]


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("certs")
    write_local_certs(out)
    write_local_certs(out / "rogue")  # another CA: certificates nobody here trusts
    return out


def mesh_tls(certs: Path, **changes: object) -> TlsSettings:
    base = TlsSettings(
        cert=str(certs / "mesh.crt"),
        key=str(certs / "mesh.key"),
        ca=str(certs / "ca.crt"),
        require_client_cert=True,
    )
    return base.model_copy(update=changes)


def secure_settings(certs: Path, tier_port: int, router_mesh_tls: TlsSettings) -> Settings:
    settings = router_settings(f"127.0.0.1:{tier_port}")
    settings.security = SecuritySettings(
        edge_tls=TlsSettings(
            cert=str(certs / "edge.crt"), key=str(certs / "edge.key"), ca=str(certs / "ca.crt"),
            require_client_cert=True,
        ),
        mesh_tls=router_mesh_tls,
        auth=AuthSettings(
            required=True,
            api_keys=[
                ApiKey(client_id="studio-a", sha256=sha(KEYS["studio-a"]), rate_per_s=1000, burst=1000),
                ApiKey(client_id="tiny", sha256=sha(KEYS["tiny"]), rate_per_s=0.01, burst=1),
            ],
            jwt=JwtSettings(secret=JWT_SECRET, audience="tiermesh"),
        ),
    )  # fmt: skip
    return settings


@pytest_asyncio.fixture(scope="module", loop_scope="session", params=["grpc", "native"])
async def secure(
    request: pytest.FixtureRequest, certs: Path
) -> AsyncIterator[tuple[ScriptedTier, Router, Router]]:
    """A tier requiring mesh client certs; a router trusted by it; a router with a
    certificate from another CA. On both data planes (TLS by gRPC, or by asyncio's ssl)."""
    tier = ScriptedTier()
    serving = await start_scripted_tier(tier, tls=mesh_tls(certs))

    async def secure_router(mesh: TlsSettings) -> Router:
        return await start_on(request.param, secure_settings(certs, serving.port, mesh))

    router = await secure_router(mesh_tls(certs))
    rogue = certs / "rogue"
    stranger = mesh_tls(certs, cert=str(rogue / "mesh.crt"), key=str(rogue / "mesh.key"))
    untrusted = await secure_router(stranger)
    yield tier, router, untrusted
    await router.close(None)
    await untrusted.close(None)
    await serving.server.stop(None)


def client_channel(certs: Path, port: int, cert_dir: Path | None = None) -> grpc.aio.Channel:
    cert_dir = cert_dir or certs
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(certs / "ca.crt").read_bytes(),
        private_key=(cert_dir / "client.key").read_bytes(),
        certificate_chain=(cert_dir / "client.crt").read_bytes(),
    )
    return grpc.aio.secure_channel(f"localhost:{port}", credentials)


async def call(
    channel: grpc.aio.Channel,
    metadata: tuple[tuple[str, str], ...],
    req: mesh_pb2.GenerateRequest | None = None,
) -> list[mesh_pb2.GenerateResponse]:
    stub = mesh_pb2_grpc.MeshStub(channel)
    return [r async for r in stub.Generate(req or request(), timeout=5, metadata=metadata)]


async def refused(channel: grpc.aio.Channel, metadata: Metadata) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(channel, metadata)
    return caught.value


def bearer(**claims: object) -> Metadata:
    token = jwt.encode({"sub": "studio-b", "aud": "tiermesh", "exp": time.time() + 60} | claims, JWT_SECRET)
    return (("authorization", f"Bearer {token}"),)


async def test_an_authenticated_client_streams_over_tls_and_the_tier_over_mtls(
    certs: Path, secure: tuple[ScriptedTier, Router, Router]
) -> None:
    tier, router, _ = secure
    async with client_channel(certs, router.port) as channel:
        responses = await call(channel, (("x-api-key", KEYS["studio-a"]),))
    assert "".join(r.text for r in responses) == "Halt! Who goes there?"
    assert tier.seen  # reached the tier through mutual TLS


async def test_calls_without_valid_credentials_are_unauthenticated(
    certs: Path, secure: tuple[ScriptedTier, Router, Router]
) -> None:
    _, router, _ = secure
    async with client_channel(certs, router.port) as channel:
        missing = await refused(channel, ())
        assert missing.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "x-api-key" in (missing.details() or "")
        wrong = await refused(channel, (("x-api-key", "guessed"),))
        assert wrong.code() == grpc.StatusCode.UNAUTHENTICATED
        assert wrong.details() == "unknown API key"
        # Probes carry no keys: health stays open.
        health = health_pb2_grpc.HealthStub(channel)
        assert (await health.Check(health_pb2.HealthCheckRequest(), timeout=5)).status == 1


async def test_jwt_bearer_tokens_are_verified(
    certs: Path, secure: tuple[ScriptedTier, Router, Router]
) -> None:
    _, router, _ = secure
    async with client_channel(certs, router.port) as channel:
        assert await call(channel, bearer())
        expired = await refused(channel, bearer(exp=time.time() - 10))
        assert expired.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "expired" in (expired.details() or "")
        audience = await refused(channel, bearer(aud="someone-else"))
        assert audience.code() == grpc.StatusCode.UNAUTHENTICATED
        forged = jwt.encode(
            {"sub": "studio-a", "aud": "tiermesh", "exp": time.time() + 60}, "not-the-secret" * 3
        )
        assert (await refused(channel, (("authorization", f"Bearer {forged}"),))).code() == (
            grpc.StatusCode.UNAUTHENTICATED
        )


async def test_quotas_follow_the_authenticated_client_not_its_claims(
    certs: Path, secure: tuple[ScriptedTier, Router, Router]
) -> None:
    _, router, _ = secure
    # Claiming to be studio-a (x-client-id) does not lend the tiny client its quota.
    metadata = (("x-api-key", KEYS["tiny"]), ("x-client-id", "studio-a"))
    async with client_channel(certs, router.port) as channel:
        await call(channel, metadata)
        limited = await refused(channel, metadata)
    assert limited.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "'tiny'" in (limited.details() or "")


async def test_a_client_without_a_trusted_certificate_is_refused(
    certs: Path, secure: tuple[ScriptedTier, Router, Router]
) -> None:
    _, router, _ = secure
    async with client_channel(certs, router.port, certs / "rogue") as channel:
        error = await refused(channel, (("x-api-key", KEYS["studio-a"]),))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    async with grpc.aio.insecure_channel(f"127.0.0.1:{router.port}") as plaintext:
        error = await refused(plaintext, (("x-api-key", KEYS["studio-a"]),))
    assert error.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_router_with_a_wrong_certificate_never_reaches_the_tier(
    certs: Path, secure: tuple[ScriptedTier, Router, Router]
) -> None:
    tier, _, untrusted = secure
    tier.reset()
    async with client_channel(certs, untrusted.port) as channel:
        stub = mesh_pb2_grpc.MeshStub(channel)
        metadata = (("x-api-key", KEYS["studio-a"]),)
        code = grpc.StatusCode.OK
        responses: list[mesh_pb2.GenerateResponse] = []
        try:
            responses = [r async for r in stub.Generate(request(), timeout=3, metadata=metadata)]
        except grpc.aio.AioRpcError as e:
            code = e.code()
    assert code in (grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE)
    assert all(r.tier != mesh_pb2.TIER_SILVER for r in responses)  # at most the canned line
    assert not tier.seen


async def test_an_oversized_request_is_resource_exhausted_over_tls(
    certs: Path, secure: tuple[ScriptedTier, Router, Router]
) -> None:
    _, router, _ = secure
    huge = request(prompt="x" * 100_000)  # the router's limit in these tests is 64 KiB
    async with client_channel(certs, router.port) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(channel, (("x-api-key", KEYS["studio-a"]),), huge)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
