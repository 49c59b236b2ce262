"""Where you're signed in: the signed-in user's own sessions, and ending them."""

from __future__ import annotations

from aiohttp import web

from service import audit, sessions
from service.config import CONFIG
from service.cookies import delete_session_cookie
from service.db import POOL
from service.errors import NotFound
from service.metrics import METRICS
from service.middleware import CURRENT_SESSION, SESSIONS_CHANGED
from service.payload import client_of, path_uuid

routes = web.RouteTableDef()


@routes.get("/sessions")
async def list_my_sessions(request: web.Request) -> web.Response:
    current = request[CURRENT_SESSION]
    mine = await sessions.list_for_user(
        request.config_dict[POOL],
        current.user.id,
        idle_timeout=request.config_dict[CONFIG].session_idle_timeout,
    )
    results = [{**s.public(), "current": s.id == current.session.id} for s in mine]
    return web.json_response({"results": results})


@routes.delete("/sessions/{id}")
async def revoke_my_session(request: web.Request) -> web.Response:
    current = request[CURRENT_SESSION]
    session_id = path_uuid(request, "session")
    async with request.config_dict[POOL].acquire() as conn, conn.transaction():
        # Someone else's session is as unknown as one that never existed.
        if await sessions.invalidate_session(conn, session_id, user_id=current.user.id) is None:
            raise NotFound("not_found", "No such session.")
        await audit.record(
            conn,
            "session_revoked",
            user_id=current.user.id,
            **client_of(request),
            session_id=str(session_id),
            reason="user",
        )
    request.config_dict[METRICS].sessions_ended("revoked_by_user")
    request[SESSIONS_CHANGED] = True
    response = web.Response(status=204)
    if session_id == current.session.id:
        delete_session_cookie(response, request.config_dict[CONFIG])
    return response


@routes.post("/sessions/revoke-others")
async def revoke_my_other_sessions(request: web.Request) -> web.Response:
    current = request[CURRENT_SESSION]
    async with request.config_dict[POOL].acquire() as conn, conn.transaction():
        revoked = await sessions.invalidate_user_sessions(
            conn, current.user.id, keep=current.session.id
        )
        if revoked:
            await audit.record(
                conn,
                "sessions_revoked",
                user_id=current.user.id,
                **client_of(request),
                count=revoked,
                reason="user_revoked_others",
            )
    request.config_dict[METRICS].sessions_ended("revoked_by_user", revoked)
    request[SESSIONS_CHANGED] = True
    return web.json_response({"revoked": revoked})
