"""OpenTelemetry traces: off unless an OTLP endpoint is configured (the `otel` extra).

This module decides and holds the tracer; service/otel.py, imported only while traces are on,
builds them so that no span carries a secret (README: Metrics and traces). Off, nothing of
OpenTelemetry is imported, no middleware is added and a sign-in's spans are a `nullcontext`.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
from collections.abc import AsyncIterator, Mapping
from typing import Any

from aiohttp import web

# Either turns traces on; the SDK's default of localhost:4318 does not.
ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
SERVICE_NAME = "google-session-service"  # unless OTEL_SERVICE_NAME says otherwise
EXPORT_TIMEOUT = 2.0  # seconds


def configured(env: Mapping[str, str]) -> bool:
    return any(env.get(name, "").strip() for name in ENDPOINT_VARIABLES)


def unsupported_protocol(env: Mapping[str, str]) -> str | None:
    """The OTLP protocol asked for, unless it is the one the `otel` extra exports with."""
    for name in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        protocol = env.get(name, "").strip()
        if protocol:
            return None if protocol == "http/protobuf" else f"{name}={protocol}"
    return None


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


def instrument(app: web.Application, exporter: Any) -> None:
    """Traces for `app`, exported through `exporter`; before the app starts (its middlewares
    freeze then)."""
    # Before the instrumentations read them: a captured header never shows a cookie, and the
    # probes, which come every few seconds, make no traces.
    os.environ.setdefault(
        "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS",
        "cookie,set-cookie,authorization",
    )
    os.environ.setdefault("OTEL_PYTHON_AIOHTTP_SERVER_EXCLUDED_URLS", "healthz,readyz")
    from service import otel

    traces = otel.provider(exporter, None if os.environ.get("OTEL_SERVICE_NAME") else SERVICE_NAME)
    app[TRACING] = Tracing(traces)
    # Outermost, so that the request's span holds everything the service does for it.
    app.middlewares.insert(0, otel.request_middleware(traces))
    otel.instrument_asyncpg(traces)


def otlp_exporter() -> Any:
    """OTLP over HTTP, to where the environment says; a collector that does not answer holds an
    export (on its thread) for 2 s at most."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(timeout=EXPORT_TIMEOUT)


async def tracing_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx, first in the list so that it stops last: the spans still waiting are
    exported, for at most EXPORT_TIMEOUT, as the worker stops."""
    yield
    tracing = app.get(TRACING)
    if tracing is not None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.to_thread(tracing.provider.shutdown), EXPORT_TIMEOUT)
