"""Admin: the service's status, users, everyone's sessions and the audit log; a sub-app whose
guard admits admins only.

Each change and its audit event commit together: an action that cannot be recorded is not done.
Changes run one at a time, each checking again that its admin still is one.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from aiohttp import web

from service import audit, sessions, stats, users
from service.config import CONFIG
from service.db import POOL
from service.errors import BadRequest, Conflict, NotFound
from service.metrics import METRICS
from service.middleware import CURRENT_SESSION, SESSIONS_CHANGED, require_admin
from service.payload import (
    MAX_BIGINT,
    MAX_PAGE,
    bool_field,
    client_of,
    email_field,
    page_params,
    path_id,
    path_uuid,
    query_int,
    query_text,
    read_json_object,
    text_field,
)
from service.session_cache import SESSION_CACHE, SessionCache

routes = web.RouteTableDef()


def create_admin_app() -> web.Application:
    admin = web.Application(middlewares=[require_admin])
    admin.add_routes(routes)
    return admin


@asynccontextmanager
async def _transaction(request: web.Request) -> AsyncIterator[asyncpg.Connection]:
    """A transaction for one admin change, in which the actor is checked again under a lock."""
    async with request.config_dict[POOL].acquire() as conn, conn.transaction():
        await users.lock_admin_changes(conn, actor_session=request[CURRENT_SESSION].session.id)
        yield conn
    request[SESSIONS_CHANGED] = True


async def _record(conn: asyncpg.Connection, request: web.Request, kind: str, **detail: Any) -> None:
    """Every admin action is an auth event of the acting admin."""
    user_id = request[CURRENT_SESSION].user.id
    await audit.record(conn, kind, user_id=user_id, **client_of(request), **detail)


def _not_self(request: web.Request, user_id: int, action: str) -> None:
    if user_id == request[CURRENT_SESSION].user.id:
        raise Conflict("cannot_change_self", f"Administrators cannot {action} themselves.")


def _idle_timeout(request: web.Request) -> int:
    return request.config_dict[CONFIG].session_idle_timeout


@routes.get("/users")
async def list_users(request: web.Request) -> web.Response:
    offset, limit = page_params(request)
    pool = request.config_dict[POOL]
    page, total = await users.list_page(
        pool, query=query_text(request, "query"), offset=offset, limit=limit
    )
    live = await sessions.count_live(
        pool, [u.id for u in page], idle_timeout=_idle_timeout(request)
    )
    results = [users.UserSummary(u, live.get(u.id, 0)).public() for u in page]
    return web.json_response({"results": results, "total": total})


@routes.post("/users")
async def create_user(request: web.Request) -> web.Response:
    body = await read_json_object(request)
    email = email_field(body)
    name = text_field(body, "name", max_length=100, required=False)
    admin = bool_field(body, "admin") or False
    async with _transaction(request) as conn:
        user = await users.create(conn, email, name=name, admin=admin)
        if user is None:
            raise Conflict("user_exists", f"A user with the email {email} already exists.")
        await _record(
            conn, request, "admin_user_created", target_user_id=user.id, email=email, admin=admin
        )
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
    async with _transaction(request) as conn:
        user = await users.set_flags(conn, user_id, disabled=disabled, admin=admin)
        if user is None:
            raise NotFound("not_found", "No such user.")
        # Disabling and revoking commit together: no request gets in between.
        revoked = await sessions.invalidate_user_sessions(conn, user_id) if disabled else 0
        await _record(
            conn,
            request,
            "admin_user_updated",
            target_user_id=user_id,
            disabled=disabled,
            admin=admin,
            sessions_revoked=revoked,
        )
    request.config_dict[METRICS].sessions_ended("revoked_by_admin", revoked)
    live = await sessions.count_live(
        request.config_dict[POOL], [user_id], idle_timeout=_idle_timeout(request)
    )
    return web.json_response(users.UserSummary(user, live.get(user_id, 0)).public())


@routes.delete("/users/{id}")
async def delete_user(request: web.Request) -> web.Response:
    user_id = path_id(request, "user")
    _not_self(request, user_id, "delete")
    async with _transaction(request) as conn:
        user = await users.delete(conn, user_id)
        if user is None:
            raise NotFound("not_found", "No such user.")
        await _record(conn, request, "admin_user_deleted", target_user_id=user_id, email=user.email)
    return web.Response(status=204)


@routes.post("/users/{id}/revoke-sessions")
async def revoke_user_sessions(request: web.Request) -> web.Response:
    user_id = path_id(request, "user")
    async with _transaction(request) as conn:
        if await users.get(conn, user_id) is None:
            raise NotFound("not_found", "No such user.")
        revoked = await sessions.invalidate_user_sessions(conn, user_id)
        await _record(
            conn, request, "admin_sessions_revoked", target_user_id=user_id, count=revoked
        )
    request.config_dict[METRICS].sessions_ended("revoked_by_admin", revoked)
    return web.json_response({"revoked": revoked})


@routes.get("/sessions")
async def list_sessions(request: web.Request) -> web.Response:
    offset, limit = page_params(request)
    page, total = await sessions.list_live(
        request.config_dict[POOL],
        user_id=query_int(request, "user_id", 0, low=1, high=MAX_BIGINT) or None,
        idle_timeout=_idle_timeout(request),
        offset=offset,
        limit=limit,
    )
    return web.json_response({"results": [s.public() for s in page], "total": total})


@routes.delete("/sessions/{id}")
async def revoke_session(request: web.Request) -> web.Response:
    session_id = path_uuid(request, "session")
    async with _transaction(request) as conn:
        owner = await sessions.invalidate_session(conn, session_id)
        if owner is None:
            raise NotFound("not_found", "No such session.")
        await _record(
            conn,
            request,
            "admin_session_revoked",
            target_user_id=owner,
            session_id=str(session_id),
        )
    request.config_dict[METRICS].sessions_ended("revoked_by_admin")
    return web.Response(status=204)


@routes.get("/status")
async def status(request: web.Request) -> web.Response:
    """Live counts, the last day's sign-ins, and this worker's session cache."""
    async with request.config_dict[POOL].acquire() as conn:
        counts = await stats.live_counts(conn, idle_timeout=_idle_timeout(request))
        hours = await audit.sign_ins_by_hour(conn)
        reasons = await audit.failure_reasons(
            conn, since=hours[0].start, limit=audit.TOP_FAILURE_REASONS
        )
    sign_ins = {
        "since": hours[0].start.isoformat(),
        "ok": sum(h.ok for h in hours),
        "failed": sum(h.failed for h in hours),
        "hours": [h.public() for h in hours],
        "failure_reasons": [r.public() for r in reasons],
    }
    return web.json_response(
        {
            **counts.public(),
            "sign_ins": sign_ins,
            "session_cache": _session_cache_status(request.config_dict[SESSION_CACHE]),
        }
    )


def _session_cache_status(cache: SessionCache) -> dict[str, Any]:
    """The cache of the worker that answers: each worker has its own."""
    held_sessions, held_users = cache.size
    coherent, last_pass_age = cache.coherent, cache.last_pass_age
    return {
        "worker": os.getpid(),
        "enabled": cache.enabled,
        "coherent": coherent,
        "last_pass_age": None if last_pass_age is None else round(last_pass_age, 3),
        "fresh_for": cache.fresh_for,
        "sessions": held_sessions,
        "users": held_users,
    }


@routes.get("/audit/kinds")
async def list_audit_kinds(request: web.Request) -> web.Response:
    return web.json_response({"kinds": list(audit.KINDS)})


@routes.get("/audit")
async def list_audit(request: web.Request) -> web.Response:
    kind = query_text(request, "kind", max_length=64)
    if kind is not None and kind not in audit.KINDS:
        raise BadRequest("invalid_kind", "'kind' must be one of /api/admin/audit/kinds.")
    events, next_before = await audit.list_page(
        request.config_dict[POOL],
        user_id=query_int(request, "user_id", 0, low=1, high=MAX_BIGINT) or None,
        user_email=query_text(request, "user_email", max_length=254),
        kind=kind,
        before=query_int(request, "before", 0, low=1, high=MAX_BIGINT) or None,
        limit=query_int(request, "limit", 100, low=1, high=MAX_PAGE),
    )
    return web.json_response({"results": [e.public() for e in events], "next_before": next_before})
