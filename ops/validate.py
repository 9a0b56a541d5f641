"""`tiermesh validate`: is a tier deployed and healthy? (the seed's per-tier
validation scripts, as one command).

Per tier: health, readiness, a real generation, p95 time to first token over N
probes against the tier's SLO, and its metrics endpoint exposing the series the
dashboards and alerts use; Bronze: the endpoint checks (InService, async config,
output path, topics, S3). Probes go to the tier directly, not through the router.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ops.settings import Settings
from router.stats import nearest_rank
from tiermesh.tier.v1 import tier_pb2, tier_pb2_grpc
from tiermesh.tls import TlsSettings, aio_channel
from tiermesh.v1 import mesh_pb2

TIERS = ("gold", "silver", "bronze")
SILVER_SERIES = ("tiermesh_silver_requests_total", "tiermesh_silver_engine_unfinished_requests")
GOLD_SERIES = ("nv_inference_request_success", "nv_inference_count")


@dataclass
class Check:
    tier: str
    name: str
    ok: bool
    detail: str

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=3) as response:
        return str(response.read().decode())


async def series_check(tier: str, url: str, names: tuple[str, ...]) -> Check:
    try:
        text = await asyncio.to_thread(scrape, url)
    except OSError as e:
        return Check(tier, "metrics endpoint", False, f"{url}: {e}")
    missing = [n for n in names if n not in text]
    detail = f"missing {missing}" if missing else "expected series present"
    return Check(tier, "metrics endpoint", not missing, f"{url}: {detail}")


def http_ok(url: str) -> tuple[bool, str]:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return response.status == 200, url
    except OSError as e:
        return False, f"{url}: {e}"


async def latency_check(
    tier: str, probe: Callable[[], Awaitable[float]], probes: int, slo_ms: float
) -> Check:
    """p95 of `probes` sequential probes (each returns its time to first token, s)."""
    samples = sorted([await probe() for _ in range(probes)])
    p95 = nearest_rank(samples, 0.95) * 1000
    return Check(
        tier, "latency SLO", p95 <= slo_ms, f"p95 time to first token {p95:.1f} ms (SLO {slo_ms:g} ms)"
    )


async def grpc_health(tier: str, address: str, service: str = "", tls: TlsSettings | None = None) -> Check:
    try:
        async with aio_channel(address, tls) as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=3
            )
        ok = reply.status == health_pb2.HealthCheckResponse.SERVING
        return Check(
            tier,
            "health",
            ok,
            f"{address}: {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}",
        )
    except grpc.aio.AioRpcError as e:
        return Check(tier, "health", False, f"{address}: {e.code().name}")


async def validate_silver(settings: Settings, probes: int) -> list[Check]:
    silver = settings.silver
    tls = settings.security.mesh_tls
    checks = [await grpc_health("silver", silver.listen, "tiermesh.tier.v1.TierService", tls)]
    if not checks[0].ok:
        return checks
    request = tier_pb2.GenerateRequest(
        request_id="validate",
        messages=[tier_pb2.ChatMessage(role=tier_pb2.ROLE_USER, content="Say hello.")],
        max_tokens=4,
        sampling=mesh_pb2.SamplingOptions(temperature=0.0),
    )
    async with aio_channel(silver.listen, tls) as channel:
        stub = tier_pb2_grpc.TierServiceStub(channel)

        async def probe() -> float:
            started = time.perf_counter()
            async for _ in stub.Generate(request, timeout=30):
                return time.perf_counter() - started
            raise RuntimeError("empty stream")

        try:
            text = "".join([r.text async for r in stub.Generate(request, timeout=30)])
            checks.append(Check("silver", "inference", bool(text.strip()), repr(text[:40])))
            checks.append(
                await latency_check("silver", probe, probes, settings.validation.slo_p95_ms["silver"])
            )
        except grpc.aio.AioRpcError as e:
            checks.append(Check("silver", "inference", False, f"{e.code().name}: {e.details()}"))
    if silver.metrics_port:
        url = f"http://127.0.0.1:{silver.metrics_port}/metrics"
        checks.append(await series_check("silver", url, SILVER_SERIES))
    return checks


async def validate_gold(settings: Settings, probes: int) -> list[Check]:
    from router.backends.intent_encoder import IntentLabeller
    from router.backends.triton import TritonTier
    from router.call import Call
    from tiermesh.chat import Message

    gold = settings.gold
    http = f"http://{gold.host}:{gold.http_port}"
    checks = []
    # Intents are probed the way the router asks for them: by the encoder where it has one.
    tier = settings.router.tiers.get("gold")
    encoder = tier.intent_encoder if tier is not None else ""
    paths = [("health", "/v2/health/live"), ("readiness", "/v2/models/ensemble/ready")]
    if encoder:
        paths.append(("encoder readiness", f"/v2/models/{encoder}/ready"))
    for name, path in paths:
        ok, detail = await asyncio.to_thread(http_ok, http + path)
        checks.append(Check("gold", name, ok, detail))
    if not all(c.ok for c in checks):
        return checks
    labeller = IntentLabeller({}) if encoder else None  # labels described by their names
    adapter = TritonTier("gold", gold.grpc_address, "ensemble", labeller=labeller, encoder=encoder)

    def call() -> Call:
        messages = (Message("system", "You guard a gate."), Message("user", "A stranger approaches."))
        return Call(request_id="validate", task="intent", npc_id="validate", session_id="", messages=messages,
                    max_tokens=4, sampling=mesh_pb2.SamplingOptions(), deadline=time.monotonic() + 30,
                    intents=("GREET", "WARN"))  # fmt: skip

    async def probe() -> float:
        started = time.perf_counter()
        async for _ in adapter.generate(call()):
            return time.perf_counter() - started
        raise RuntimeError("empty stream")

    try:
        text = "".join([r.text async for r in adapter.generate(call())])
        checks.append(Check("gold", "inference", text in ("GREET", "WARN"), repr(text)))
        checks.append(await latency_check("gold", probe, probes, settings.validation.slo_p95_ms["gold"]))
    except Exception as e:  # whatever broke the call is the finding
        checks.append(Check("gold", "inference", False, f"{type(e).__name__}: {e}"))
    finally:
        await adapter.close()
    checks.append(await series_check("gold", f"http://{gold.host}:{gold.metrics_port}/metrics", GOLD_SERIES))
    return checks


async def validate_bronze(settings: Settings, probes: int) -> list[Check]:
    from services.bronze.aws import endpoint_status

    checks = [
        await grpc_health(
            "bronze", settings.bronze.listen, "tiermesh.tier.v1.Jobs", settings.security.mesh_tls
        )
    ]
    status = await asyncio.to_thread(endpoint_status, settings.bronze)
    checks += [Check("bronze", c.name, c.ok, c.detail) for c in status.checks]
    return checks


VALIDATORS = {"gold": validate_gold, "silver": validate_silver, "bronze": validate_bronze}


async def validate(settings: Settings, targets: list[str], probes: int) -> list[Check]:
    checks: list[Check] = []
    for target in targets:
        checks += await VALIDATORS[target](settings, probes)
    return checks
