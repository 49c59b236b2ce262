"""The application factory: wiring only, in the order a request meets it."""

from __future__ import annotations

import asyncio

import aiohttp_cors
from aiohttp import web
from aiohttp_remotes import XForwardedStrict

from service import devlogin, frontend, middleware, schema, tracing
from service.auth import LOCAL_CERTS, verifier_ctx
from service.config import CONFIG, Config
from service.db import pool_ctx
from service.housekeeping import purge_ctx
from service.logs import AccessLog
from service.metrics import METRICS, Metrics, metrics_ctx
from service.payload import MAX_BODY_BYTES
from service.routes import customers, docs, health, login, sessions, user
from service.routes.admin import create_admin_app
from service.session_cache import session_cache_ctx


def create_app(config: Config) -> web.Application:
    app = web.Application(
        middlewares=[middleware.access_log, middleware.errors],
        client_max_size=MAX_BODY_BYTES,
    )
    app[middleware.ACCESS_LOG] = AccessLog()
    app[METRICS] = Metrics()
    app[middleware.ADMISSION] = asyncio.Semaphore(config.requests_in_flight)
    if config.trusted_proxies:
        # Probes come straight from the load balancer, with no proxy in between.
        forwarded = XForwardedStrict([config.trusted_proxies], white_paths=middleware.PROBE_PATHS)
        app.middlewares.append(forwarded.middleware)
    # Last: it reads the body, after which aiohttp-remotes could no longer clone the request.
    app.middlewares.append(middleware.admission)
    app[CONFIG] = config
    app[health.SCHEMA_HEAD] = schema.head_revision()
    app[health.READINESS] = health.Readiness()
    app.on_response_prepare.append(middleware.security_headers(config))
    app.add_routes(health.routes)

    api = web.Application(middlewares=[middleware.api_checks])
    for area in (login, user, customers, sessions, docs):
        api.add_routes(area.routes)
    if config.dev_login:
        issuer = devlogin.DevIssuer()
        app[devlogin.DEV_ISSUER] = issuer
        app[LOCAL_CERTS] = issuer.certs
        api.add_routes(devlogin.routes)
    admin = create_admin_app()
    for sub_app in (api, admin):
        _allow_cross_origin(sub_app, config.allowed_origins)
    api.add_subapp("/admin", admin)
    app.add_subapp("/api", api)
    frontend.add_routes(app)

    # Metrics last: started after the parts they read, stopped before them.
    app.cleanup_ctx.extend([pool_ctx, session_cache_ctx, verifier_ctx, purge_ctx, metrics_ctx])
    if config.tracing:
        tracing.instrument(app, tracing.otlp_exporter())
    app.cleanup_ctx.insert(0, tracing.tracing_ctx)  # stops last: the others' spans get out
    return app


def _allow_cross_origin(sub_app: web.Application, origins: tuple[str, ...]) -> None:
    """CORS with credentials for ALLOWED_ORIGINS; the CSRF check trusts the same list."""
    if not origins:
        return
    options = aiohttp_cors.ResourceOptions(
        allow_credentials=True,
        allow_headers=("Content-Type",),
        allow_methods=("GET", "POST", "PUT", "PATCH", "DELETE"),
        max_age=600,
    )
    cors = aiohttp_cors.setup(sub_app, defaults=dict.fromkeys(origins, options))
    for route in list(sub_app.router.routes()):
        cors.add(route)
