"""``/openapi.json``: generated from the routes and models, valid OpenAPI 3.1, and complete both ways --
every registered route described, every described route registered."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from openapi_spec_validator import validate

from orchestrator.app import create_app
from orchestrator.web.openapi import build, openapi_path
from tests.scheduling.conftest import ADMIN, daemon_for


async def test_the_served_description_is_valid_and_covers_every_route(
    make_settings: Any, tmp_path: Path, sandbox: Any
) -> None:
    async with daemon_for(make_settings, tmp_path, sandbox[1]) as daemon:
        status, spec = await daemon.api("GET", "/openapi.json")
        assert status == 200
        validate(spec)  # raises on anything that is not OpenAPI 3.1
        assert spec["openapi"] == "3.1.0"
        routed = {
            (route.method.lower(), openapi_path(route.resource.canonical)[0])
            for route in daemon.app.router.routes()
            if route.method != "HEAD" and route.resource is not None
        }
        described = {(method, path) for path, item in spec["paths"].items() for method in item}
        assert routed == described
        assert len(described) > 50
        # Unauthenticated: refused like the rest of the admin API.
        async with daemon.http.get(f"{daemon.url}/openapi.json") as resp:
            assert resp.status == 401
        assert ADMIN not in str(spec)


async def test_bodies_and_parameters_come_from_the_models(
    make_settings: Any, tmp_path: Path, sandbox: Any
) -> None:
    async with daemon_for(make_settings, tmp_path, sandbox[1]) as daemon:
        _, spec = await daemon.api("GET", "/openapi.json")
    schemas = spec["components"]["schemas"]
    put_room = spec["paths"]["/api/rooms/{room_id}"]["put"]
    assert put_room["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ManagedRoom"
    }
    assert (
        "schedule" in schemas["ManagedRoom"]["properties"] and "room_id" in schemas["ManagedRoom"]["required"]
    )
    assert {p["name"] for p in put_room["parameters"]} == {"room_id"}
    assert {"401", "404", "422"} <= set(put_room["responses"])
    assert put_room["responses"]["422"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorBody"
    }
    ingest = spec["paths"]["/api/rooms/{room_id}/events"]["post"]
    alternatives = ingest["requestBody"]["content"]["application/json"]["schema"]["anyOf"]
    assert {"$ref": "#/components/schemas/BridgeEvent"} in alternatives and len(alternatives) == 3
    decide = spec["paths"]["/api/rooms/{room_id}/review/{review_id}/{decision}"]["post"]
    assert next(p for p in decide["parameters"] if p["name"] == "decision")["schema"]["enum"] == [
        "approve",
        "reject",
    ]
    events = spec["paths"]["/api/rooms/{room_id}/events"]["get"]
    assert {p["name"] for p in events["parameters"] if p["in"] == "query"} == {"since", "limit", "last"}
    assert spec["paths"]["/console/login"]["post"]["security"] == []
    assert spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"] == {
        "text/plain": {"schema": {"type": "string"}}
    }
    assert set(spec["components"]["securitySchemes"]) == {"bearer", "session"}


def test_a_route_without_a_description_is_found(make_settings: Any) -> None:
    app = create_app(make_settings(admin={"token": ADMIN}))

    async def undocumented(request: web.Request) -> web.Response:
        return web.json_response({})

    app.router.add_get("/api/secret-feature", undocumented)
    with pytest.raises(LookupError, match="GET /api/secret-feature"):
        build(app)
