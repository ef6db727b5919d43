"""The composition root: builds the aiohttp application and owns every long-lived resource.

Each resource has one ``cleanup_ctx`` generator (set up before ``yield``, torn down after) that stores it
under a typed key of :mod:`orchestrator.appkeys`. aiohttp runs the teardowns in reverse order after the
in-flight requests have finished, so Redis closes last.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from functools import partial

import structlog
from aiohttp import web
from redis.exceptions import RedisError

from orchestrator.appkeys import (
    CALLBACK_PROFILES,
    CALLBACK_RECEIVER,
    LIFECYCLE,
    METRICS,
    REACTIONS,
    READINESS_CHECKS,
    REDACTOR,
    REDIS,
    ROOM_STORE,
    SETTINGS,
    Lifecycle,
)
from orchestrator.callbacks.profiles import ResolvedProfile, UnknownProfile, resolve_profile
from orchestrator.callbacks.receiver import CallbackReceiver
from orchestrator.callbacks.watcher import RtmpStallWatcher
from orchestrator.logging import Redactor
from orchestrator.metrics import Metrics
from orchestrator.providers.metastudio.callbacks import VerifyPolicy
from orchestrator.settings import Settings, redacted_url
from orchestrator.store.batch import ScriptBatcher
from orchestrator.store.journal import Journal
from orchestrator.store.reactions import Reactions
from orchestrator.store.redis import create_redis, redis_ready
from orchestrator.store.rooms import APPLY_CALLBACKS_LUA, CALLBACK_ARGS, CALLBACK_KEYS, RoomStore
from orchestrator.tasks import being_cancelled, pause
from orchestrator.web import api, callbacks, health
from orchestrator.web.middlewares import request_middleware

log = structlog.get_logger(__name__)


def create_app(settings: Settings, redactor: Redactor | None = None) -> web.Application:
    """The daemon's HTTP application, not yet started (aiohttp starts it, then the resources)."""
    app = web.Application(
        client_max_size=settings.server.max_body_bytes,
        middlewares=[request_middleware(settings.server.max_body_bytes, settings.server.read_timeout_s)],
    )
    app[SETTINGS] = settings
    app[REDACTOR] = redactor or Redactor()
    app[LIFECYCLE] = Lifecycle()
    app[READINESS_CHECKS] = {}
    app[METRICS] = Metrics()
    app[CALLBACK_PROFILES] = callback_profiles(settings)
    app.cleanup_ctx.append(redis_ctx)
    app.cleanup_ctx.append(callbacks_ctx)
    app.on_shutdown.append(_start_draining)
    app.add_routes(health.routes)
    app.add_routes(callbacks.routes)
    app.add_routes(api.routes)
    return app


def callback_profiles(settings: Settings) -> dict[str, ResolvedProfile]:
    """Every usable profile; one without a URL is left out (and said so) rather than failing start-up."""
    profiles = {}
    for name in settings.callbacks.profiles:
        try:
            profiles[name] = resolve_profile(settings, name)
        except UnknownProfile as exc:
            log.warning("callback profile unusable", profile=name, reason=str(exc))
    return profiles


async def redis_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS].redis
    client = create_redis(settings)
    app[REDIS] = client
    app[READINESS_CHECKS]["redis"] = partial(redis_ready, client, settings.readiness_timeout_s)
    ok, detail = await redis_ready(client, settings.readiness_timeout_s)
    # Not fatal: the daemon starts without Redis, reports not-ready, and recovers when Redis returns.
    log.info(
        "redis client ready" if ok else "redis unreachable at start",
        url=redacted_url(settings.url.get_secret_value()),
        reachable=ok,
        detail=detail,
    )
    yield
    await client.aclose()
    log.info("redis client closed")


async def callbacks_ctx(app: web.Application) -> AsyncIterator[None]:
    """Room store, callback receiver (group-commit writer + local journal), reactions, RTMP watcher."""
    settings = app[SETTINGS].callbacks
    redis = app[REDIS]
    store = RoomStore(redis, events_maxlen=settings.events_maxlen)
    batcher = ScriptBatcher(
        redis,
        APPLY_CALLBACKS_LUA,
        keys_per_call=CALLBACK_KEYS,
        args_per_call=CALLBACK_ARGS,
        timeout_s=settings.write_timeout_s,
        on_batch=lambda size: _count_batch(app[METRICS], size),
    )
    journal = Journal(settings.journal_path)
    receiver = CallbackReceiver(
        store,
        batcher,
        journal,
        policy=VerifyPolicy(max_skew_s=settings.max_skew_s, strict=settings.strict),
        events_maxlen=settings.events_maxlen,
    )
    reactions = Reactions(redis)
    app[ROOM_STORE], app[CALLBACK_RECEIVER], app[REACTIONS] = store, receiver, reactions
    reactions.start()
    tasks = [
        asyncio.create_task(_replay_journal_forever(receiver, journal, app[METRICS]), name="journal-replay"),
        asyncio.create_task(
            RtmpStallWatcher(store, grace_s=settings.rtmp_grace_s).run(), name="rtmp-watcher"
        ),
    ]
    yield
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await reactions.aclose()
    await batcher.aclose()


def _count_batch(metrics: Metrics, size: int) -> None:
    metrics.redis_batches.inc()
    metrics.redis_batched_calls.inc(size)


async def _replay_journal_forever(receiver: CallbackReceiver, journal: Journal, metrics: Metrics) -> None:
    """Replays the journal whenever it has entries and Redis takes them; checks every second."""
    while True:
        pending = await asyncio.to_thread(journal.pending)
        metrics.journal_pending.set(pending)
        if pending:
            try:
                await receiver.replay_journal()
            except (RedisError, OSError, TimeoutError) as exc:
                if being_cancelled():
                    raise
                log.debug("journal replay waits for redis", pending=pending, error=str(exc))
        await pause(1.0)


async def _start_draining(app: web.Application) -> None:
    app[LIFECYCLE].draining = True
