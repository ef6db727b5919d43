"""Typed keys of the aiohttp application's state, one per long-lived resource or shared value."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import redis.asyncio as aioredis
from aiohttp import web

from orchestrator.callbacks.profiles import ResolvedProfile
from orchestrator.callbacks.receiver import CallbackReceiver
from orchestrator.logging import Redactor
from orchestrator.metrics import Metrics
from orchestrator.settings import Settings
from orchestrator.store.reactions import Reactions
from orchestrator.store.rooms import RoomStore

#: A readiness check: returns (ok, detail). /readyz runs them all.
ReadinessCheck = Callable[[], Awaitable[tuple[bool, str | None]]]

SETTINGS = web.AppKey("settings", Settings)
REDACTOR = web.AppKey("redactor", Redactor)
REDIS = web.AppKey("redis", aioredis.Redis)
READINESS_CHECKS = web.AppKey("readiness_checks", dict[str, ReadinessCheck])
METRICS = web.AppKey("metrics", Metrics)
ROOM_STORE = web.AppKey("room_store", RoomStore)
REACTIONS = web.AppKey("reactions", Reactions)
CALLBACK_PROFILES = web.AppKey("callback_profiles", dict[str, ResolvedProfile])
CALLBACK_RECEIVER = web.AppKey("callback_receiver", CallbackReceiver)


@dataclass
class Lifecycle:
    """Mutable process state that handlers read: set ``draining`` once shutdown has begun."""

    draining: bool = False


LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
