"""The Svelte app: its build served at /, with cache headers, and index.html for client routes.

Hashed assets (`/_app/immutable/`) are cached for a year; everything else revalidates. Any GET
outside /api/ that names no file gets index.html, so the app's own router takes over.
"""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

from aiohttp import web

from service import schema
from service.errors import NotFound

BUILD = schema.ROOT / "frontend" / "build"
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"

# What Google's sign-in client needs, as its "Content Security Policy" guide lists it.
GOOGLE_SCRIPT = "https://accounts.google.com/gsi/client"
GOOGLE_STYLE = "https://accounts.google.com/gsi/style"
GOOGLE_GSI = "https://accounts.google.com/gsi/"

_INLINE_SCRIPT = re.compile(rb"<script(?![^>]*\bsrc=)[^>]*>(.*?)</script>", re.DOTALL)


def content_security_policy(index_html: bytes) -> str:
    """The app's policy: itself, Google's sign-in client, and the inline boot script of
    index.html by its hash (SvelteKit starts the app from one)."""
    hashes = [
        f"'sha256-{base64.b64encode(hashlib.sha256(script).digest()).decode()}'"
        for script in _INLINE_SCRIPT.findall(index_html)
    ]
    return "; ".join(
        [
            "default-src 'self'",
            " ".join(["script-src 'self'", *hashes, GOOGLE_SCRIPT]),
            f"style-src 'self' {GOOGLE_STYLE}",
            f"connect-src 'self' {GOOGLE_GSI}",
            f"frame-src {GOOGLE_GSI}",
            "img-src 'self' data: https://*.googleusercontent.com",
            "font-src 'self'",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )


class Frontend:
    def __init__(self, build: Path = BUILD) -> None:
        self.build = build.resolve()
        index = self.build / "index.html"
        self.index_html = index.read_bytes() if index.is_file() else None
        self.policy = content_security_policy(self.index_html or b"")

    async def serve(self, request: web.Request) -> web.StreamResponse:
        path = request.match_info["path"]
        if path == "api" or path.startswith("api/"):
            raise NotFound("not_found", "Not Found")
        file = self._file(path)
        if file is not None and file.name != "index.html":
            cache = IMMUTABLE if path.startswith("_app/immutable/") else REVALIDATE
            return web.FileResponse(file, headers={"Cache-Control": cache})
        if self.index_html is None:
            raise NotFound("frontend_not_built", "The frontend is not built; run make.")
        return web.Response(
            body=self.index_html,
            content_type="text/html",
            headers={"Cache-Control": REVALIDATE, "Content-Security-Policy": self.policy},
        )

    def _file(self, path: str) -> Path | None:
        try:
            file = (self.build / path).resolve()
            # Only files inside the build, whatever the path says.
            return file if file.is_relative_to(self.build) and file.is_file() else None
        except (OSError, ValueError):  # a name too long for the file system, say
            return None


def add_routes(app: web.Application) -> None:
    """Last in the root app: everything the routes before it did not take."""
    app.router.add_get("/{path:.*}", Frontend().serve)
