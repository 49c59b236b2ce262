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
    failure = await request.app[READINESS].check(request.app)
    if failure is not None:
        raise ServiceUnavailable(*failure)
    return web.json_response({"status": "ready"})


class Readiness:
    """Whether Postgres can serve, checked once at a time, shared by every probe waiting.

    Probes answer outside the admission queue; so that a flood of them cannot fill the pool
    instead, however many come at once, each worker has at most one check in flight.
    """

    def __init__(self) -> None:
        self._checking: asyncio.Task[tuple[str, str] | None] | None = None

    async def check(self, app: web.Application) -> tuple[str, str] | None:
        """None when ready, else the (code, message) that says why not."""
        if self._checking is None:
            self._checking = asyncio.create_task(_failure(app))
            self._checking.add_done_callback(self._done)
        # Shielded: a probe that gives up does not cancel everyone's check.
        return await asyncio.shield(self._checking)

    def _done(self, _: asyncio.Task[tuple[str, str] | None]) -> None:
        self._checking = None


async def _failure(app: web.Application) -> tuple[str, str] | None:
    try:
        async with asyncio.timeout(READY_TIMEOUT), app[POOL].acquire() as conn:
            revision = await schema.current_revision(conn)
            # A pool left on a standby after a failover reads fine but cannot sign anyone in.
            read_only = await conn.fetchval("SELECT current_setting('transaction_read_only')")
    except DATABASE_UNAVAILABLE as error:
        return database_failure(error) or ("database_unavailable", "The database failed.")
    if read_only == "on":
        # New connections follow DATABASE_URL to wherever the primary is now.
        await app[POOL].expire_connections()
        return "database_read_only", "The database is read-only (failing over?)."
    if revision != app[SCHEMA_HEAD]:
        return "migrations_pending", f"The schema is at {revision}, not {app[SCHEMA_HEAD]}."
    return None


READINESS = web.AppKey("readiness", Readiness)
