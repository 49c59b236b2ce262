"""Request input: JSON bodies, query parameters and path ids, each with a clear 400 or 404."""

from __future__ import annotations

import json
import uuid
from typing import Any

from aiohttp import web
from email_validator import EmailNotValidError, validate_email

from service.config import CONFIG
from service.errors import BadRequest, NotFound
from service.ratelimit import client_key

MAX_BODY_BYTES = 64 * 1024
MAX_PAGE = 500
MAX_BIGINT = 2**63 - 1
MAX_DIGITS = len(str(MAX_BIGINT))


def _whole_number(raw: str) -> int | None:
    # Checking the length first keeps int() from ever seeing thousands of digits.
    if not (raw.isascii() and raw.isdigit()) or len(raw.lstrip("0")) > MAX_DIGITS:
        return None
    return int(raw)


def storable(text: str) -> bool:
    """Postgres text holds neither NUL nor a lone surrogate."""
    return "\x00" not in text and text.encode(errors="replace").decode() == text


async def read_json_object(request: web.Request) -> dict[str, Any]:
    # request.json() ignores Content-Type; checking it keeps cross-site text/plain posts out.
    if request.content_type != "application/json":
        raise BadRequest(
            "bad_content_type", "The body must be JSON (Content-Type: application/json)."
        )
    try:
        body = json.loads(await request.read())
    except (ValueError, RecursionError):  # bad UTF-8 or JSON, too deep, too many digits
        raise BadRequest("bad_json", "The body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise BadRequest("bad_json", "The body must be a JSON object.")
    return body


def client_of(request: web.Request) -> dict[str, Any]:
    """Who made the request, as sessions and audit events record it."""
    # Header bytes that are not UTF-8 arrive as surrogates, which Postgres text cannot hold.
    agent = request.headers.get("User-Agent", "").encode(errors="replace").decode()
    return {"ip": request.remote, "user_agent": agent.replace("\x00", "")[:512]}


def source_of(request: web.Request) -> str:
    """Whose login budget a request spends: its IPv4 address, or its IPv6 network."""
    prefix = request.config_dict[CONFIG].login_rate_limit_ipv6_prefix
    return client_key(request.remote, ipv6_prefix=prefix)


def page_params(request: web.Request) -> tuple[int, int]:
    """`offset` and `limit` (100 unless given, at most MAX_PAGE) of a paged list."""
    offset = query_int(request, "offset", 0, low=0, high=2**62)
    return offset, query_int(request, "limit", 100, low=1, high=MAX_PAGE)


def query_int(request: web.Request, name: str, default: int, *, low: int, high: int) -> int:
    raw = request.query.get(name, "")
    if raw == "":
        return default
    value = _whole_number(raw)
    if value is None or not low <= value <= high:
        raise BadRequest(
            f"invalid_{name}", f"'{name}' must be a whole number from {low} to {high}."
        )
    return value


def query_text(request: web.Request, name: str, *, max_length: int = 200) -> str | None:
    raw = request.query.get(name, "").strip()
    if len(raw) > max_length or not storable(raw):
        raise BadRequest(
            f"invalid_{name}", f"'{name}' must be text of at most {max_length} characters."
        )
    return raw or None


def path_id(request: web.Request, what: str) -> int:
    """The `{id}` of a row keyed by bigint; anything that cannot be one is simply not found."""
    value = _whole_number(request.match_info["id"])
    if value is None or not 0 < value <= MAX_BIGINT:
        raise NotFound("not_found", f"No such {what}.")
    return value


def path_uuid(request: web.Request, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(request.match_info["id"])
    except ValueError:
        raise NotFound("not_found", f"No such {what}.") from None


def text_field(body: dict[str, Any], name: str, *, max_length: int, required: bool = True) -> str:
    value = body.get(name)
    if value is None and not required:
        return ""
    if (
        not isinstance(value, str)
        or not 1 <= len(value.strip()) <= max_length
        or not storable(value)
    ):
        raise BadRequest(
            f"invalid_{name}", f"'{name}' must be text of 1 to {max_length} characters."
        )
    return value.strip()


def email_field(body: dict[str, Any], name: str = "email") -> str:
    value = body.get(name)
    if not isinstance(value, str):
        raise BadRequest(f"invalid_{name}", f"'{name}' must be an email address.")
    try:
        return normalized_email(value)
    except EmailNotValidError as error:
        raise BadRequest(
            f"invalid_{name}", f"'{name}' is not a valid email address: {error}"
        ) from None


def normalized_email(value: str) -> str:
    """email-validator's normal form of an address, or EmailNotValidError."""
    if len(value) > 254:
        raise EmailNotValidError("The address is too long.")
    # No DNS: a request must never wait on it, and the demo's example.com has no mail server.
    return validate_email(value.strip(), check_deliverability=False).normalized


def bool_field(body: dict[str, Any], name: str) -> bool | None:
    value = body.get(name)
    if value is not None and not isinstance(value, bool):
        raise BadRequest(f"invalid_{name}", f"'{name}' must be true or false.")
    return value
