"""API docs: the OpenAPI document and a Swagger UI page for it, both served by the service."""

from __future__ import annotations

from aiohttp import web

from service.access import public
from service.config import CONFIG
from service.openapi import document

routes = web.RouteTableDef()

# Swagger UI sets inline styles and data: images; its page gets a policy of its own.
DOCS_POLICY = (
    "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)

# The page loads Swagger UI from the frontend build (npm's swagger-ui-dist), never a CDN.
DOCS_PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>API docs · Google session service</title>
  <link rel="stylesheet" href="/docs/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/docs/swagger-ui-bundle.js"></script>
  <script src="/docs/swagger-init.js"></script>
</body>
</html>
"""


@routes.get("/openapi.json")
@public
async def get_openapi(request: web.Request) -> web.Response:
    return web.json_response(document(request.config_dict[CONFIG]))


@routes.get("/docs")
@public
async def get_docs(request: web.Request) -> web.Response:
    return web.Response(
        text=DOCS_PAGE, content_type="text/html", headers={"Content-Security-Policy": DOCS_POLICY}
    )
