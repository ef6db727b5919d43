"""Typed keys of the aiohttp application's state, one per long-lived resource or shared value."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp
import redis.asyncio as aioredis
from aiohttp import web

from orchestrator.callbacks.receiver import CallbackReceiver
from orchestrator.interaction.audience import AudienceService
from orchestrator.interaction.policy import PolicyConfig
from orchestrator.logging import Redactor
from orchestrator.metrics import Metrics
from orchestrator.providers.registry import Providers
from orchestrator.scheduling.alerts import Alerter
from orchestrator.scheduling.reconciler import Reconciler
from orchestrator.scheduling.rooms import RoomConfigs
from orchestrator.scheduling.scheduler import BoundaryScheduler
from orchestrator.settings import Settings
from orchestrator.store.console import ConsoleStore
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
CALLBACK_RECEIVER = web.AppKey("callback_receiver", CallbackReceiver)
HTTP = web.AppKey("http", aiohttp.ClientSession)
ROOM_CONFIGS = web.AppKey("room_configs", RoomConfigs)
RECONCILER = web.AppKey("reconciler", Reconciler)
SCHEDULER = web.AppKey("scheduler", BoundaryScheduler)
AUDIENCE = web.AppKey("audience", AudienceService)
ALERTER = web.AppKey("alerter", Alerter)
#: The reply policy loaded at start (the audience service holds the one in force: a reload swaps it).
POLICY = web.AppKey("reply_policy", PolicyConfig)
#: The process's providers, each built once (a provider's client is shared by every caller, so its
#: concurrency limit holds for the process).
PROVIDERS = web.AppKey("providers", Providers)
CONSOLE = web.AppKey("console", ConsoleStore)


@dataclass
class Lifecycle:
    """Mutable process state that handlers read: set ``draining`` once shutdown has begun."""

    draining: bool = False


LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
