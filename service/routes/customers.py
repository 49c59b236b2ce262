"""Customers: the seed's CRUD API, for any signed-in user; `/customer/` works as `/customer`."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from service import customers
from service.db import POOL
from service.errors import NotFound
from service.payload import email_field, page_params, path_id, read_json_object, text_field

routes = web.RouteTableDef()


async def _fields(request: web.Request) -> tuple[str, str]:
    body = await read_json_object(request)
    return text_field(body, "name", max_length=100), email_field(body)


def _found(customer: customers.Customer | None) -> dict[str, Any]:
    if customer is None:
        raise NotFound("not_found", "No such customer.")
    return customer.public()


@routes.get("/customer")
@routes.get("/customer/")
async def list_customers(request: web.Request) -> web.Response:
    offset, limit = page_params(request)
    page, total = await customers.list_page(request.config_dict[POOL], offset=offset, limit=limit)
    return web.json_response({"results": [c.public() for c in page], "total": total})


@routes.post("/customer")
@routes.post("/customer/")
async def create_customer(request: web.Request) -> web.Response:
    name, email = await _fields(request)
    customer = await customers.create(request.config_dict[POOL], name, email)
    return web.json_response(customer.public(), status=201)


@routes.get("/customer/{id}")
@routes.get("/customer/{id}/")
async def get_customer(request: web.Request) -> web.Response:
    customer_id = path_id(request, "customer")
    return web.json_response(_found(await customers.get(request.config_dict[POOL], customer_id)))


@routes.put("/customer/{id}")
@routes.put("/customer/{id}/")
async def update_customer(request: web.Request) -> web.Response:
    customer_id = path_id(request, "customer")
    name, email = await _fields(request)
    customer = await customers.update(request.config_dict[POOL], customer_id, name, email)
    return web.json_response(_found(customer))


@routes.delete("/customer/{id}")
@routes.delete("/customer/{id}/")
async def delete_customer(request: web.Request) -> web.Response:
    if not await customers.delete(request.config_dict[POOL], path_id(request, "customer")):
        raise NotFound("not_found", "No such customer.")
    return web.Response(status=204)
