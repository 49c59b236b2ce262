"""Token verification: a Google ID token in, verified claims out, or an `Unauthorized` saying why.

google-auth checks the signature and `exp`/`iat`/`aud` in a worker thread (RSA is CPU work);
the rest of Google's rules (issuer, `nbf`, algorithm) are checked here. Google's certs are
fetched with aiohttp and kept in memory for their Cache-Control lifetime, so a sign-in
normally does no I/O for them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from google.auth import jwt

from service.config import CONFIG, Config
from service.errors import ServiceUnavailable, Unauthorized
from service.payload import storable

log = logging.getLogger(__name__)

GOOGLE_ISSUERS = frozenset({"accounts.google.com", "https://accounts.google.com"})
CLOCK_SKEW = 10  # seconds allowed either way on exp, iat and nbf
CERTS_TIMEOUT = 10  # seconds a sign-in may wait for Google's certs, however many wait
RETRY_EVERY = 5  # seconds after a failed fetch before another is tried
MAX_CERTS_BYTES = 256 * 1024
CERTS_GRACE = 900  # seconds expired certs stay usable while refreshing them fails
MIN_CERTS_LIFETIME = 60  # seconds between fetches, whatever the Cache-Control says
MAX_CERTS_LIFETIME = 86400
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


class GoogleCerts:
    """Google's signing certs, fetched once per their lifetime and shared by every sign-in.

    Every caller that needs a fetch waits on the same one, which gives up after CERTS_TIMEOUT
    in all (however slowly the endpoint drips its answer), so all of them fail together and
    none waits longer; after a failure, fetches are tried again at most every `retry_every`.
    Expired certs stay in use for up to `grace` seconds, refreshed in the background
    meanwhile: Google publishes a key well before it signs with it and keeps it well after, so
    a set just past its lifetime is still right, and an outage of Google's endpoint does not
    stop sign-ins. A key id that is not in the set asks Google again, at most once per
    `min_lifetime`, so made-up key ids cannot make every sign-in fetch.
    """

    def __init__(
        self,
        url: str,
        http: aiohttp.ClientSession,
        *,
        grace: float = CERTS_GRACE,
        min_lifetime: float = MIN_CERTS_LIFETIME,
        retry_every: float = RETRY_EVERY,
        timeout: float = CERTS_TIMEOUT,
    ) -> None:
        self.url = url
        self.grace = grace
        self.min_lifetime = min_lifetime
        self.retry_every = retry_every
        self._timeout = aiohttp.ClientTimeout(total=timeout, connect=min(3.0, timeout))
        self._http = http
        self._certs: dict[str, str] = {}
        self._fresh_until = -math.inf  # time.monotonic()
        self._attempted_at = -math.inf  # the last fetch's start, whatever its outcome
        self._failed = False  # whether that fetch failed
        self._fetching: asyncio.Task[None] | None = None
        self._fetched_at: float | None = None  # when the certs in use were fetched
        self.fetches: Counter[str] = Counter()  # by result, "ok" or "failed" (for metrics)

    def age(self) -> float | None:
        """Seconds since the certs in use were fetched; None before the first fetch."""
        return None if self._fetched_at is None else time.monotonic() - self._fetched_at

    async def get(self, kid: str) -> dict[str, str]:
        """The certs to verify a token signed with `kid` against."""
        now = time.monotonic()
        if kid in self._certs:
            if now < self._fresh_until:
                return self._certs
            if now < self._fresh_until + self.grace:
                self._refresh_soon()  # this sign-in needs no new key: it does not wait
                return self._certs
        elif self._certs and now < self._attempted_at + self.min_lifetime:
            return self._certs  # asked Google just now: an unknown key is the token's fault
        task = self._refresh_soon()
        try:
            if task is None:  # the last fetch failed just now: share its failure
                raise CertsUnavailable("a fetch failed less than retry_every ago")
            # Shielded: a sign-in whose client left does not cancel everyone's fetch.
            await asyncio.shield(task)
        except CertsUnavailable as error:
            raise ServiceUnavailable(
                "certs_unavailable", "Google's signing keys could not be fetched; try again."
            ) from error
        return self._certs

    def _refresh_soon(self) -> asyncio.Task[None] | None:
        """The fetch in flight, or a new one; None if the last one failed under retry_every ago."""
        if self._fetching is None:
            if self._failed and time.monotonic() < self._attempted_at + self.retry_every:
                return None
            self._attempted_at = time.monotonic()
            self._fetching = asyncio.create_task(self._refresh())
            # Retrieve its failure even when no one waits for it (a background refresh).
            self._fetching.add_done_callback(lambda task: task.cancelled() or task.exception())
        return self._fetching

    async def _refresh(self) -> None:
        try:
            async with self._http.get(self.url, timeout=self._timeout) as response:
                response.raise_for_status()
                body = bytearray()
                async for chunk in response.content.iter_chunked(64 * 1024):
                    body += chunk
                    if len(body) > MAX_CERTS_BYTES:
                        raise ValueError("the certs are too large")
                lifetime = _lifetime(response.headers)
            certs = json.loads(body)
            if (
                not isinstance(certs, dict)
                or not certs
                or not all(isinstance(k, str) and isinstance(v, str) for k, v in certs.items())
            ):
                raise ValueError("the certs are not a JSON object of certificates")
        except (aiohttp.ClientError, TimeoutError, ValueError, RecursionError) as error:
            self._failed = True
            self.fetches["failed"] += 1
            timed_out = isinstance(error, TimeoutError)
            reason = "no answer in time" if timed_out else type(error).__name__
            log.warning("fetching Google's certs failed: %s", reason)
            raise CertsUnavailable(reason) from None
        finally:
            self._fetching = None
        self._failed = False
        self.fetches["ok"] += 1
        self._certs = certs
        self._fetched_at = time.monotonic()
        self._fresh_until = self._fetched_at + max(lifetime, self.min_lifetime)


class CertsUnavailable(Exception):
    """Google's certs could not be fetched; the message says why, without any secret."""


def _lifetime(headers: Mapping[str, str]) -> float:
    """Cache-Control's max-age less the response's Age, at most MAX_CERTS_LIFETIME."""
    match = re.search(r"max-age=(\d{1,10})\b", headers.get("Cache-Control", ""))
    age = headers.get("Age", "0")
    aged = int(age) if age.isdigit() and len(age) <= 10 else 0
    seconds = int(match[1]) - aged if match else 0
    return float(min(max(seconds, 0), MAX_CERTS_LIFETIME))


class TokenVerifier:
    """Verifies ID tokens against Google's certs, and against extra in-memory certs (dev login)."""

    def __init__(
        self,
        *,
        audiences: tuple[str, ...],
        google_certs: GoogleCerts,
        executor: ThreadPoolExecutor,
        local_certs: Mapping[str, str] | None = None,
    ) -> None:
        self.audiences = list(audiences)
        self.google_certs = google_certs
        self.executor = executor
        self.local_certs = dict(local_certs or {})

    async def verify(self, token: str) -> VerifiedToken:
        """The token's claims once every check passed; never logs or keeps the token."""
        header = _header(token)
        if header.get("alg") != "RS256":
            raise Unauthorized("unsupported_algorithm", "The token's algorithm is not Google's.")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise Unauthorized("unknown_key", "The token was signed by an unknown key.")
        certs = self.local_certs if kid in self.local_certs else await self.google_certs.get(kid)
        loop = asyncio.get_running_loop()
        try:
            claims: dict[str, Any] = dict(
                await loop.run_in_executor(self.executor, self._decode, token, certs)
            )
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
                name=_storable_or_empty(claims.get("name")),
                picture=_storable_or_empty(claims.get("picture")),
            ),
            nonce=nonce if isinstance(nonce, str) else None,
            expires_at=float(claims["exp"]),
        )

    def _decode(self, token: str, certs: Mapping[str, str]) -> Mapping[str, Any]:
        # What google.oauth2.id_token.verify_token does with the certs it fetched.
        return jwt.decode(  # type: ignore[no-any-return]
            token, certs=certs, audience=self.audiences, clock_skew_in_seconds=CLOCK_SKEW
        )


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


def _storable_or_empty(value: Any) -> str:
    text = str(value or "")
    return text if storable(text) else ""


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
        # Google's never hold NUL or lone surrogates; Postgres text could not store them.
        if not isinstance(claims.get(name), str) or not claims[name] or not storable(claims[name]):
            raise Unauthorized("malformed_token", f"The sign-in token has no valid {name}.")
    if claims.get("email_verified") is not True:
        raise Unauthorized("email_not_verified", "Google has not verified this email address.")


async def verifier_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    # Verification is about 70 us of CPU (google-auth's PEM parsing and the RSA check), so a
    # worker's 1,000 sign-ins a second keep a fraction of one thread busy: a few threads are
    # plenty, and more could only wait for the GIL. The certs are fetched on the event loop,
    # so a hung fetch holds no thread.
    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="verify") as executor:
        async with aiohttp.ClientSession(raise_for_status=False) as http:
            app[VERIFIER] = TokenVerifier(
                audiences=config.client_ids,
                google_certs=GoogleCerts(config.google_certs_url, http),
                executor=executor,
                local_certs=app.get(LOCAL_CERTS, {}),
            )
            yield


VERIFIER = web.AppKey("verifier", TokenVerifier)
LOCAL_CERTS = web.AppKey("local_certs", dict[str, str])
