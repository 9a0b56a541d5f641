"""`tiermesh load`: ghz configs in, ghz-format reports out, where ghz itself is absent.

Reads a ghz JSON config (call, host, data, metadata, concurrency, total or
duration, rps, timeout), drives the call over real gRPC with the project's own
generated types, and writes the report ghz writes with `-O json` (latencies in
nanoseconds), plus `ttft`: time to the first streamed message. `check` judges any
ghz-format report, ghz's own included, against a latency SLO and an error rate.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf import descriptor_pool, json_format, message_factory
from google.protobuf.message import Message
from pydantic import BaseModel, ConfigDict, Field

import tiermesh.v1.mesh_pb2  # noqa: F401  (registers the public contract's types)

PERCENTAGES = (10, 25, 50, 75, 90, 95, 99)
GO_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def go_duration(text: str) -> float:
    """Seconds in a Go duration string ("20s", "1m30s", "250ms"); "0" is zero."""
    if text.strip() == "0":
        return 0.0
    parts = GO_DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text.strip():
        raise ValueError(f"not a duration: {text!r} (e.g. 20s, 500ms, 1m30s)")
    return sum(float(number) * GO_UNITS[unit] for number, unit in parts)


class GhzConfig(BaseModel):
    """The ghz options this runner honours; others are kept and reported, unused."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    call: str
    host: str = "127.0.0.1:50051"
    insecure: bool = True
    total: int = Field(default=200, ge=1)
    concurrency: int = Field(default=50, ge=1)
    rps: float = Field(default=0.0, ge=0)
    duration: str = ""
    timeout: str = "20s"
    data: dict[str, Any] | list[dict[str, Any]] = Field(default_factory=dict)
    metadata: dict[str, str] = Field(default_factory=dict)
    name: str = ""


@dataclass
class Outcome:
    latency_s: float
    ttft_s: float | None
    status: str
    error: str
    started: float


def method_of(call: str) -> tuple[str, type[Message], type[Message], bool]:
    """(path, request type, response type, server streaming) for "pkg.Service.Method"
    or "pkg.Service/Method"."""
    service_name, _, method_name = call.replace("/", ".").rpartition(".")
    try:
        service = descriptor_pool.Default().FindServiceByName(service_name)
        method = service.methods_by_name[method_name]
    except KeyError:
        raise ValueError(f"unknown call {call!r}: not in the tiermesh contract") from None
    if method.client_streaming:
        raise ValueError(
            f"{call} takes a client stream: ghz-style load runs unary and server-streaming calls"
        )
    return (
        f"/{service.full_name}/{method.name}",
        message_factory.GetMessageClass(method.input_type),
        message_factory.GetMessageClass(method.output_type),
        method.server_streaming,
    )


def render(template: Any, number: int, worker: int) -> Any:
    """ghz's call-data template variables (the common ones) in every string."""
    if isinstance(template, str):
        return (
            template.replace("{{.RequestNumber}}", str(number))
            .replace("{{.WorkerID}}", str(worker))
            .replace("{{.UUID}}", uuid.uuid4().hex)
        )
    if isinstance(template, list):
        return [render(item, number, worker) for item in template]
    if isinstance(template, dict):
        return {key: render(value, number, worker) for key, value in template.items()}
    return template


async def run(config: GhzConfig, host: str | None = None) -> dict[str, Any]:
    path, request_type, response_type, streaming = method_of(config.call)
    datas = config.data if isinstance(config.data, list) else [config.data]
    timeout = go_duration(config.timeout) or None
    duration = go_duration(config.duration) if config.duration else 0.0
    numbers = itertools.count()
    outcomes: list[Outcome] = []
    start = time.monotonic()
    stop_at = start + duration if duration else None
    async with grpc.aio.insecure_channel(host or config.host) as channel:
        if streaming:
            invoke: Any = channel.unary_stream(
                path, lambda m: m.SerializeToString(), response_type.FromString
            )
        else:
            invoke = channel.unary_unary(path, lambda m: m.SerializeToString(), response_type.FromString)

        async def one(number: int, worker: int) -> Outcome:
            body = render(datas[number % len(datas)], number, worker)
            request = json_format.ParseDict(body, request_type())
            metadata = tuple(render(config.metadata, number, worker).items())
            began = time.monotonic()
            first: float | None = None
            try:
                if streaming:
                    async for _ in invoke(request, timeout=timeout, metadata=metadata):
                        first = first or time.monotonic()
                else:
                    await invoke(request, timeout=timeout, metadata=metadata)
                    first = time.monotonic()
                status, error = "OK", ""
            except grpc.aio.AioRpcError as e:
                status, error = e.code().name, f"rpc error: code = {e.code().name} desc = {e.details()}"
            ended = time.monotonic()
            return Outcome(ended - began, None if first is None else first - began, status, error, began)

        async def worker(worker_id: int) -> None:
            while True:
                number = next(numbers)
                if stop_at is None and number >= config.total:
                    return
                if config.rps:  # an open schedule: request n is due at n / rps
                    await asyncio.sleep(max(0.0, start + number / config.rps - time.monotonic()))
                if stop_at is not None and time.monotonic() >= stop_at:
                    return
                outcomes.append(await one(number, worker_id))

        await asyncio.gather(*(worker(w) for w in range(config.concurrency)))
    return report(config, outcomes, time.monotonic() - start)


def nanos(seconds: float) -> int:
    return int(seconds * 1e9)


def distribution(values: list[float]) -> list[dict[str, int]]:
    ordered = sorted(values)
    if not ordered:
        return []
    return [
        {"percentage": p, "latency": nanos(ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))])}
        for p in PERCENTAGES
    ]


def histogram(values: list[float], buckets: int = 10) -> list[dict[str, float]]:
    if not values:
        return []
    low, high = min(values), max(values)
    width = (high - low) / buckets or 1e-9
    counts = Counter(min(int((v - low) / width), buckets - 1) for v in values)
    return [
        {
            "mark": round(low + width * (i + 1), 9),
            "count": counts.get(i, 0),
            "frequency": counts.get(i, 0) / len(values),
        }
        for i in range(buckets)
    ]


def report(config: GhzConfig, outcomes: list[Outcome], total_s: float) -> dict[str, Any]:
    """What ghz writes with `-O json`, and `ttft` for streams."""
    latencies = [o.latency_s for o in outcomes]
    ttfts = [o.ttft_s for o in outcomes if o.ttft_s is not None and o.status == "OK"]
    ok = [o.latency_s for o in outcomes if o.status == "OK"]
    return {
        "name": config.name,
        "endReason": "normal",
        "date": datetime.now(UTC).isoformat(),
        "options": config.model_dump(by_alias=True),
        "count": len(outcomes),
        "total": nanos(total_s),
        "average": nanos(sum(latencies) / len(latencies)) if latencies else 0,
        "fastest": nanos(min(latencies, default=0.0)),
        "slowest": nanos(max(latencies, default=0.0)),
        "rps": len(outcomes) / total_s if total_s else 0.0,
        "errorDistribution": dict(Counter(o.error for o in outcomes if o.error)),
        "statusCodeDistribution": dict(Counter(o.status for o in outcomes)),
        # ghz reports the distribution of successful calls only.
        "latencyDistribution": distribution(ok),
        "histogram": histogram(ok),
        "ttft": {
            "average": nanos(sum(ttfts) / len(ttfts)) if ttfts else 0,
            "fastest": nanos(min(ttfts, default=0.0)),
            "slowest": nanos(max(ttfts, default=0.0)),
            "latencyDistribution": distribution(ttfts),
        },
    }


@dataclass
class Verdict:
    ok: bool
    p95_ms: float
    error_rate: float
    problems: list[str]


def check(report: dict[str, Any], p95_ms: float | None, max_error_rate: float) -> Verdict:
    """Judge a ghz-format report (ours or ghz's): p95 of successful calls and the share
    of calls that did not end OK."""
    count = report.get("count", 0)
    codes: dict[str, int] = report.get("statusCodeDistribution") or {}
    errors = sum(n for code, n in codes.items() if code != "OK")
    error_rate = errors / count if count else 1.0
    p95 = next((d["latency"] for d in report.get("latencyDistribution") or [] if d["percentage"] == 95), None)
    p95_ms_seen = p95 / 1e6 if p95 is not None else float("inf")
    problems = []
    if not count:
        problems.append("no calls were made")
    if error_rate > max_error_rate:
        problems.append(f"error rate {error_rate:.1%} over {max_error_rate:.1%}: {codes}")
    if p95_ms is not None and p95_ms_seen > p95_ms:
        problems.append(f"p95 {p95_ms_seen:.1f} ms over the {p95_ms:g} ms SLO")
    return Verdict(not problems, p95_ms_seen, error_rate, problems)


def summary(report: dict[str, Any]) -> str:
    ttft = report.get("ttft") or {}
    return (
        f"{report['count']} calls, {report['rps']:.1f}/s, avg {report['average'] / 1e6:.1f} ms, "
        f"ttft avg {ttft.get('average', 0) / 1e6:.1f} ms, status {report['statusCodeDistribution']}"
    )


def load_config(text: str) -> GhzConfig:
    return GhzConfig.model_validate(json.loads(text))


class Slo(BaseModel):
    p95_ms: float | None = Field(default=None, gt=0)
    max_error_rate: float = Field(default=0.01, ge=0, le=1)


def slos(text: str) -> dict[str, Slo]:
    """tests/load/slo.yaml: config name → its SLO on the local mesh."""
    import yaml

    return {name: Slo.model_validate(value) for name, value in (yaml.safe_load(text) or {}).items()}
