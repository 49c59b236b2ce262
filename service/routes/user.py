"""The signed-in user: who they are and which session they are using."""

from __future__ import annotations

from aiohttp import web

from service.middleware import CURRENT_SESSION

routes = web.RouteTableDef()


@routes.get("/user")
async def get_user(request: web.Request) -> web.Response:
    user = request[CURRENT_SESSION].user
    return web.Response(body=user.public_json, content_type="application/json", charset="utf-8")


@routes.get("/me")
async def get_me(request: web.Request) -> web.Response:
    current = request[CURRENT_SESSION]
    return web.json_response({"user": current.user.public(), "session": current.session.public()})
