"""Traces (the `otel` extra): a sign-in's spans, none carrying a secret, and off by default."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from service import otel, tracing
from service.app import create_app
from service.config import Config, ConfigError
from tests.conftest import CLIENT_ID, ServedAsInProduction, Service, service_config
from tests.issuer import Issuer

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    yield exporter
    AsyncPGInstrumentor().uninstrument()  # it patches asyncpg for the whole process


async def test_a_sign_in_is_a_span_with_the_verification_in_its_own_and_no_secret_anywhere(
    exporter: InMemorySpanExporter,
    database_url: str,
    issuer: Issuer,
    unused_tcp_port: int,
) -> None:
    config = service_config(database_url, issuer.certs_url, unused_tcp_port)
    app = create_app(config)
    tracing.instrument(app, exporter)
    server = ServedAsInProduction(app, port=unused_tcp_port)
    await server.start_server(access_log=None)
    try:
        browser = Service(config, str(server.make_url("")).rstrip("/")).browser()
        nonce = await browser.new_nonce()
        credential = issuer.token(nonce=nonce)
        assert (await browser.post("/api/login", json={"credential": credential})).status == 200
        token = browser.cookie("session_id")
        assert (await browser.get("/api/user")).status == 200
        # A Host header no URL can be made of is answered, not turned into a 500.
        assert (await browser.get("/api/config", headers={"Host": "x:99999"})).status == 200
        await browser.session.close()
    finally:
        await server.close()
    app[tracing.TRACING].provider.force_flush()

    spans = exporter.get_finished_spans()
    by_name = {span.name: span for span in spans}
    request = next(s for s in spans if s.attributes.get("http.route") == "/api/login")
    sign_in, verify = by_name["sign_in"], by_name["verify_token"]
    assert sign_in.parent is not None and sign_in.parent.span_id == request.context.span_id
    assert verify.parent is not None and verify.parent.span_id == sign_in.context.span_id
    # The sign-in's statements are its children: the one round trip of a first sign-in's path.
    statements = [s for s in spans if s.parent and s.parent.span_id == sign_in.context.span_id]
    assert any("db.statement" in (s.attributes or {}) for s in statements), statements
    assert any(s.attributes.get("http.route") == "/api/user" for s in spans)

    everything = json.dumps([_readable(span) for span in spans])
    assert token and token not in everything
    assert credential not in everything
    assert nonce not in everything
    for part in credential.split("."):
        assert part not in everything


def test_exported_spans_keep_no_query_string_and_no_exception_message(
    exporter: InMemorySpanExporter,
) -> None:
    provider = otel.provider(exporter, "test")
    tracer = provider.get_tracer("test")
    query = "/api/admin/audit?user_email=someone%40example.org"
    with (
        pytest.raises(ValueError),
        tracer.start_as_current_span(
            "request", attributes={"http.target": query, "url.query": "user_email=someone"}
        ),
    ):
        raise ValueError("DETAIL: Key (email)=(someone@example.org) already exists.")
    provider.force_flush()

    [span] = exporter.get_finished_spans()
    assert span.attributes["http.target"] == "/api/admin/audit"
    assert span.attributes["url.query"] == ""
    [event] = span.events
    assert dict(event.attributes) == {"exception.type": "ValueError"}
    assert span.status.description is None
    assert "someone" not in json.dumps(_readable(span))


def _readable(span: ReadableSpan) -> dict[str, Any]:
    return {
        "name": span.name,
        "attributes": dict(span.attributes or {}),
        "events": [dict(event.attributes or {}) for event in span.events],
        "resource": dict(span.resource.attributes),
    }


def test_traces_are_off_unless_an_otlp_endpoint_is_set() -> None:
    assert Config.from_env({"DEV_LOGIN": "1"}).tracing is False
    assert Config.from_env({"DEV_LOGIN": "1", "OTEL_EXPORTER_OTLP_ENDPOINT": " "}).tracing is False
    for variable in tracing.ENDPOINT_VARIABLES:
        config = Config.from_env({"DEV_LOGIN": "1", variable: "http://collector:4318"})
        assert config.tracing is True
    app = create_app(Config.from_env({"DEV_LOGIN": "1", "GOOGLE_CLIENT_ID": CLIENT_ID}))
    assert tracing.TRACING not in app
    assert len(app.middlewares) == 3  # access log, errors, admission: nothing of tracing


def test_with_traces_off_nothing_of_opentelemetry_is_loaded() -> None:
    program = (
        "import sys\n"
        "from service.app import create_app\n"
        "from service.config import Config\n"
        "create_app(Config.from_env({'DEV_LOGIN': '1'}))\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    command = [sys.executable, "-c", program]
    ran = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)  # noqa: S603
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "[]"


def test_a_protocol_other_than_http_is_a_one_line_config_error() -> None:
    variables = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
    }
    with pytest.raises(ConfigError, match="OTEL_EXPORTER_OTLP_PROTOCOL=grpc"):
        Config.from_env({"DEV_LOGIN": "1", **variables})


def test_an_endpoint_without_the_extra_is_a_one_line_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tracing, "installed", lambda: False)
    with pytest.raises(ConfigError, match="otel"):
        Config.from_env({"DEV_LOGIN": "1", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"})
