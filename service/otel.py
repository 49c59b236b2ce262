"""What traces are made of while they are on: OpenTelemetry's SDK, its exporter and its two
instrumentations, put together so that no span carries a secret. Imported only then (the `otel`
extra); service/tracing.py decides.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

from aiohttp import web
from opentelemetry.instrumentation import aiohttp_server
from opentelemetry.instrumentation.aiohttp_server import (
    AioHttpServerInstrumentor,
    create_aiohttp_middleware,
)
from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanLimits, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import Status

Handler = Any

# Where a request span keeps its URL; the query string goes (an admin's search holds emails).
URL_ATTRIBUTES = ("http.target", "http.url", "url.full")
MAX_ATTRIBUTE_LENGTH = 1024  # a User-Agent may be 8 kB


class PathOnly(SpanProcessor):
    """Request spans keep the path of their URL, never its query string."""

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        attributes = span.attributes or {}
        for key in URL_ATTRIBUTES:
            value = attributes.get(key)
            if isinstance(value, str) and "?" in value:
                span.set_attribute(key, value.split("?", 1)[0])
        if attributes.get("url.query"):
            span.set_attribute("url.query", "")


class WithoutExceptionMessages(SpanExporter):
    """Exports spans whose exceptions keep their type only: a message can quote a value
    (Postgres's DETAIL quotes the row a statement conflicted with)."""

    def __init__(self, exporter: SpanExporter) -> None:
        self.exporter = exporter

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return self.exporter.export([_without_messages(span) for span in spans])

    def shutdown(self) -> None:
        self.exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self.exporter.force_flush(timeout_millis)


def _without_messages(span: ReadableSpan) -> ReadableSpan:
    if span.status.description is None and not any(e.name == "exception" for e in span.events):
        return span
    events = [
        Event(
            "exception",
            {"exception.type": (event.attributes or {}).get("exception.type", "")},
            event.timestamp,
        )
        if event.name == "exception"
        else event
        for event in span.events
    ]
    return ReadableSpan(
        name=span.name,
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes=span.attributes,
        events=events,
        links=span.links,
        kind=span.kind,
        status=Status(span.status.status_code),
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


def provider(exporter: SpanExporter, service_name: str | None) -> TracerProvider:
    """Spans exported in batches, on a thread of their own, through the filters above."""
    resource = Resource.create({} if service_name is None else {"service.name": service_name})
    traces = TracerProvider(
        resource=resource, span_limits=SpanLimits(max_attribute_length=MAX_ATTRIBUTE_LENGTH)
    )
    traces.add_span_processor(PathOnly())
    traces.add_span_processor(BatchSpanProcessor(WithoutExceptionMessages(exporter)))
    return traces


def request_middleware(traces: TracerProvider) -> Handler:
    """A server span per request, from the aiohttp instrumentation, for the main app only."""
    # The instrumentor sets up the middleware's module state (the excluded URLs, its meters),
    # and wraps every web.Application made from then on, sub-applications included, which would
    # make a request to /api/admin three server spans: that wrapping is undone at once.
    server = AioHttpServerInstrumentor()
    with warnings.catch_warnings():  # aiohttp discourages the subclass it makes, and is unused
        warnings.simplefilter("ignore", DeprecationWarning)
        server.instrument(tracer_provider=traces)
    server.uninstrument()
    if aiohttp_server._excluded_urls is None:  # instrument() declined (a version it refuses)
        raise RuntimeError("opentelemetry-instrumentation-aiohttp-server did not set up")
    traced = create_aiohttp_middleware(tracer_provider=traces)

    @web.middleware
    async def trace(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            request.url  # noqa: B018 - the instrumentation reads it first
        except ValueError:  # a Host header no URL can be made of: answered, untraced
            untraced: web.StreamResponse = await handler(request)
            return untraced
        response: web.StreamResponse = await traced(request, handler)
        return response

    return trace


def instrument_asyncpg(traces: TracerProvider) -> None:
    """A span per statement: its SQL, never its parameters. Process-wide (it patches asyncpg)."""
    instrumentor = AsyncPGInstrumentor(capture_parameters=False)  # type: ignore[no-untyped-call]
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument(tracer_provider=traces)
