"""Signing in and out: the client's config, the login nonce, the login itself, and logout."""

from __future__ import annotations

from aiohttp import web

from service import audit, auth, devlogin, nonces, sessions, signins, tracing, users
from service.access import public, rate_limited
from service.auth import CLOCK_SKEW, VERIFIER
from service.config import CONFIG, GOOGLE_CLIENT_SCRIPT_URL
from service.cookies import (
    delete_nonce_cookie,
    delete_session_cookie,
    nonce_cookies,
    set_nonce_cookie,
    set_session_cookie,
)
from service.db import DATABASE_UNAVAILABLE, POOL, database_failure
from service.errors import ApiError, BadRequest, Forbidden, Unauthorized
from service.metrics import METRICS
from service.middleware import REQUEST_LOG, SESSIONS_CHANGED
from service.payload import client_of, read_json_object, source_of

routes = web.RouteTableDef()


@routes.get("/config")
@public
async def get_config(request: web.Request) -> web.Response:
    config = request.config_dict[CONFIG]
    script = devlogin.CLIENT_SCRIPT_PATH if config.dev_login else GOOGLE_CLIENT_SCRIPT_URL
    return web.json_response(
        {
            "google_client_id": config.client_ids[0],
            "gis_script_url": script,
            "dev_login": config.dev_login,
        }
    )


@routes.post("/login/nonce")
@public
async def create_login_nonce(request: web.Request) -> web.Response:
    config = request.config_dict[CONFIG]
    secret = nonces.generate_nonce_secret()
    response = web.json_response({"nonce": nonces.nonce_for(secret)})
    outstanding = nonce_cookies(request, config)
    for name, _ in outstanding[: max(0, len(outstanding) - nonces.MAX_OUTSTANDING + 1)]:
        delete_nonce_cookie(response, config, name)  # the oldest go
    set_nonce_cookie(response, config, secret)
    return response


@routes.post("/login")
@public
@rate_limited
async def login(request: web.Request) -> web.Response:
    email = None
    matched: auth.VerifiedToken | None = None  # a token whose nonce this browser holds
    try:
        with tracing.span(request, "sign_in"):
            credential = await _read_credential(request)
            with tracing.span(request, "verify_token"):
                verified = await request.config_dict[VERIFIER].verify(credential)
            email = verified.identity.email
            nonce_cookie = _nonce_cookie_of(request, verified)
            matched = verified
            user, token, replaced = await _sign_in(request, verified)
    except ApiError as error:
        # Counted first: recording the refusal may fail too (the database in trouble).
        request.config_dict[METRICS].signin("failed", error.code)
        await _refused(request, error, email=email, matched=matched)
        raise
    except DATABASE_UNAVAILABLE as error:
        failure = database_failure(error)
        request.config_dict[METRICS].signin("failed", failure[0] if failure else "database_error")
        raise
    metrics = request.config_dict[METRICS]
    metrics.signin("ok", "ok")
    metrics.session_created()
    if replaced:
        metrics.sessions_ended("replaced")
    request[SESSIONS_CHANGED] = True
    request[REQUEST_LOG].user_id = user.id
    response = web.json_response({"user": user.public()})
    config = request.config_dict[CONFIG]
    set_session_cookie(response, config, token)
    delete_nonce_cookie(response, config, nonce_cookie)
    return response


async def _refused(
    request: web.Request,
    error: ApiError,
    *,
    email: str | None,
    matched: auth.VerifiedToken | None,
) -> None:
    """Record a refused sign-in; a token refused once its nonce matched spends it all the same,
    in the same commit, so that it can never be tried again (say, once the account is enabled).
    """
    async with request.config_dict[POOL].acquire() as conn, conn.transaction():
        if matched is not None and matched.nonce is not None and error.code != "nonce_replayed":
            await nonces.spend(conn, matched.nonce, until=matched.expires_at + CLOCK_SKEW)
        await audit.record_failed_login(
            conn, **client_of(request), source=source_of(request), error=error.code, email=email
        )


async def _read_credential(request: web.Request) -> str:
    body = await read_json_object(request)
    credential = body.get("credential")
    if not isinstance(credential, str) or not credential.strip():
        raise BadRequest("missing_credential", "The body needs a non-empty 'credential' string.")
    return credential.strip()


def _nonce_cookie_of(request: web.Request, verified: auth.VerifiedToken) -> str:
    """The name of this browser's nonce cookie whose secret the token's nonce is the hash of."""
    if verified.nonce is not None:
        for name, secret in nonce_cookies(request, request.config_dict[CONFIG]):
            if nonces.matches(secret, verified.nonce):
                return name
    raise Unauthorized("invalid_nonce", "The sign-in does not match this browser's login nonce.")


async def _sign_in(
    request: web.Request, verified: auth.VerifiedToken
) -> tuple[users.User, str, bool]:
    """The user signed in, the new session's token, and whether a session the browser brought
    was ended."""
    config = request.config_dict[CONFIG]
    pool = request.config_dict[POOL]
    client = client_of(request)
    assert verified.nonce is not None  # matched to a cookie
    identity = verified.identity
    if not identity.is_allowed(config):
        raise Forbidden("not_allowed", "This Google account may not sign in here.")
    # ADMIN_EMAILS grants only where Google owns the address, as for linking a row.
    make_admin = identity.google_is_authoritative and identity.email.lower() in config.admin_emails
    nonce_until = verified.expires_at + CLOCK_SKEW
    token = sessions.generate_session_token()
    previous = request.cookies.get(config.session_cookie_name)
    if not previous:
        # Nearly every sign-in, in one round trip; anything less simple gets None.
        user = await signins.sign_in_returning_user(
            pool,
            identity,
            nonce=verified.nonce,
            nonce_until=nonce_until,
            make_admin=make_admin,
            token=token,
            lifetime=config.session_absolute_timeout,
            **client,
        )
        if user is not None:
            return user, token, False
    # One transaction, one durable commit: the user, the spent nonce, the session the browser
    # brought ended, the new session and the audit event stand or fall together. The user's
    # row is locked before the nonce is spent, in the one statement's order, so that replays
    # taking either path at once wait for each other rather than deadlock; the second fails.
    async with pool.acquire() as conn, conn.transaction():
        user = await users.sign_in(conn, identity, make_admin=make_admin)
        if not await nonces.spend(conn, verified.nonce, until=nonce_until):
            raise Unauthorized("nonce_replayed", "This sign-in token has already been used.")
        # A new session on every sign-in; any session the browser brought is ended (no fixation).
        ended = await sessions.invalidate_session_token(conn, previous) if previous else None
        if ended:
            await audit.record(
                conn,
                "session_revoked",
                user_id=ended[1],
                **client,
                session_id=str(ended[0]),
                reason="replaced_by_login",
            )
        session = await sessions.create_session(
            conn, token, user.id, lifetime=config.session_absolute_timeout, **client
        )
        await audit.record(conn, "login_ok", user_id=user.id, **client, session_id=str(session.id))
    return user, token, ended is not None


@routes.post("/logout")
@public
async def logout(request: web.Request) -> web.Response:
    config = request.config_dict[CONFIG]
    token = request.cookies.get(config.session_cookie_name)
    if token:
        async with request.config_dict[POOL].acquire() as conn, conn.transaction():
            ended = await sessions.invalidate_session_token(conn, token)
            if ended:
                request[SESSIONS_CHANGED] = True
                await audit.record(
                    conn, "logout", user_id=ended[1], **client_of(request), session_id=str(ended[0])
                )
        if ended:  # committed
            request.config_dict[METRICS].sessions_ended("logout")
    response = web.Response(status=204)
    delete_session_cookie(response, config)
    return response
