"""Cookies: the session cookie and the login-nonce cookie, set and deleted with the same attributes.

A browser ignores a deletion whose name, path or Secure flag differ from the cookie's, so both
go through `_attributes`.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from service.config import Config
from service.nonces import NONCE_COOKIE_LIFETIME


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
    response.set_cookie(
        config.nonce_cookie_name, secret, max_age=NONCE_COOKIE_LIFETIME, **_attributes(config)
    )


def delete_nonce_cookie(response: web.StreamResponse, config: Config) -> None:
    response.del_cookie(config.nonce_cookie_name, **_attributes(config))
