"""Middlewares, one concern each, and the response headers every answer carries.

Order, outermost first (see `create_app`):

    access_log      times and logs every request, whatever happens inside
    errors          turns every exception below into JSON {"error", "message"}
    [forwarded]     the client IP from a trusted proxy's X-Forwarded-For (when configured)
    admission       lets at most REQUESTS_IN_FLIGHT requests per worker past, in arrival order
    /api only:
      api_checks    in turn: refuses cross-site unsafe requests before anything else sees
                    them; counts every login attempt that gets this far, whatever its
                    outcome; resolves the session cookie and enforces the handler's access
      /api/admin only:
        require_admin   admits administrators only
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from service import ratelimit
from service.access import Access, access_of, is_rate_limited
from service.config import CONFIG, Config
from service.cookies import session_token_hash
from service.db import DATABASE_UNAVAILABLE, POOL, database_failure
from service.errors import (
    ApiError,
    BadRequest,
    Forbidden,
    ServiceUnavailable,
    TooManyRequests,
    Unauthorized,
    error_response,
)
from service.logs import AccessLog
from service.metrics import METRICS
from service.payload import source_of
from service.session_cache import SESSION_CACHE
from service.sessions import CurrentSession

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ResponseHook = Callable[[web.Request, web.StreamResponse], Awaitable[None]]

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

_HTTP_ERROR_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
}


@dataclass
class RequestLog:
    """What the access line reports that only inner layers learn (they see a cloned request)."""

    user_id: int | None = None


# Probes answer at once, never behind a queue: a busy worker is not a dead one.
PROBE_PATHS = ("/healthz", "/readyz")

ACCESS_LOG = web.AppKey("access_log", AccessLog)
ADMISSION = web.AppKey("admission", asyncio.Semaphore)
BODY_TIMEOUT = 10.0  # seconds a request body may take to arrive
REQUEST_LOG = web.RequestKey("request_log", RequestLog)
CURRENT_SESSION = web.RequestKey("current_session", CurrentSession)
# Set by a handler that changed sessions or users (a logout, a revocation, a sign-in).
SESSIONS_CHANGED = web.RequestKey("sessions_changed", bool)


@web.middleware
async def access_log(request: web.Request, handler: Handler) -> web.StreamResponse:
    entry = request[REQUEST_LOG] = RequestLog()
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    finally:
        seconds = time.perf_counter() - started
        # raw_path stays percent-encoded, so a crafted path cannot forge log lines.
        request.app[ACCESS_LOG].write(
            request.method,
            request.rel_url.raw_path,
            status,
            round(seconds * 1000, 1),
            entry.user_id,
        )
        # By route template, never the raw path: a label's values must be few.
        resource = request.match_info.route.resource
        route = "unmatched" if resource is None else resource.canonical
        request.app[METRICS].request(route, request.method, status, seconds)


@web.middleware
async def admission(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Requests past the bound wait their turn here, in the order they arrived.

    Without it, a worker with 500 connections steps 500 requests at once: every await costs a
    whole turn of the event loop over all of them, so a sign-in's few round trips hold a pooled
    connection for seconds, and requests that need the pool time out while Postgres idles. A
    waiting request costs nothing per turn. Its body is read first, within BODY_TIMEOUT, so a
    client dripping one holds no slot; a request not admitted within the admission timeout is
    refused, so that sustained overload sheds load rather than growing the queue.
    """
    if request.path in PROBE_PATHS:
        return await handler(request)
    if request.body_exists:
        try:
            async with asyncio.timeout(BODY_TIMEOUT):
                await request.read()  # kept by aiohttp for the handler
        except TimeoutError:
            response = error_response(408, "request_timeout", "The request body came too slowly.")
            response.force_close()  # rather than read the rest of it
            return response
        except (web.RequestPayloadError, HttpProcessingError):  # a bad Content-Encoding, say
            raise BadRequest("bad_request", "The request body could not be read.") from None
    slots = request.config_dict[ADMISSION]
    try:
        if slots.locked():  # a timer only for a request that waits: one per request was a cost
            async with asyncio.timeout(request.config_dict[CONFIG].admission_timeout):
                await slots.acquire()
        else:
            await slots.acquire()  # returns at once
    except TimeoutError:
        raise ServiceUnavailable(
            "overloaded",
            "The service is too busy right now; try again.",
            headers={"Retry-After": "1"},
        ) from None
    try:
        gone = request.transport is None or request.transport.is_closing()
        if gone and request.method not in UNSAFE_METHODS:
            # Its client gave up while it waited: nothing is read for no one. A change it asked
            # for (a logout, say) is still made.
            return error_response(400, "client_closed", "The client closed the connection.")
        return await handler(request)
    finally:
        slots.release()


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as error:
        return error_response(error.status, error.code, error.message, error.headers)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        headers = {"Allow": error.headers["Allow"]} if "Allow" in error.headers else None
        code = _HTTP_ERROR_CODES.get(error.status, "http_error")
        return error_response(error.status, code, error.reason, headers)
    except DATABASE_UNAVAILABLE as error:
        if request.transport is None or request.transport.is_closing():
            # The client left mid-request (reading its body then fails the same way): no one
            # is waiting for an answer, and the database is fine.
            return error_response(400, "client_closed", "The client closed the connection.")
        failure = database_failure(error)
        if failure is None:
            return _internal_error(request)
        log.warning("%s: %s", failure[0], type(error).__name__)
        return error_response(503, *failure)
    except Exception:
        return _internal_error(request)


def _internal_error(request: web.Request) -> web.Response:
    log.exception("unhandled error on %s %s", request.method, request.rel_url.raw_path)
    return error_response(500, "internal_error", "Something went wrong on our side.")


@web.middleware
async def api_checks(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every /api request's checks, in this order: the same-site check, the login budget, the
    session. One middleware rather than three: each layer is a call and a coroutine more on
    every request, and these three always run together."""
    if request.method in UNSAFE_METHODS and not _is_same_site(request):
        # First, so that another site cannot spend its visitors' login budget either.
        raise Forbidden("csrf", "Cross-site request refused: its Origin is not this service's.")
    if is_rate_limited(handler):
        await _charge_login_budget(request)
    try:
        return await _with_session(request, handler)
    finally:
        if request.get(SESSIONS_CHANGED):
            # This worker's next answer from memory waits until it has read that change.
            request.config_dict[SESSION_CACHE].changed()


async def _charge_login_budget(request: web.Request) -> None:
    """Counts every login attempt that gets this far, whatever its outcome."""
    limit = request.config_dict[CONFIG].login_rate_limit
    wait = await ratelimit.hit(request.config_dict[POOL], source_of(request), limit)
    if wait:
        request.config_dict[METRICS].signin("failed", "rate_limited")
        raise TooManyRequests(
            "rate_limited",
            "Too many sign-in attempts from this address; try again later.",
            headers={"Retry-After": ratelimit.retry_after(wait)},
        )


def _is_same_site(request: web.Request) -> bool:
    origin = request.headers.get("Origin")
    if origin is None:
        # Browsers that omit Origin still say where a request came from.
        return request.headers.get("Sec-Fetch-Site") == "same-origin"
    return origin in request.config_dict[CONFIG].trusted_origins


async def _with_session(request: web.Request, handler: Handler) -> web.StreamResponse:
    access = access_of(handler)
    # Public handlers, CORS preflights and unmatched routes (404/405) need no session.
    if (
        access is Access.PUBLIC
        or request.method == "OPTIONS"
        or request.match_info.http_exception is not None
    ):
        return await handler(request)
    config = request.config_dict[CONFIG]
    token_hash = session_token_hash(request, config)
    cache = request.config_dict[SESSION_CACHE]
    # Fresh as of now, not of when the request arrived: one that waited for admission must
    # not be answered with a session revoked meanwhile.
    current = None
    if token_hash is not None:
        current = await cache.lookup(token_hash, checked_at=time.monotonic())
    if current is None:
        message = "Your session has ended; sign in again." if token_hash else "Sign in to continue."
        raise Unauthorized("not_signed_in", message)
    request[REQUEST_LOG].user_id = current.user.id
    if current.user.disabled:
        raise Forbidden("user_disabled", "This account is disabled.")
    request[CURRENT_SESSION] = current
    return await handler(request)


@web.middleware
async def require_admin(request: web.Request, handler: Handler) -> web.StreamResponse:
    # CORS preflights and unmatched routes carry no session (see `_with_session`).
    if request.method == "OPTIONS" or request.match_info.http_exception is not None:
        return await handler(request)
    if not request[CURRENT_SESSION].user.admin:
        raise Forbidden("admin_only", "This needs an administrator.")
    return await handler(request)


def security_headers(
    config: Config,
) -> Callable[[web.Request, web.StreamResponse], Awaitable[None]]:
    """The on_response_prepare hook: it runs for every response, streamed files and errors
    included."""
    every_response = {
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "strict-origin-when-cross-origin",
        # Google's sign-in popup must be able to message this window back.
        "Cross-Origin-Opener-Policy": "same-origin-allow-popups",
    }
    if config.hsts:
        every_response["Strict-Transport-Security"] = "max-age=63072000; includeSubDomains"
    overriding = {"Strict-Transport-Security"}

    async def add_security_headers(request: web.Request, response: web.StreamResponse) -> None:
        headers = response.headers
        for name, value in every_response.items():
            if name in overriding or name not in headers:
                headers[name] = value
        if request.path.startswith("/api/"):
            headers["Cache-Control"] = "no-store"

    return add_security_headers
