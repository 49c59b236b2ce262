"""Token verification: a Google ID token in, verified claims out, or an `Unauthorized` saying why.

google-auth does the cryptography and the `exp`/`iat`/`aud` checks in a worker thread (it
blocks on fetching certs); its certs go through a CacheControl-wrapped `requests` session, so
they are fetched once per their Cache-Control lifetime, not per sign-in. The rest of Google's
rules (issuer, `nbf`, algorithm) are checked here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import cachecontrol
import google.auth.exceptions
import google.auth.transport.requests
import requests
from aiohttp import web
from google.auth import jwt
from google.oauth2 import id_token

from service.config import CONFIG, Config
from service.errors import ServiceUnavailable, Unauthorized

log = logging.getLogger(__name__)

GOOGLE_ISSUERS = frozenset({"accounts.google.com", "https://accounts.google.com"})
CLOCK_SKEW = 10  # seconds allowed either way on exp, iat and nbf
CERTS_TIMEOUT = 10
MAX_EXP = 253402300800  # 10000-01-01: beyond it neither Postgres nor datetime can hold the time

# google-auth says what failed only in its messages; these map them to stable error codes.
_FAILURES = (
    ("Token expired", "token_expired", "The sign-in token has expired."),
    ("Token used too early", "token_used_too_early", "The sign-in token is not valid yet."),
    ("wrong audience", "invalid_audience", "The sign-in token is for another application."),
    ("Could not verify token signature", "invalid_signature", "The token's signature is invalid."),
    ("Certificate for key id", "unknown_key", "The token was signed by an unknown key."),
    ("Certificate key type", "unsupported_algorithm", "The token's algorithm is not Google's."),
)


@dataclass(frozen=True)
class GoogleIdentity:
    """Who a verified ID token says the person is."""

    sub: str
    email: str
    email_verified: bool
    hosted_domain: str | None
    name: str
    picture: str

    @property
    def google_is_authoritative(self) -> bool:
        """Whether Google owns this address, so it may claim a row created for it beforehand."""
        return self.email_verified and (
            self.hosted_domain is not None or self.email.lower().endswith("@gmail.com")
        )

    def is_allowed(self, config: Config) -> bool:
        """ALLOWED_DOMAINS (by the `hd` claim, never the email's suffix) or ALLOWED_EMAILS."""
        if not config.allowed_domains and not config.allowed_emails:
            return True
        domain = (self.hosted_domain or "").lower()
        return domain in config.allowed_domains or self.email.lower() in config.allowed_emails


@dataclass(frozen=True)
class VerifiedToken:
    identity: GoogleIdentity
    nonce: str | None
    expires_at: float


class TokenVerifier:
    """Verifies ID tokens against Google's certs, and against extra in-memory certs (dev login)."""

    def __init__(
        self,
        *,
        audiences: tuple[str, ...],
        certs_url: str,
        executor: ThreadPoolExecutor,
        local_certs: Mapping[str, str] | None = None,
    ) -> None:
        self.audiences = list(audiences)
        self.certs_url = certs_url
        self.executor = executor
        self.local_certs = dict(local_certs or {})
        session = cachecontrol.CacheControl(requests.Session())
        self._http = session
        self._request = google.auth.transport.requests.Request(session=session)
        self._fetch_lock = threading.Lock()

    def close(self) -> None:
        self._http.close()

    async def verify(self, token: str) -> VerifiedToken:
        """The token's claims once every check passed; never logs or keeps the token."""
        header = _header(token)
        if header.get("alg") != "RS256":
            raise Unauthorized("unsupported_algorithm", "The token's algorithm is not Google's.")
        loop = asyncio.get_running_loop()
        try:
            claims: dict[str, Any] = dict(
                await loop.run_in_executor(self.executor, self._verify_blocking, token, header)
            )
        except (google.auth.exceptions.TransportError, requests.RequestException) as error:
            log.warning("fetching Google's certs failed: %s", type(error).__name__)
            raise ServiceUnavailable(
                "certs_unavailable", "Google's signing keys could not be fetched; try again."
            ) from None
        # google-auth's InvalidValue and MalformedError; TypeError on a non-numeric exp or iat;
        # RecursionError on a deeply nested header or payload.
        except (ValueError, TypeError, RecursionError) as error:
            raise _unauthorized(str(error)) from None
        _check_claims(claims)
        nonce = claims.get("nonce")
        hosted_domain = claims.get("hd")
        return VerifiedToken(
            identity=GoogleIdentity(
                sub=claims["sub"],
                email=claims["email"],
                email_verified=True,
                hosted_domain=hosted_domain if isinstance(hosted_domain, str) else None,
                name=str(claims.get("name") or ""),
                picture=str(claims.get("picture") or ""),
            ),
            nonce=nonce if isinstance(nonce, str) else None,
            expires_at=float(claims["exp"]),
        )

    def _verify_blocking(self, token: str, header: Mapping[str, Any]) -> Mapping[str, Any]:
        if header.get("kid") in self.local_certs:
            return jwt.decode(  # type: ignore[no-any-return]
                token,
                certs=self.local_certs,
                audience=self.audiences,
                clock_skew_in_seconds=CLOCK_SKEW,
            )
        fetch: Any = self._fetch_certs  # google-auth types it as a Request; it is only called
        return id_token.verify_token(
            token,
            fetch,
            audience=self.audiences,
            certs_url=self.certs_url,
            clock_skew_in_seconds=CLOCK_SKEW,
        )

    def _fetch_certs(self, url: str, method: str = "GET", **kwargs: Any) -> Any:
        """verify_token's request, with a timeout; a body that is not certs is Google's failure."""
        # One fetch at a time: logins arriving together on a cold cache share the first fetch.
        with self._fetch_lock:
            response = self._request(url, method=method, timeout=CERTS_TIMEOUT, **kwargs)
        if response.status == 200:
            try:
                certs = json.loads(response.data)
            except ValueError:
                certs = None
            if not isinstance(certs, dict):
                raise google.auth.exceptions.TransportError("the certs are not a JSON object")
        return response


def _header(token: str) -> Mapping[str, Any]:
    try:
        header = jwt.decode_header(token)
    except (ValueError, TypeError, RecursionError):
        raise Unauthorized("malformed_token", "The credential is not a valid ID token.") from None
    if not isinstance(header, Mapping):
        raise Unauthorized("malformed_token", "The credential is not a valid ID token.")
    return header


def _unauthorized(message: str) -> Unauthorized:
    # The message may quote the token itself, so it is matched, never logged or returned.
    for fragment, code, text in _FAILURES:
        if fragment in message:
            return Unauthorized(code, text)
    return Unauthorized("malformed_token", "The credential is not a valid ID token.")


def _check_claims(claims: Mapping[str, Any]) -> None:
    if claims.get("iss") not in GOOGLE_ISSUERS:
        raise Unauthorized("invalid_issuer", "The sign-in token was not issued by Google.")
    nbf = claims.get("nbf")
    if nbf is not None and (not isinstance(nbf, int | float) or nbf > time.time() + CLOCK_SKEW):
        raise Unauthorized("token_used_too_early", "The sign-in token is not valid yet.")
    exp = claims.get("exp")
    if isinstance(exp, bool) or not isinstance(exp, int | float) or not 0 < exp < MAX_EXP:
        raise Unauthorized("malformed_token", "The sign-in token has no valid exp.")
    for name in ("sub", "email"):
        if not isinstance(claims.get(name), str) or not claims[name]:
            raise Unauthorized("malformed_token", f"The sign-in token has no {name}.")
    if claims.get("email_verified") is not True:
        raise Unauthorized("email_not_verified", "Google has not verified this email address.")


async def verifier_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    # Verification is mostly waiting on certs or CPU-bound RSA; a few threads are plenty.
    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="verify") as executor:
        verifier = TokenVerifier(
            audiences=config.client_ids,
            certs_url=config.google_certs_url,
            executor=executor,
            local_certs=app.get(LOCAL_CERTS, {}),
        )
        app[VERIFIER] = verifier
        yield
        verifier.close()


VERIFIER = web.AppKey("verifier", TokenVerifier)
LOCAL_CERTS = web.AppKey("local_certs", dict[str, str])
