"""The OpenAPI 3.1 document of everything under /api/, written beside the routes it describes.

A test compares it with the app's router both ways, and schemathesis checks the running service
against it, so it cannot drift from the code unnoticed.
"""

from __future__ import annotations

from typing import Any

from service import audit, stats
from service.config import Config

JSON = "application/json"
Schema = dict[str, Any]


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(required: dict[str, Schema], optional: dict[str, Schema] | None = None) -> Schema:
    return {
        "type": "object",
        "properties": {**required, **(optional or {})},
        "required": list(required),
    }


def described(schema: Schema, description: str) -> Schema:
    return {**schema, "description": description}


def page_of(item: str) -> Schema:
    return obj({"results": {"type": "array", "items": ref(item)}, "total": COUNT})


STRING: Schema = {"type": "string"}
NULLABLE_STRING: Schema = {"type": ["string", "null"]}
BOOLEAN: Schema = {"type": "boolean"}
COUNT: Schema = {"type": "integer", "minimum": 0}
ID: Schema = {"type": "integer", "minimum": 1, "maximum": 2**63 - 1}
TIME: Schema = {"type": "string", "format": "date-time"}
EMAIL: Schema = {"type": "string", "format": "email", "maxLength": 254}

USER = {
    "id": ID,
    "email": STRING,
    "username": STRING,
    "name": STRING,
    "picture": STRING,
    "admin": BOOLEAN,
}
SESSION = {
    "id": {"type": "string", "format": "uuid"},
    "created_at": TIME,
    "last_seen_at": TIME,
    "expires_at": TIME,
    "ip": NULLABLE_STRING,
    "user_agent": STRING,
}

SCHEMAS: dict[str, Schema] = {
    "Error": {
        **obj({"error": STRING, "message": STRING}),
        "additionalProperties": False,
    },
    "Health": obj({"status": STRING}),
    "ClientConfig": obj(
        {"google_client_id": STRING, "gis_script_url": STRING, "dev_login": BOOLEAN}
    ),
    "Nonce": obj({"nonce": STRING}),
    "Credential": obj({"credential": {"type": "string", "minLength": 1}}),
    "User": obj(USER),
    "SignedIn": obj({"user": ref("User")}),
    "Session": obj(SESSION),
    "Me": obj({"user": ref("User"), "session": ref("Session")}),
    "MySession": obj({**SESSION, "current": BOOLEAN}),
    "MySessions": obj({"results": {"type": "array", "items": ref("MySession")}}),
    "Revoked": obj({"revoked": COUNT}),
    "Customer": obj({"id": ID, "name": STRING, "email": STRING}),
    "CustomerInput": obj(
        {"name": {"type": "string", "minLength": 1, "maxLength": 100}, "email": EMAIL}
    ),
    "Customers": page_of("Customer"),
    "AdminUser": obj(
        {
            **USER,
            "disabled": BOOLEAN,
            "linked": BOOLEAN,
            "created_at": TIME,
            "last_login_at": {"type": ["string", "null"], "format": "date-time"},
            "live_sessions": COUNT,
        }
    ),
    "AdminUsers": page_of("AdminUser"),
    "NewUser": obj(
        {"email": EMAIL},
        {"name": {"type": "string", "minLength": 1, "maxLength": 100}, "admin": BOOLEAN},
    ),
    "UserChange": obj({}, {"disabled": BOOLEAN, "admin": BOOLEAN}),
    "AdminSession": obj({**SESSION, "user_id": ID, "email": STRING}),
    "AdminSessions": page_of("AdminSession"),
    "AuthEvent": obj(
        {
            "id": ID,
            "at": TIME,
            "kind": STRING,
            "user_id": {"type": ["integer", "null"]},
            "email": NULLABLE_STRING,
            "ip": NULLABLE_STRING,
            "user_agent": STRING,
            "detail": {"type": "object"},
        }
    ),
    "AuditPage": obj(
        {
            "results": {"type": "array", "items": ref("AuthEvent")},
            "next_before": {"type": ["integer", "null"]},
        }
    ),
    "EventKind": {"type": "string", "enum": list(audit.KINDS)},
    "EventKinds": obj({"kinds": {"type": "array", "items": ref("EventKind")}}),
    "Count": described(
        obj({"value": COUNT, "exact": BOOLEAN}),
        f"Counted exactly up to {stats.EXACT_UP_TO:,} rows; past that `exact` is false and "
        "`value` is Postgres's estimate of the table's rows (pg_class.reltuples), never below "
        f"{stats.EXACT_UP_TO:,}.",
    ),
    "SignInHour": obj(
        {"start": TIME, "ok": COUNT, "failed": described(COUNT, "attempts, repeats included")}
    ),
    "FailureReason": obj({"error": described(STRING, "the refusal's code"), "count": COUNT}),
    "SignIns": obj(
        {
            "since": described(TIME, "the start of the first hour"),
            "ok": COUNT,
            "failed": COUNT,
            "hours": described(
                {
                    "type": "array",
                    "items": ref("SignInHour"),
                    "minItems": audit.WINDOW_HOURS,
                    "maxItems": audit.WINDOW_HOURS,
                },
                "whole hours, oldest first; the last is the hour under way",
            ),
            "failure_reasons": described(
                {
                    "type": "array",
                    "items": ref("FailureReason"),
                    "maxItems": audit.TOP_FAILURE_REASONS,
                },
                "the commonest, most first",
            ),
        }
    ),
    "SessionCacheStatus": described(
        obj(
            {
                "worker": described(ID, "the process id of the worker that answered"),
                "enabled": described(BOOLEAN, "SESSION_CACHE"),
                "coherent": described(
                    BOOLEAN,
                    "answers from memory are allowed: on, and following the change log (false "
                    "after a failed pass, when every request asks Postgres)",
                ),
                "last_pass_age": described(
                    {"type": ["number", "null"], "minimum": 0},
                    "seconds since this worker's newest read of the change log started",
                ),
                "fresh_for": described(
                    {"type": "number", "minimum": 0},
                    "an answer from memory waits for a read started at most this long before",
                ),
                "sessions": described(COUNT, "sessions held in memory"),
                "users": described(COUNT, "users whose sessions are held"),
            }
        ),
        "Each worker has its own cache: this is the one that answered.",
    ),
    "Status": obj(
        {
            "live_sessions": ref("Count"),
            "users": ref("Count"),
            "sign_ins": ref("SignIns"),
            "session_cache": ref("SessionCacheStatus"),
        }
    ),
}

ERRORS = {
    "400": "Bad input: the body, a field or a query parameter.",
    "401": "Not signed in, or the session has ended.",
    "403": "Cross-site request (csrf), disabled user, or not an administrator.",
    "404": "No such thing.",
    "409": "In conflict with the current state.",
    "413": "The body is over 64 KiB.",
    "429": "Too many sign-in attempts; see Retry-After.",
    "503": "The database or Google's certs are unavailable; try again.",
}


def response(schema: str | None, description: str) -> Schema:
    if schema is None:
        return {"description": description}
    return {"description": description, "content": {JSON: {"schema": ref(schema)}}}


def operation(
    summary: str,
    ok: tuple[str, str | None],
    *,
    errors: str = "",
    body: str | None = None,
    params: tuple[Schema, ...] = (),
    public: bool = False,
    tag: str,
) -> Schema:
    """One operation; `errors` lists its own statuses beyond those every operation shares."""
    status, schema = ok
    shared = {"503"} | ({"400", "413"} if body else set()) | (set() if public else {"401", "403"})
    statuses = sorted(shared | set(errors.split()))
    spec: Schema = {
        "summary": summary,
        "tags": [tag],
        "responses": {
            status: response(schema, "OK"),
            **{s: {"$ref": f"#/components/responses/{s}"} for s in statuses},
        },
    }
    if body:
        spec["requestBody"] = {"required": True, "content": {JSON: {"schema": ref(body)}}}
    if params:
        spec["parameters"] = list(params)
    if public:
        spec["security"] = []
    return spec


def query(name: str, schema: Schema, description: str) -> Schema:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


def path_param(schema: Schema) -> Schema:
    return {"name": "id", "in": "path", "required": True, "schema": schema}


ROW_ID = path_param(ID)
SESSION_ID = path_param({"type": "string", "format": "uuid"})
OFFSET = query("offset", {"type": "integer", "minimum": 0}, "rows to skip")
LIMIT = query("limit", {"type": "integer", "minimum": 1, "maximum": 500}, "rows per page")
USER_FILTER = query("user_id", ID, "only this user's")


PATHS: dict[str, dict[str, Schema]] = {
    "/api/config": {
        "get": operation(
            "What the frontend needs to show Google's button",
            ("200", "ClientConfig"),
            public=True,
            tag="sign-in",
        ),
    },
    "/api/login/nonce": {
        "post": operation(
            "Start a sign-in: a nonce for Google, its secret in an HttpOnly cookie",
            ("200", "Nonce"),
            public=True,
            errors="403",
            tag="sign-in",
        ),
    },
    "/api/login": {
        "post": operation(
            "Sign in with Google's CredentialResponse; sets the session cookie",
            ("200", "SignedIn"),
            body="Credential",
            public=True,
            errors="401 403 409 429",
            tag="sign-in",
        ),
    },
    "/api/logout": {
        "post": operation(
            "End this session and clear its cookie (also without one)",
            ("204", None),
            public=True,
            errors="403",
            tag="sign-in",
        ),
    },
    "/api/user": {"get": operation("The signed-in user", ("200", "User"), tag="account")},
    "/api/me": {
        "get": operation("The signed-in user and this session", ("200", "Me"), tag="account"),
    },
    "/api/sessions": {
        "get": operation(
            "Where you're signed in: your live sessions, newest first",
            ("200", "MySessions"),
            tag="account",
        ),
    },
    "/api/sessions/{id}": {
        "delete": operation(
            "Sign out one of your sessions",
            ("204", None),
            params=(SESSION_ID,),
            errors="404",
            tag="account",
        ),
    },
    "/api/sessions/revoke-others": {
        "post": operation(
            "Sign out everywhere else",
            ("200", "Revoked"),
            tag="account",
        ),
    },
    "/api/customer": {
        "get": operation(
            "A page of customers",
            ("200", "Customers"),
            params=(OFFSET, LIMIT),
            errors="400",
            tag="customers",
        ),
        "post": operation(
            "Add a customer",
            ("201", "Customer"),
            body="CustomerInput",
            tag="customers",
        ),
    },
    "/api/customer/{id}": {
        "get": operation(
            "One customer",
            ("200", "Customer"),
            params=(ROW_ID,),
            errors="404",
            tag="customers",
        ),
        "put": operation(
            "Replace a customer's name and email",
            ("200", "Customer"),
            params=(ROW_ID,),
            body="CustomerInput",
            errors="404",
            tag="customers",
        ),
        "delete": operation(
            "Delete a customer",
            ("204", None),
            params=(ROW_ID,),
            errors="404",
            tag="customers",
        ),
    },
    "/api/admin/users": {
        "get": operation(
            "Users with their live session count",
            ("200", "AdminUsers"),
            params=(
                query("query", {"type": "string", "maxLength": 200}, "part of an email or name"),
                OFFSET,
                LIMIT,
            ),
            errors="400",
            tag="admin",
        ),
        "post": operation(
            "Pre-provision a user, who can then sign in with that Google account",
            ("201", "AdminUser"),
            body="NewUser",
            errors="409",
            tag="admin",
        ),
    },
    "/api/admin/users/{id}": {
        "patch": operation(
            "Disable (revoking every session) or enable, promote or demote a user",
            ("200", "AdminUser"),
            params=(ROW_ID,),
            body="UserChange",
            errors="404 409",
            tag="admin",
        ),
        "delete": operation(
            "Delete a user and their sessions",
            ("204", None),
            params=(ROW_ID,),
            errors="404 409",
            tag="admin",
        ),
    },
    "/api/admin/users/{id}/revoke-sessions": {
        "post": operation(
            "Sign a user out everywhere",
            ("200", "Revoked"),
            params=(ROW_ID,),
            errors="404",
            tag="admin",
        ),
    },
    "/api/admin/sessions": {
        "get": operation(
            "Live sessions, newest first",
            ("200", "AdminSessions"),
            params=(USER_FILTER, OFFSET, LIMIT),
            errors="400",
            tag="admin",
        ),
    },
    "/api/admin/sessions/{id}": {
        "delete": operation(
            "Revoke any session",
            ("204", None),
            params=(SESSION_ID,),
            errors="404",
            tag="admin",
        ),
    },
    "/api/admin/status": {
        "get": operation(
            "Live sessions and users, the last 24 hours' sign-ins, and this worker's session cache",
            ("200", "Status"),
            tag="admin",
        ),
    },
    "/api/admin/audit/kinds": {
        "get": operation(
            "Every kind of auth event the service records",
            ("200", "EventKinds"),
            tag="admin",
        ),
    },
    "/api/admin/audit": {
        "get": operation(
            "Auth events, newest first; pass next_before as before for the next page",
            ("200", "AuditPage"),
            params=(
                USER_FILTER,
                query(
                    "user_email",
                    {"type": "string", "maxLength": 254},
                    "only this person's (any case): the events of the user who has this email, "
                    "the failed sign-ins that tried it, and admins' creating or deleting it",
                ),
                query(
                    "kind",
                    {"$ref": "#/components/schemas/EventKind"},
                    "one kind, e.g. login_failed (see /api/admin/audit/kinds)",
                ),
                query("before", ID, "next_before of the previous page"),
                LIMIT,
            ),
            errors="400",
            tag="admin",
        ),
    },
    "/api/openapi.json": {
        "get": {
            "summary": "This document",
            "tags": ["docs"],
            "security": [],
            "responses": {"200": {"description": "OpenAPI 3.1", "content": {JSON: {}}}},
        },
    },
    "/api/docs": {
        "get": {
            "summary": "Swagger UI for this document",
            "tags": ["docs"],
            "security": [],
            "responses": {"200": {"description": "HTML", "content": {"text/html": {}}}},
        },
    },
}

DEV_LOGIN_PATHS: dict[str, dict[str, Schema]] = {
    "/api/dev-login/certs": {
        "get": operation(
            "The dev login's signing certs, in Google's format",
            ("200", None),
            public=True,
            tag="dev login",
        ),
    },
    "/api/dev-login/client.js": {
        "get": {
            "summary": "A stand-in for Google's client script",
            "tags": ["dev login"],
            "security": [],
            "responses": {"200": {"description": "JavaScript", "content": {"text/javascript": {}}}},
        },
    },
    "/api/dev-login/token": {
        "post": operation(
            "A signed ID token for any email address (dev only)",
            ("200", "Credential"),
            body="DevToken",
            public=True,
            errors="403",
            tag="dev login",
        ),
    },
}


def document(config: Config) -> dict[str, Any]:
    paths = {**PATHS, **(DEV_LOGIN_PATHS if config.dev_login else {})}
    schemas = dict(SCHEMAS)
    if config.dev_login:
        schemas["DevToken"] = obj({"email": EMAIL}, {"nonce": NULLABLE_STRING})
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Google session service",
            "version": "1",
            "description": (
                "Sign in with Google, kept as a server-side session. Unsafe requests need an "
                "Origin header of this service (CSRF); errors are {error, message}."
            ),
        },
        "paths": paths,
        "security": [{"session": []}],
        "components": {
            "schemas": schemas,
            "responses": {status: response("Error", text) for status, text in ERRORS.items()},
            "securitySchemes": {
                "session": {"type": "apiKey", "in": "cookie", "name": config.session_cookie_name}
            },
        },
    }
