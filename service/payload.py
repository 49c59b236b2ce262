"""Request bodies: JSON objects only, with a clear 400 for anything else."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from service.errors import BadRequest

MAX_BODY_BYTES = 64 * 1024


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
    return {"ip": request.remote, "user_agent": request.headers.get("User-Agent", "")[:512]}
