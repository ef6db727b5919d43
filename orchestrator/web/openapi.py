"""The API's description, OpenAPI 3.1, generated at start from the routes the application registered and
the pydantic models their handlers read (``GET /openapi.json``).

A handler says what it is with :func:`describe` -- a summary, the model of its body, its query
parameters, the errors it answers -- and this module walks ``app.router``: paths and path parameters
come from the routes themselves, schemas from the models (``model_json_schema``), so neither can drift
from the code. A route without a description is a bug the tests find (every route described, every
description routed).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import orjson
import structlog
from aiohttp import web
from pydantic import BaseModel, Field, TypeAdapter

from orchestrator import __version__

H = TypeVar("H", bound=Callable[..., Any])

log = structlog.get_logger(__name__)

Auth = Literal["admin", "ingest", "vendor", "session", "none"]
#: What a failure of each status means on this API, for the responses every operation lists.
ERROR_MEANINGS = {
    400: "Malformed request (``BAD_JSON``, ``BAD_QUERY``, ``BAD_ROOM_ID``...)",
    401: "No valid credentials",
    403: "Credentials that may not do this (a bridge outside its rooms, a console change without its "
    "CSRF token)",
    404: "Not found (``ROOM_NOT_FOUND``...)",
    408: "The body was not received in time",
    409: "Conflicts with the current state",
    410: "Gone (expired)",
    413: "Body too large",
    422: "A field is invalid: ``errors`` names each",
    429: "Too many requests: wait ``Retry-After`` seconds",
    502: "The vendor refused",
    503: "Redis is unavailable, or the daemon is busy: retry",
}


class FieldProblem(BaseModel):
    field: str
    message: str


class ErrorBody(BaseModel):
    """Every error this API answers, whatever its status."""

    error_code: str = Field(..., description="Stable, machine-readable: UNAUTHORIZED, ROOM_NOT_FOUND...")
    error_msg: str = Field(..., description="For people; never quotes a secret.")
    request_id: str | None = Field(None, description="Echoes X-Request-Id (or the one made for the request).")
    errors: list[FieldProblem] | None = Field(None, description="One entry per invalid field (422).")


@dataclass(frozen=True)
class Query:
    name: str
    description: str
    type: Literal["string", "integer", "boolean"] = "string"
    required: bool = False


@dataclass(frozen=True)
class Operation:
    summary: str
    description: str = ""
    body: Any = None
    response: Any = None
    status: int = 200
    query: tuple[Query, ...] = ()
    errors: tuple[int, ...] = ()
    auth: Auth = "admin"
    tag: str = "rooms"
    content_type: str = "application/json"


_OPERATION = "__openapi__"


def describe(
    summary: str,
    *,
    description: str = "",
    body: Any = None,
    response: Any = None,
    status: int = 200,
    query: tuple[Query, ...] = (),
    errors: tuple[int, ...] = (),
    auth: Auth = "admin",
    tag: str = "rooms",
    content_type: str = "application/json",
) -> Callable[[H], H]:
    """Describe a handler for :func:`build` (the decorator goes below the route's)."""
    operation = Operation(
        summary, description, body, response, status, query, errors, auth, tag, content_type
    )

    def mark(handler: H) -> H:
        setattr(handler, _OPERATION, operation)
        return handler

    return mark


def operation_of(handler: Any) -> Operation | None:
    return getattr(handler, _OPERATION, None)


_PARAM = re.compile(r"\{([^}:]+)(?::([^}]+))?\}")
_SECURITY: dict[str, list[dict[str, list[str]]]] = {
    "admin": [{"bearer": []}, {"session": []}],
    "ingest": [{"bearer": []}, {"session": []}],
    "session": [{"session": []}],
    "vendor": [],
    "none": [],
}


def openapi_path(
    canonical: str, alternatives: dict[str, list[str]] | None = None
) -> tuple[str, list[dict[str, Any]]]:
    """An aiohttp route path as OpenAPI writes it, and its path parameters (one matching a fixed set of
    words, ``{decision:approve|reject}``, is an enum of them)."""
    params = []
    for match in _PARAM.finditer(canonical):
        name = match.group(1)
        schema: dict[str, Any] = {"type": "string"}
        if alternatives and name in alternatives:
            schema["enum"] = alternatives[name]
        params.append({"name": name, "in": "path", "required": True, "schema": schema})
    return _PARAM.sub(lambda m: "{" + m.group(1) + "}", canonical), params


_WORDS = re.compile(r"\(\?P<(\w+)>([A-Za-z0-9_]+(?:\|[A-Za-z0-9_]+)+)\)")


def _alternatives(resource: Any) -> dict[str, list[str]]:
    """The path parameters of a route's resource that match one of a few words."""
    pattern = resource.get_info().get("pattern") if resource is not None else None
    if pattern is None:
        return {}
    return {m.group(1): m.group(2).split("|") for m in _WORDS.finditer(pattern.pattern)}


class _Schemas:
    """Component schemas gathered from the models, each once, referenced by name."""

    def __init__(self) -> None:
        self.components: dict[str, Any] = {}

    def ref(self, model: Any) -> dict[str, Any]:
        if isinstance(model, type) and issubclass(model, BaseModel):
            schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            name = model.__name__
        else:
            schema = TypeAdapter(model).json_schema(ref_template="#/components/schemas/{model}")
            name = ""
        for def_name, definition in schema.pop("$defs", {}).items():
            self.components.setdefault(def_name, definition)
        if not name:
            return dict(schema)
        self.components.setdefault(name, schema)
        return {"$ref": f"#/components/schemas/{name}"}


def build(
    app: web.Application, *, title: str = "Livestream orchestrator API", strict: bool = True
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``app``'s routes.

    Raises LookupError naming each route that is not described (``strict``); otherwise they are left out
    and named under ``x-undescribed``."""
    schemas = _Schemas()
    error_ref = schemas.ref(ErrorBody)
    paths: dict[str, dict[str, Any]] = {}
    missing = []
    operation_ids: set[str] = set()
    for route in app.router.routes():
        if route.method in ("HEAD", "*"):
            continue
        canonical = route.resource.canonical if route.resource is not None else ""
        operation = operation_of(route.handler)
        if operation is None:
            missing.append(f"{route.method} {canonical}")
            continue
        path, params = openapi_path(canonical, _alternatives(route.resource))
        params += [
            {
                "name": q.name,
                "in": "query",
                "required": q.required,
                "description": q.description,
                "schema": {"type": q.type},
            }
            for q in operation.query
        ]
        operation_id = f"{route.method.lower()}_{_slug(path)}"
        while operation_id in operation_ids:  # /console and /console/ slug alike
            operation_id += "_"
        operation_ids.add(operation_id)
        doc: dict[str, Any] = {
            "operationId": operation_id,
            "summary": operation.summary,
            "tags": [operation.tag],
            "security": _SECURITY[operation.auth],
            "responses": {
                str(operation.status): _response(operation, schemas),
                **{
                    str(status): {
                        "description": ERROR_MEANINGS.get(status, "Error"),
                        "content": {"application/json": {"schema": error_ref}},
                    }
                    for status in sorted({*operation.errors, *_implied_errors(operation, params)})
                },
            },
        }
        description = operation.description or _doc(route.handler)
        if description:
            doc["description"] = description
        if params:
            doc["parameters"] = params
        if operation.body is not None:
            doc["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": schemas.ref(operation.body)}},
            }
        paths.setdefault(path, {})[route.method.lower()] = doc
    if missing and strict:
        raise LookupError("routes without a description (openapi.describe): " + ", ".join(sorted(missing)))
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": __version__,
            "description": "The daemon's admin, console and ingest API, and the routes vendors call. Every "
            "error is JSON (ErrorBody).",
        },
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": dict(sorted(schemas.components.items())),
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "admin.token, an operator's token (admin.operators), or -- for POST "
                    "/api/rooms/{room_id}/events only -- a bridge's (admin.bridges).",
                },
                "session": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": "orch_session",
                    "description": "A console login (POST /console/login); a change also needs the "
                    "session's X-CSRF-Token header.",
                },
            },
        },
    }
    if missing:
        document["x-undescribed"] = sorted(missing)
    return document


def _response(operation: Operation, schemas: _Schemas) -> dict[str, Any]:
    if operation.content_type != "application/json":
        return {
            "description": operation.summary,
            "content": {operation.content_type: {"schema": {"type": "string"}}},
        }
    schema = schemas.ref(operation.response) if operation.response is not None else {"type": "object"}
    return {"description": operation.summary, "content": {"application/json": {"schema": schema}}}


def _implied_errors(operation: Operation, params: list[dict[str, Any]]) -> set[int]:
    implied = set()
    if operation.auth in ("admin", "ingest", "session"):
        implied |= {401, 503}
    if operation.auth == "admin" and operation.tag != "console":
        implied.add(403)  # a console session's change without its CSRF token
    if operation.body is not None:
        implied |= {400, 413, 422}
    if any(p["name"] == "room_id" for p in params):
        implied |= {400, 404}
    if operation.query:
        implied.add(400)
    return implied


def _slug(path: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", path).strip("_") or "root"


def _doc(handler: Any) -> str:
    text = (handler.__doc__ or "").strip()
    return re.sub(r"\s*\n\s*", " ", text)


SPEC = web.AppKey("openapi_spec", bytes)


async def _build_on_startup(app: web.Application) -> None:
    document = build(app, strict=False)
    if document.get("x-undescribed"):
        log.warning("routes without an API description", routes=document["x-undescribed"])
    app[SPEC] = orjson.dumps(document)


def setup(app: web.Application) -> None:
    """Build the description when ``app`` starts (``GET /openapi.json`` serves it: :mod:`.api`); a route
    added without a description is logged then, and fails tests/console/test_openapi.py."""
    app.on_startup.append(_build_on_startup)
