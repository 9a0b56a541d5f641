"""Tracing over real gRPC: a caller's trace context reaches the tier through the
router, and the spans are exported by OTLP to a real OTLP/gRPC receiver."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc
import pytest
import pytest_asyncio
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2

from tests.doubles import ScriptedTier
from tests.fakes import request
from tiermesh import tracing
from tiermesh.tracing import TracingSettings

if TYPE_CHECKING:
    from tiermesh.v1.mesh_pb2_grpc import MeshAsyncStub as Stub

pytestmark = pytest.mark.asyncio(loop_scope="session")
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """What an OpenTelemetry Collector's OTLP/gRPC receiver does: take the spans."""

    def __init__(self) -> None:
        self.spans: list[trace_pb2.Span] = []
        self.services: set[str] = set()

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: object
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        for resource_spans in request.resource_spans:
            for attribute in resource_spans.resource.attributes:
                if attribute.key == "service.name":
                    self.services.add(attribute.value.string_value)
            for scope in resource_spans.scope_spans:
                self.spans.extend(scope.spans)
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def receiver() -> AsyncIterator[tuple[Receiver, int]]:
    server = grpc.aio.server()
    receiver = Receiver()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield receiver, port
    await server.stop(None)


async def test_tracing_off_sends_no_trace_context() -> None:
    span = trace.NoOpTracer().start_span("x")
    assert tracing.inject(span) == []


async def test_caller_trace_reaches_the_tier_and_spans_are_exported_by_otlp(
    stub: Stub, silver: ScriptedTier, receiver: tuple[Receiver, int]
) -> None:
    collected, port = receiver
    provider = tracing.setup_tracing(TracingSettings(otlp_endpoint=f"127.0.0.1:{port}"), "router")
    assert provider is not None
    traceparent = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
    metadata = (("traceparent", traceparent),)
    responses = [r async for r in stub.Generate(request(), timeout=5, metadata=metadata)]
    assert responses[-1].finish_reason

    # The tier sees the same trace, with a new parent: the router's attempt span.
    sent = silver.seen[-1].metadata["traceparent"]
    _, trace_id, parent_id, _ = sent.split("-")
    assert trace_id == CALLER_TRACE
    assert parent_id != CALLER_SPAN

    await asyncio.to_thread(provider.force_flush)
    # The receiver goes with this module: stop exporting to it.
    await asyncio.to_thread(provider.shutdown)
    spans = {s.name: s for s in collected.spans if s.trace_id.hex() == CALLER_TRACE}
    edge, attempt = spans["tiermesh.v1.Mesh/Generate"], spans["silver attempt"]
    assert edge.parent_span_id.hex() == CALLER_SPAN
    assert edge.kind == trace_pb2.Span.SPAN_KIND_SERVER
    assert attempt.parent_span_id == edge.span_id
    assert attempt.span_id.hex() == parent_id
    assert attempt.kind == trace_pb2.Span.SPAN_KIND_CLIENT
    attributes = {a.key: a.value for a in edge.attributes}
    assert attributes["tier"].string_value == "silver"
    assert attributes["task"].string_value == "dialogue"
    assert "tiermesh-router" in collected.services
