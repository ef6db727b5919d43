"""Reply policies by name (admin token): what a room, or every room of a brand, answers.

* ``GET /api/policies`` → ``{"policies": [{"name", "version", "rooms": [...]}]}`` (``rooms``: the managed
  rooms that name it);
* ``GET /api/policies/{name}`` → the current version ``{"name", "version", "saved_ms", "note", "policy"}``;
  ``?version=N`` an earlier one (404 ``POLICY_NOT_FOUND`` / ``POLICY_VERSION_NOT_FOUND``);
* ``PUT /api/policies/{name}`` with the policy document (the same fields as the policy file) → 200 with the
  new version; validated first: 422 ``POLICY_INVALID`` naming every bad field, nothing saved. ``?note=``
  keeps a word on what changed;
* ``GET /api/policies/{name}/versions`` → the kept versions, the newest first;
* ``POST /api/policies/{name}/restore`` ``{"version": N}`` → version N saved again as the newest;
* ``DELETE /api/policies/{name}`` → 200 ``{"name", "deleted": true}``; 409 ``POLICY_IN_USE`` while a room
  names it.

A saved policy is announced to every replica (``policy_changed``); each also compares versions every few
seconds, so a change takes effect everywhere within seconds, without a restart.
"""

from __future__ import annotations

import contextlib
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, ValidationError
from redis.exceptions import RedisError

from orchestrator.appkeys import AUDIENCE, REACTIONS, ROOM_CONFIGS
from orchestrator.interaction.policy import PolicyConfig
from orchestrator.scheduling.rooms import field_problems
from orchestrator.store import keys
from orchestrator.store.policies import PolicyStore
from orchestrator.web.api import read_json, require_admin
from orchestrator.web.errors import ApiError, invalid_fields
from orchestrator.web.openapi import Query, describe

routes = web.RouteTableDef()

MAX_NOTE = 200


class Restore(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int


def _store(request: web.Request) -> PolicyStore:
    return request.app[AUDIENCE].policies


def _name(request: web.Request) -> str:
    name = request.match_info["name"]
    try:
        return keys.check_policy_name(name)
    except keys.InvalidKeyPart as exc:
        raise ApiError(400, "BAD_POLICY_NAME", str(exc)) from None


def validate_policy(data: Any) -> PolicyConfig:
    """A policy document, validated (422 ``POLICY_INVALID`` naming every bad field)."""
    try:
        return PolicyConfig.model_validate(data)
    except ValidationError as exc:
        problems = [(field or "policy", message) for field, message in field_problems(exc)]
        raise invalid_fields("POLICY_INVALID", problems) from None


async def _rooms_naming(request: web.Request) -> dict[str, list[str]]:
    rooms: dict[str, list[str]] = {}
    for room in await request.app[ROOM_CONFIGS].all():
        if room.policy:
            rooms.setdefault(room.policy, []).append(room.room_id)
    return rooms


async def _announce(request: web.Request, name: str) -> None:
    with contextlib.suppress(RedisError):  # every replica compares versions every few seconds anyway
        await request.app[REACTIONS].publish("policy_changed", policy=name)


@routes.get("/api/policies")
@describe("Every reply policy, its version and the rooms naming it", tag="policies")
async def list_policies(request: web.Request) -> web.Response:
    require_admin(request)
    store = _store(request)
    names = await store.names()
    versions = await store.current_versions(names)
    rooms = await _rooms_naming(request)
    return web.json_response(
        {
            "policies": [
                {"name": n, "version": versions[n], "rooms": sorted(rooms.get(n, []))}
                for n in names
                if n in versions
            ]
        }
    )


@routes.get("/api/policies/{name}")
@describe(
    "A reply policy (its current version, or ?version=)",
    tag="policies",
    query=(Query("version", "an earlier version", "integer"),),
    errors=(400, 404),
)
async def get_policy(request: web.Request) -> web.Response:
    require_admin(request)
    name = _name(request)
    version: int | None = None
    if "version" in request.query:
        try:
            version = int(request.query["version"])
        except ValueError:
            raise ApiError(400, "BAD_VERSION", "version must be a whole number") from None
    stored = await _stored(_store(request), name, version)
    return web.json_response(stored.to_api())


async def _stored(store: PolicyStore, name: str, version: int | None) -> Any:
    try:
        stored = await store.get(name, version)
    except ValueError as exc:
        raise ApiError(409, "POLICY_CORRUPT", str(exc)) from None
    if stored is not None:
        return stored
    if version is not None and await store.get_version(name) is not None:
        raise ApiError(404, "POLICY_VERSION_NOT_FOUND", f"policy {name!r} keeps no version {version}")
    raise ApiError(404, "POLICY_NOT_FOUND", f"no reply policy named {name!r}")


@routes.put("/api/policies/{name}")
@describe(
    "Save a reply policy (a new version)",
    body=PolicyConfig,
    tag="policies",
    query=(Query("note", "what changed (kept with the version)"),),
    errors=(400,),
)
async def put_policy(request: web.Request) -> web.Response:
    require_admin(request)
    name = _name(request)
    policy = validate_policy(await read_json(request))
    note = request.query.get("note", "")[:MAX_NOTE]
    version = await _store(request).save(name, policy.model_dump(mode="json"), note=note)
    await _announce(request, name)
    return web.json_response({"name": name, "version": version})


@routes.get("/api/policies/{name}/versions")
@describe("A reply policy's versions", tag="policies", errors=(400, 404))
async def policy_versions(request: web.Request) -> web.Response:
    require_admin(request)
    name = _name(request)
    store = _store(request)
    try:
        versions = await store.versions(name)
    except ValueError as exc:
        raise ApiError(409, "POLICY_CORRUPT", str(exc)) from None
    if not versions:
        raise ApiError(404, "POLICY_NOT_FOUND", f"no reply policy named {name!r}")
    current = versions[0].version
    return web.json_response(
        {
            "name": name,
            "current": current,
            "versions": [{"version": v.version, "saved_ms": v.saved_ms, "note": v.note} for v in versions],
        }
    )


@routes.post("/api/policies/{name}/restore")
@describe("Restore an earlier version (as a new one)", body=Restore, tag="policies", errors=(404,))
async def restore_policy(request: web.Request) -> web.Response:
    require_admin(request)
    name = _name(request)
    try:
        wanted = Restore.model_validate(await read_json(request))
    except ValidationError as exc:
        problems = field_problems(exc)
        raise ApiError(400, "BAD_RESTORE", "; ".join(f"{f}: {m}" for f, m in problems)) from None
    store = _store(request)
    old = await _stored(store, name, wanted.version)
    restored = validate_policy(old.policy)  # a version this daemon can no longer read is not restored
    version = await store.save(
        name, restored.model_dump(mode="json"), note=f"restored version {wanted.version}"
    )
    await _announce(request, name)
    return web.json_response({"name": name, "version": version, "restored": wanted.version})


@routes.delete("/api/policies/{name}")
@describe("Delete a reply policy no room names", tag="policies", errors=(404, 409))
async def delete_policy(request: web.Request) -> web.Response:
    require_admin(request)
    name = _name(request)
    users = (await _rooms_naming(request)).get(name)
    if users:
        raise ApiError(
            409,
            "POLICY_IN_USE",
            f"rooms {', '.join(sorted(users))} answer by policy {name!r}: change them first",
        )
    if not await _store(request).delete(name):
        raise ApiError(404, "POLICY_NOT_FOUND", f"no reply policy named {name!r}")
    await _announce(request, name)
    return web.json_response({"name": name, "deleted": True})
