"""Managed rooms: what the daemon runs, declared in a YAML file or through the admin API, kept in Redis.

A room names its ``provider`` (the vendor that renders it: ``metastudio``), and its ``room_id`` is the
vendor's room id (callbacks name rooms by it). Its ``template`` is the provider's (validated as that
provider's room template model, :func:`orchestrator.providers.registry.template_model`): everything a
start needs but the callback target, which comes from the room's callback profile. Secrets -- stream keys,
the interaction callback URL, alert webhook URLs -- are ``SecretStr``: stored in Redis, never shown by the
API or logged.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from orchestrator.providers import registry
from orchestrator.providers.base import RoomTemplate
from orchestrator.scheduling.schedules import Schedule
from orchestrator.settings import AlertTarget, Settings
from orchestrator.store import keys
from orchestrator.store.redis import mget
from orchestrator.store.rooms import RoomStore


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RestartPolicy(_Model):
    backoff_initial_s: float = Field(10.0, gt=0, description="First restart delay; doubles each time")
    backoff_max_s: float = Field(300.0, gt=0)
    max_restarts_per_hour: int = Field(6, ge=1, description="Above this the circuit opens: alert, no restart")
    rtmp_grace_s: float = Field(30.0, gt=0, description="RTMP down this long → REFRESH_OUTPUT_URL")
    refresh_wait_s: float = Field(20.0, gt=0, description="Still down this long after the refresh → restart")


class ManagedRoom(_Model):
    room_id: str = Field(..., description="The vendor's room id")
    name: str | None = None
    provider: str = Field(registry.DEFAULT_PROVIDER, description="The vendor: " + ", ".join(registry.names()))
    callback_profile: str = "default"
    template: SerializeAsAny[RoomTemplate]
    schedule: Schedule
    restart: RestartPolicy = RestartPolicy()
    alerts: list[AlertTarget] = Field(default_factory=list)
    paused: bool = False
    policy: str | None = Field(
        None,
        description="The reply policy the room answers by (its name in the policy store; rooms of one brand "
        "share one); none: the default policy (interaction.policy_file).",
    )

    @field_validator("room_id")
    @classmethod
    def _room_id(cls, value: str) -> str:
        return keys.check_room_id(value)

    @field_validator("policy")
    @classmethod
    def _policy(cls, value: str | None) -> str | None:
        return None if value is None else keys.check_policy_name(value)

    @field_validator("provider")
    @classmethod
    def _provider(cls, value: str) -> str:
        if value not in registry.KNOWN:
            raise ValueError(f"no provider named {value!r}; known: {', '.join(registry.names())}")
        return value

    @field_validator("template", mode="plain")
    @classmethod
    def _template(cls, value: Any, info: ValidationInfo) -> RoomTemplate:
        """Validated as the room's provider's template model."""
        provider = info.data.get("provider")
        if provider is None:  # the provider itself was refused: that error says it
            raise ValueError("cannot be read without a valid provider")
        return registry.template_model(provider).model_validate(value)

    def secrets(self) -> set[str]:
        found = self.template.secrets()
        found |= {a.url.get_secret_value() for a in self.alerts}
        found |= {a.secret.get_secret_value() for a in self.alerts if a.secret}
        return {s for s in found if s}

    def stored(self) -> str:
        """JSON with the secrets in clear: for Redis only."""
        data = self.model_dump(mode="json")
        data["template"] = self.template.stored()
        data["alerts"] = [
            {
                **a.model_dump(mode="json"),
                "url": a.url.get_secret_value(),
                "secret": a.secret.get_secret_value() if a.secret else None,
            }
            for a in self.alerts
        ]
        return json.dumps(data, ensure_ascii=False)

    def public(self) -> dict[str, Any]:
        """As shown by the API: secrets masked."""
        return self.model_dump(mode="json")


class RoomsFileError(ValueError):
    """A rooms file that cannot be used; ``problems`` are ``(location, message)`` pairs."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{loc}: {msg}" for loc, msg in problems))


def field_problems(exc: ValidationError, prefix: str = "") -> list[tuple[str, str]]:
    return [
        (prefix + ".".join(str(p) for p in error["loc"]), error["msg"])
        for error in exc.errors(include_url=False, include_input=False)
    ]


def reference_problems(room: ManagedRoom, settings: Settings) -> list[tuple[str, str]]:
    """What ``room`` names that this configuration does not have, as ``(field, message)`` pairs (none: all
    there) -- its provider says what (MetaStudio: the callback profile). Checked wherever a room is given --
    the rooms file at start, ``check-config``, the admin API -- so a typo is refused where it is written,
    not found by the reconciler at the first start."""
    return registry.reference_problems(room.provider, room, settings)


def load_rooms_file(path: Path, settings: Settings | None = None) -> list[ManagedRoom]:
    """Rooms from a YAML file: ``rooms: [ {room_id, template, schedule, ...}, ... ]``; with ``settings``,
    what each room references (its callback profile) must exist there too.

    Raises RoomsFileError naming every invalid field (``rooms[2].schedule.windows.0.start: ...``).
    """
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise RoomsFileError([(str(path), f"cannot read: {exc}")]) from exc
    items = data.get("rooms") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise RoomsFileError([(str(path), "expected a mapping with a 'rooms' list")])
    rooms, problems = [], []
    for index, item in enumerate(items):
        try:
            rooms.append(ManagedRoom.model_validate(item))
        except ValidationError as exc:
            problems.extend(field_problems(exc, f"rooms[{index}]."))
    if settings is not None:
        for index, room in enumerate(rooms):
            problems.extend((f"rooms[{index}].{f}", m) for f, m in reference_problems(room, settings))
    seen: set[str] = set()
    for room in rooms:
        if room.room_id in seen:
            problems.append((f"rooms[{room.room_id}]", "room_id appears twice"))
        seen.add(room.room_id)
    if problems:
        raise RoomsFileError(problems)
    return rooms


class RoomConfigs:
    """Managed-room definitions in Redis (``orch:{room}:config``); every change is announced so each
    replica's scheduler rebuilds."""

    def __init__(self, redis: aioredis.Redis, state: RoomStore) -> None:
        self._redis = redis
        self._state = state
        self._parsed: dict[bytes, ManagedRoom] = {}

    async def put(self, room: ManagedRoom) -> None:
        """Store a definition given through the API (it is the room's definition until the rooms file's
        own definition of the room changes)."""
        await self._write(room, {"source": "api"})

    async def apply_from_file(self, room: ManagedRoom) -> bool:
        """Store the rooms file's definition of ``room`` -- unless the room was changed through the API
        since the file's definition was last applied, and that definition is unchanged: then the API's
        stays (a restart must not silently revert it). True when the file's definition was applied."""
        digest = hashlib.sha256(room.stored().encode()).hexdigest()
        meta = await self._redis.hgetall(keys.room_config_source(room.room_id))
        exists = bool(await self._redis.exists(keys.room_config(room.room_id)))
        if exists and meta.get(b"source") == b"api" and meta.get(b"file_sha") == digest.encode():
            return False
        await self._write(room, {"source": "file", "file_sha": digest})
        return True

    async def _write(self, room: ManagedRoom, source: dict[Any, Any]) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(keys.room_config(room.room_id), room.stored())
            pipe.hset(keys.room_config_source(room.room_id), mapping=source)
            await pipe.execute()
        await self._state.register_room(
            room.room_id, room.provider, policy=room.policy, timezone=room.schedule.timezone
        )
        await self._announce(room.room_id)

    async def get(self, room_id: str) -> ManagedRoom | None:
        return self._parse(await self._redis.get(keys.room_config(room_id)))

    async def all(self) -> list[ManagedRoom]:
        """Every managed room, read in one round trip (MGET)."""
        room_ids = await self._state.rooms()
        if not room_ids:
            return []
        raws = await mget(self._redis, [keys.room_config(r) for r in room_ids])
        return [room for room in map(self._parse, raws) if room is not None]

    def _parse(self, raw: bytes | str | None) -> ManagedRoom | None:
        # Definitions rarely change and every pass reads them all: validate each distinct one once.
        if not raw:
            return None
        key = raw if isinstance(raw, bytes) else raw.encode()
        room = self._parsed.get(key)
        if room is None:
            if len(self._parsed) > 50_000:
                self._parsed.clear()
            room = self._parsed[key] = ManagedRoom.model_validate_json(key)
        return room

    async def delete(self, room_id: str) -> bool:
        existed = bool(await self._redis.delete(keys.room_config(room_id), keys.room_config_source(room_id)))
        await self._state.unregister_room(room_id)
        await self._announce(room_id)
        return existed

    async def set_paused(self, room_id: str, paused: bool) -> ManagedRoom | None:
        room = await self.get(room_id)
        if room is None:
            return None
        updated = room.model_copy(update={"paused": paused})
        await self.put(updated)
        return updated

    async def _announce(self, room_id: str) -> None:
        await self._redis.publish(
            keys.reactions_channel(), json.dumps({"kind": "rooms_changed", "room_id": room_id})
        )
