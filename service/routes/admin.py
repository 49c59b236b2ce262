"""Admin: users, everyone's sessions and the audit log; a sub-app whose guard admits admins only."""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp import web

from service import audit, sessions, users
from service.config import CONFIG
from service.db import POOL
from service.errors import Conflict, NotFound
from service.middleware import CURRENT_SESSION, require_admin
from service.payload import (
    bool_field,
    client_of,
    email_field,
    path_id,
    path_uuid,
    query_int,
    query_text,
    read_json_object,
    text_field,
)

routes = web.RouteTableDef()

MAX_PAGE = 500


def create_admin_app() -> web.Application:
    admin = web.Application(middlewares=[require_admin])
    admin.add_routes(routes)
    return admin


async def _record(request: web.Request, kind: str, **detail: Any) -> None:
    """Every admin action is an auth event of the acting admin."""
    await audit.record(
        request.config_dict[POOL],
        kind,
        user_id=request[CURRENT_SESSION].user.id,
        **client_of(request),
        **detail,
    )


def _not_self(request: web.Request, user_id: int, action: str) -> None:
    # So the last admin can never lock everyone out.
    if user_id == request[CURRENT_SESSION].user.id:
        raise Conflict("cannot_change_self", f"Administrators cannot {action} themselves.")


@routes.get("/users")
async def list_users(request: web.Request) -> web.Response:
    page, total = await users.list_page(
        request.config_dict[POOL],
        query=query_text(request, "query"),
        offset=query_int(request, "offset", 0, low=0, high=2**62),
        limit=query_int(request, "limit", 100, low=1, high=MAX_PAGE),
        idle_timeout=request.config_dict[CONFIG].session_idle_timeout,
    )
    return web.json_response({"results": [u.public() for u in page], "total": total})


@routes.post("/users")
async def create_user(request: web.Request) -> web.Response:
    body = await read_json_object(request)
    email = email_field(body)
    name = text_field(body, "name", max_length=100, required=False)
    admin = bool_field(body, "admin") or False
    user = await users.create(request.config_dict[POOL], email, name=name, admin=admin)
    if user is None:
        raise Conflict("user_exists", f"A user with the email {email} already exists.")
    await _record(request, "admin_user_created", target_user_id=user.id, email=email, admin=admin)
    return web.json_response(users.UserSummary(user, 0).public(), status=201)


@routes.patch("/users/{id}")
async def update_user(request: web.Request) -> web.Response:
    user_id = path_id(request, "user")
    body = await read_json_object(request)
    disabled = bool_field(body, "disabled")
    admin = bool_field(body, "admin")
    if disabled is True:
        _not_self(request, user_id, "disable")
    if admin is False:
        _not_self(request, user_id, "demote")
    pool = request.config_dict[POOL]
    async with pool.acquire() as conn, conn.transaction():
        user = await users.set_flags(conn, user_id, disabled=disabled, admin=admin)
        if user is None:
            raise NotFound("not_found", "No such user.")
        # Disabling and revoking commit together: no request gets in between.
        revoked = await sessions.invalidate_user_sessions(conn, user_id) if disabled else 0
    await _record(
        request,
        "admin_user_updated",
        target_user_id=user_id,
        disabled=disabled,
        admin=admin,
        sessions_revoked=revoked,
    )
    summary = users.UserSummary(user, 0 if user.disabled else await _live_count(request, user_id))
    return web.json_response(summary.public())


async def _live_count(request: web.Request, user_id: int) -> int:
    _, total = await sessions.list_live(
        request.config_dict[POOL],
        user_id=user_id,
        idle_timeout=request.config_dict[CONFIG].session_idle_timeout,
        offset=0,
        limit=1,
    )
    return total


@routes.delete("/users/{id}")
async def delete_user(request: web.Request) -> web.Response:
    user_id = path_id(request, "user")
    _not_self(request, user_id, "delete")
    user = await users.delete(request.config_dict[POOL], user_id)
    if user is None:
        raise NotFound("not_found", "No such user.")
    await _record(request, "admin_user_deleted", target_user_id=user_id, email=user.email)
    return web.Response(status=204)


@routes.post("/users/{id}/revoke-sessions")
async def revoke_user_sessions(request: web.Request) -> web.Response:
    user_id = path_id(request, "user")
    pool = request.config_dict[POOL]
    if await users.get(pool, user_id) is None:
        raise NotFound("not_found", "No such user.")
    revoked = await sessions.invalidate_user_sessions(pool, user_id)
    await _record(request, "admin_sessions_revoked", target_user_id=user_id, count=revoked)
    return web.json_response({"revoked": revoked})


@routes.get("/sessions")
async def list_sessions(request: web.Request) -> web.Response:
    user_id = query_int(request, "user_id", 0, low=1, high=2**63 - 1) or None
    page, total = await sessions.list_live(
        request.config_dict[POOL],
        user_id=user_id,
        idle_timeout=request.config_dict[CONFIG].session_idle_timeout,
        offset=query_int(request, "offset", 0, low=0, high=2**62),
        limit=query_int(request, "limit", 100, low=1, high=MAX_PAGE),
    )
    return web.json_response({"results": [s.public() for s in page], "total": total})


@routes.delete("/sessions/{id}")
async def revoke_session(request: web.Request) -> web.Response:
    session_id: uuid.UUID = path_uuid(request, "session")
    owner = await sessions.invalidate_session(request.config_dict[POOL], session_id)
    if owner is None:
        raise NotFound("not_found", "No such session.")
    await _record(
        request, "admin_session_revoked", target_user_id=owner, session_id=str(session_id)
    )
    return web.Response(status=204)


@routes.get("/audit")
async def list_audit(request: web.Request) -> web.Response:
    limit = query_int(request, "limit", 100, low=1, high=MAX_PAGE)
    events, next_before = await audit.list_page(
        request.config_dict[POOL],
        user_id=query_int(request, "user_id", 0, low=1, high=2**63 - 1) or None,
        kind=query_text(request, "kind", max_length=64),
        before=query_int(request, "before", 0, low=1, high=2**63 - 1) or None,
        limit=limit,
    )
    return web.json_response({"results": [e.public() for e in events], "next_before": next_before})
