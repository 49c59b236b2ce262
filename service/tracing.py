"""OpenTelemetry traces: off unless an OTLP endpoint is configured (the `otel` extra).

On, every request is a span (opentelemetry-instrumentation-aiohttp-server, with the route
template as its name), every Postgres statement a child span (opentelemetry-instrumentation-
asyncpg: the SQL text, never its parameters), and a sign-in has its own span with the token's
verification in a child of it. No span carries a token, a cookie or a request body: the
request span records the method, the route, the path and query (redacted by the
instrumentation) and the user agent, and no header unless OTEL_INSTRUMENTATION_HTTP_CAPTURE_*
asks for it (the README says not to name Cookie there).

Off, nothing of OpenTelemetry is imported, no middleware is added and a sign-in's spans are a
`nullcontext`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import warnings
from collections.abc import AsyncIterator, Mapping
from typing import Any

from aiohttp import web

# Either turns traces on; the SDK's default of localhost:4318 does not.
ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
SERVICE_NAME = "google-session-service"


def configured(env: Mapping[str, str]) -> bool:
    return any(env.get(name, "").strip() for name in ENDPOINT_VARIABLES)


def installed() -> bool:
    return all(
        importlib.util.find_spec(name) is not None
        for name in (
            "opentelemetry.sdk",
            "opentelemetry.exporter.otlp.proto.http",
            "opentelemetry.instrumentation.aiohttp_server",
            "opentelemetry.instrumentation.asyncpg",
        )
    )


class Tracing:
    """A worker's tracer; the app holds it only while traces are on."""

    def __init__(self, provider: Any) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer("service")


TRACING = web.AppKey("tracing", Tracing)


def span(request: web.Request, name: str) -> contextlib.AbstractContextManager[Any]:
    """A span of `name` under the request's, or nothing while traces are off."""
    tracing = request.config_dict.get(TRACING)
    if tracing is None:
        return contextlib.nullcontext()
    started: contextlib.AbstractContextManager[Any] = tracing.tracer.start_as_current_span(name)
    return started


def instrument(app: web.Application, provider: Any) -> None:
    """Traces for `app` through `provider`; before the app starts (its middlewares freeze)."""
    from opentelemetry.instrumentation.aiohttp_server import (
        AioHttpServerInstrumentor,
        create_aiohttp_middleware,
    )
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor

    # The instrumentor sets up the middleware's module state (the excluded URLs, its meters),
    # and wraps every web.Application made from then on, sub-applications included, which would
    # make a request to /api/admin three server spans: that wrapping is undone at once, and the
    # middleware goes on the main app only.
    server = AioHttpServerInstrumentor()
    with warnings.catch_warnings():  # aiohttp discourages the subclass it makes, and is unused
        warnings.simplefilter("ignore", DeprecationWarning)
        server.instrument(tracer_provider=provider)
    server.uninstrument()
    app[TRACING] = Tracing(provider)
    # Outermost, so that the request's span holds everything the service does for it.
    app.middlewares.insert(0, create_aiohttp_middleware(tracer_provider=provider))
    instrumentor = AsyncPGInstrumentor()  # type: ignore[no-untyped-call]
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument(tracer_provider=provider)


def otlp_provider() -> Any:
    """A provider exporting in batches over OTLP/HTTP, to where the environment says."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": SERVICE_NAME}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


async def tracing_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the spans still waiting are exported as the worker stops."""
    yield
    tracing = app.get(TRACING)
    if tracing is not None:
        tracing.provider.shutdown()
