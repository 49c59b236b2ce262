"""Cookies: the session cookie and the login-nonce cookie, set and deleted with the same attributes.

A browser ignores a deletion whose name, path or Secure flag differ from the cookie's, so both
go through `_attributes`.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from aiohttp import hdrs, web

from service import nonces, sessions
from service.config import Config
from service.nonces import NONCE_COOKIE_LIFETIME

# Cookie headers whose session token hash a worker remembers, by their own SHA-256 (no secret
# kept), the least recently used going first: a browser sends the same header every time, and
# aiohttp's parse of it (every cookie in it, into Morsels) was 5% of a session check. Headers
# with no session cookie are not kept: random ones cannot push out the browsers' headers.
RECENT_COOKIE_HEADERS = 256
_recent: dict[bytes, bytes] = {}


def session_token_hash(request: web.Request, config: Config) -> bytes | None:
    """SHA-256 of the session cookie's value as `request.cookies` has it; None if it is unset or
    empty."""
    name = config.session_cookie_name
    header = request.headers.get(hdrs.COOKIE, "")
    key = hashlib.sha256(f"{name}\0{header}".encode("utf-8", "surrogateescape")).digest()
    token_hash = _recent.pop(key, None)
    if token_hash is None:
        token = request.cookies.get(name)
        if not token:
            return None
        token_hash = sessions.hash_token(token)
        if len(_recent) >= RECENT_COOKIE_HEADERS:
            del _recent[next(iter(_recent))]  # the least recently used
    _recent[key] = token_hash  # the most recently used, last
    return token_hash


def _attributes(config: Config) -> dict[str, Any]:
    return {"path": "/", "secure": config.cookie_secure, "httponly": True, "samesite": "Lax"}


def set_session_cookie(response: web.StreamResponse, config: Config, token: str) -> None:
    response.set_cookie(
        config.session_cookie_name,
        token,
        max_age=config.session_absolute_timeout,
        **_attributes(config),
    )


def delete_session_cookie(response: web.StreamResponse, config: Config) -> None:
    response.del_cookie(config.session_cookie_name, **_attributes(config))


def set_nonce_cookie(response: web.StreamResponse, config: Config, secret: str) -> None:
    name = config.nonce_cookie_prefix + nonces.new_cookie_id(time.time())
    response.set_cookie(name, secret, max_age=NONCE_COOKIE_LIFETIME, **_attributes(config))


def nonce_cookies(request: web.Request, config: Config) -> list[tuple[str, str]]:
    """This browser's live nonce cookies, (name, secret), oldest first."""
    now = time.time()
    found = []
    for name, secret in request.cookies.items():
        if not name.startswith(config.nonce_cookie_prefix):
            continue
        issued = nonces.issued_at(name.removeprefix(config.nonce_cookie_prefix))
        if issued is not None and -nonces.CLOCK_SKEW <= now - issued < NONCE_COOKIE_LIFETIME:
            found.append((issued, name, secret))
    return [(name, secret) for _, name, secret in sorted(found)]


def delete_nonce_cookie(response: web.StreamResponse, config: Config, name: str) -> None:
    response.del_cookie(name, **_attributes(config))
