"""Health: liveness (`/healthz`) and readiness (`/readyz`) for load balancers and orchestrators."""

from __future__ import annotations

import asyncio
import json

from aiohttp import web

from service import schema
from service.db import DATABASE_UNAVAILABLE, POOL, database_failure
from service.errors import ServiceUnavailable

routes = web.RouteTableDef()

SCHEMA_HEAD = web.AppKey("schema_head", str)
READY_TIMEOUT = 2.0


_ALIVE = json.dumps({"status": "ok"}).encode()  # encoded once: probes come often


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return web.Response(body=_ALIVE, content_type="application/json")


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    try:
        async with asyncio.timeout(READY_TIMEOUT), request.app[POOL].acquire() as conn:
            revision = await schema.current_revision(conn)
            # A pool left on a standby after a failover reads fine but cannot sign anyone in.
            read_only = await conn.fetchval("SELECT current_setting('transaction_read_only')")
    except DATABASE_UNAVAILABLE as error:
        code, message = database_failure(error) or ("database_unavailable", "The database failed.")
        raise ServiceUnavailable(code, message) from None
    if read_only == "on":
        # New connections follow DATABASE_URL to wherever the primary is now.
        await request.app[POOL].expire_connections()
        raise ServiceUnavailable("database_read_only", "The database is read-only (failing over?).")
    if revision != request.app[SCHEMA_HEAD]:
        raise ServiceUnavailable(
            "migrations_pending", f"The schema is at {revision}, not {request.app[SCHEMA_HEAD]}."
        )
    return web.json_response({"status": "ready"})
