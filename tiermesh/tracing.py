"""OpenTelemetry tracing: one span per call at the router's edge, one per tier attempt,
one per Generate at Silver; W3C trace context travels in gRPC metadata (`traceparent`).

Off by default: with no OTLP endpoint no SDK provider is installed and the data path
extracts, creates and injects nothing (one global read per call). The spans are
passed explicitly (never "current"), because the data path is async generators,
which may be closed from another context than they ran in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, Tracer
from pydantic import BaseModel, Field


class TracingSettings(BaseModel):
    """OpenTelemetry: spans router → tier, trace context in gRPC metadata. Exported
    over OTLP/gRPC only when an endpoint is set; otherwise tracing costs nothing."""

    otlp_endpoint: str = ""
    service_name_prefix: str = "tiermesh"
    # Fraction of new traces kept (a caller's sampled parent is always kept).
    sample_ratio: float = Field(default=1.0, ge=0, le=1)


Metadata = Iterable[tuple[str, Any]]
# Set by setup_tracing; None: tracing is off.
_tracer: Tracer | None = None


def setup_tracing(
    settings: TracingSettings, service: str, exporter: SpanExporter | None = None
) -> TracerProvider | None:
    """Install an SDK provider exporting to `settings.otlp_endpoint` (OTLP/gRPC), or to
    `exporter` (tests). Without either, tracing stays off."""
    if exporter is None and not settings.otlp_endpoint:
        return None
    if exporter is None:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        endpoint = settings.otlp_endpoint
        exporter = OTLPSpanExporter(endpoint=endpoint, insecure=not endpoint.startswith("https://"))
    provider = TracerProvider(
        resource=Resource.create({"service.name": f"{settings.service_name_prefix}-{service}"}),
        sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
    )
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    global _tracer
    _tracer = provider.get_tracer("tiermesh")
    return provider


def extract(metadata: Metadata | None) -> Context | None:
    """The caller's trace context from incoming gRPC metadata (None when tracing is off)."""
    if _tracer is None:
        return None
    carrier = {key: value for key, value in metadata or () if isinstance(value, str)}
    return propagate.extract(carrier) if carrier else Context()


def start_span(name: str, parent: Context | None, kind: SpanKind, **attributes: Any) -> Span:
    """A span, or the invalid no-op span when tracing is off."""
    if _tracer is None:
        return trace.INVALID_SPAN
    return _tracer.start_span(name, context=parent, kind=kind, attributes=attributes)


def child_context(span: Span) -> Context | None:
    """A context with `span` as parent, for what the call does next (None when off).
    A sampled-out span is parent too: its children stay out with it."""
    return None if _tracer is None else trace.set_span_in_context(span)


def inject(span: Span) -> list[tuple[str, str]]:
    """Metadata carrying `span` as the parent of the next hop (none when not recording)."""
    if not span.is_recording():
        return []
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    return list(carrier.items())


def inject_headers(span: Span) -> Mapping[str, str]:
    return dict(inject(span))
