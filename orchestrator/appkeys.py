"""Typed keys of the aiohttp application's state, one per long-lived resource or shared value."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp
import redis.asyncio as aioredis
from aiohttp import web

from orchestrator.callbacks.profiles import ResolvedProfile
from orchestrator.callbacks.receiver import CallbackReceiver
from orchestrator.interaction.audience import AudienceService
from orchestrator.logging import Redactor
from orchestrator.metrics import Metrics
from orchestrator.providers.metastudio.client import MetaStudioClient
from orchestrator.scheduling.reconciler import Reconciler
from orchestrator.scheduling.rooms import RoomConfigs
from orchestrator.scheduling.scheduler import BoundaryScheduler
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
HTTP = web.AppKey("http", aiohttp.ClientSession)
ROOM_CONFIGS = web.AppKey("room_configs", RoomConfigs)
RECONCILER = web.AppKey("reconciler", Reconciler)
SCHEDULER = web.AppKey("scheduler", BoundaryScheduler)
#: The process's one MetaStudio client (raises ProviderConfigError until credentials are configured), so
#: every caller shares its per-project concurrency limit.
AUDIENCE = web.AppKey("audience", AudienceService)
METASTUDIO: web.AppKey[Callable[[], MetaStudioClient]] = web.AppKey("metastudio")


@dataclass
class Lifecycle:
    """Mutable process state that handlers read: set ``draining`` once shutdown has begun."""

    draining: bool = False


LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
