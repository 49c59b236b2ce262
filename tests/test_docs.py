"""API docs: the OpenAPI document matches the routes both ways, Swagger UI is served by the
service itself, and schemathesis finds no server error or off-schema response."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path
from typing import Any

import asyncpg
from aiohttp import web

from service.app import create_app
from service.openapi import document
from tests.conftest import Browser, Service, service_config
from tests.issuer import Issuer

SELF_REVOKING_PATHS = (
    "/api/logout",
    "/api/sessions/{id}",
    "/api/admin/sessions/{id}",
    "/api/admin/users/{id}/revoke-sessions",
)

# Methods aiohttp and aiohttp-cors add on their own.
IMPLICIT_METHODS = {"HEAD", "OPTIONS"}


def api_routes(app: web.Application) -> set[tuple[str, str]]:
    """(METHOD, path) of every route under /api/, sub-apps included, trailing slashes folded."""
    found: set[tuple[str, str]] = set()
    for resource in app.router.resources():
        info = resource.get_info()
        if "app" in info:
            found |= api_routes(info["app"])
            continue
        path = info.get("path") or info.get("formatter", "")
        if not path.startswith("/api/"):
            continue
        for route in resource:
            if route.method not in IMPLICIT_METHODS:
                found.add((route.method, path.rstrip("/")))
    return found


def documented_routes(spec: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in spec["paths"].items() for method in item}


def test_every_api_route_is_documented_and_every_documented_route_exists() -> None:
    for dev_login in (False, True):
        config = service_config(
            "postgresql://unused", "http://127.0.0.1:9/certs", 8080, dev_login=dev_login
        )
        app = create_app(config)

        routes, documented = api_routes(app), documented_routes(document(config))

        assert routes - documented == set(), "routes missing from the OpenAPI document"
        assert documented - routes == set(), "documented routes the app does not have"
        assert len(routes) > 20


async def test_openapi_names_the_configured_session_cookie(start_service: Any) -> None:
    for secure, name in ((True, "__Host-session_id"), (False, "session_id")):
        service = await start_service(cookie_secure=secure)
        response = await service.browser().get("/api/openapi.json")
        assert response.status == 200
        spec = await response.json()
        assert spec["openapi"].startswith("3.1")
        scheme = spec["components"]["securitySchemes"]["session"]
        assert scheme == {"type": "apiKey", "in": "cookie", "name": name}


async def test_docs_page_and_every_asset_it_loads_come_from_the_service(
    browser: Browser,
) -> None:
    page = await browser.get("/api/docs")
    assert page.status == 200
    assert page.content_type == "text/html"
    html = await page.text()
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert len(assets) == 3
    for asset in assets:
        assert asset.startswith("/"), f"{asset} is not served by the service"
        response = await browser.get(asset)
        assert response.status == 200, asset
        assert len(await response.read()) > 100, asset
    init = await (await browser.get("/docs/swagger-init.js")).text()
    assert "/api/openapi.json" in init


async def test_schemathesis_finds_no_server_error_or_off_schema_response(
    start_service: Any, issuer: Issuer, db: asyncpg.Pool
) -> None:
    service: Service = await start_service(dev_login=True)
    admin = service.browser()
    await admin.sign_in(issuer, email="admin@gmail.com")
    await db.execute("UPDATE users SET admin = true WHERE email = 'admin@gmail.com'")
    await db.execute(
        "INSERT INTO customers (name, email) SELECT 'c' || n, 'c' || n || '@example.com'"
        " FROM generate_series(1, 30) n"
    )
    token = admin.cookie("session_id")

    options = [
        f"--header=Cookie: session_id={token}",
        f"--header=Origin: {service.base_url}",
        "--checks=not_a_server_error,response_schema_conformance,status_code_conformance",
        "--max-examples=25",
        "--request-timeout=10",
        # Hypothesis' health checks judge the machine's speed, not the API.
        "--suppress-health-check=all",
        # These end the admin's own session, which would leave the rest of the run signed out;
        # tests of their own cover them.
        *(f"--exclude-path={path}" for path in SELF_REVOKING_PATHS),
    ]
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "schemathesis.cli", "run", f"{service.base_url}/api/openapi.json",
        *options, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await process.communicate()
    report = output.decode()

    assert process.returncode == 0, report
    assert "Authentication failed" not in report, report
    assert (await admin.get("/api/user")).status == 200, "the admin's session did not survive"


def test_every_test_the_security_map_cites_exists() -> None:
    """docs/security.md proves each requirement with named tests: none may go missing."""
    root = Path(__file__).resolve().parent.parent
    cited = set(
        re.findall(r"(tests/test_\w+\.py)::(test_\w+)", (root / "docs/security.md").read_text())
    )

    missing = [
        f"{path}::{name}"
        for path, name in sorted(cited)
        if not re.search(rf"def {name}\(", (root / path).read_text())
    ]

    assert len(cited) > 50
    assert missing == []
