"""The composition root: builds the aiohttp application and owns every long-lived resource.

Each resource has one ``cleanup_ctx`` generator (set up before ``yield``, torn down after) that stores it
under a typed key of :mod:`orchestrator.appkeys`. aiohttp runs the teardowns in reverse order after the
in-flight requests have finished, so Redis closes last.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import socket
import time
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import aiohttp
import structlog
import yaml
from aiohttp import web
from pydantic import ValidationError
from redis.exceptions import RedisError

from orchestrator import __version__, clock
from orchestrator.appkeys import (
    ALERTER,
    AUDIENCE,
    CALLBACK_RECEIVER,
    CONSOLE,
    HTTP,
    LIFECYCLE,
    METRICS,
    POLICY,
    PROVIDERS,
    REACTIONS,
    READINESS_CHECKS,
    RECONCILER,
    REDACTOR,
    REDIS,
    ROOM_CONFIGS,
    ROOM_STORE,
    SCHEDULER,
    SETTINGS,
    Lifecycle,
)
from orchestrator.callbacks.receiver import CallbackReceiver
from orchestrator.callbacks.watcher import RtmpStallWatcher
from orchestrator.interaction.audience import AudienceService
from orchestrator.interaction.chat import ChatBackend
from orchestrator.interaction.ingest import NAMES
from orchestrator.interaction.policy import PolicyConfig
from orchestrator.logging import Redactor
from orchestrator.metrics import Metrics, RoomReading
from orchestrator.providers.metastudio import web as metastudio_web
from orchestrator.providers.registry import ProviderDeps, Providers
from orchestrator.providers.softsugar import web as softsugar_web
from orchestrator.scheduling.alerts import Alerter
from orchestrator.scheduling.reconciler import Reconciler
from orchestrator.scheduling.rooms import (
    ManagedRoom,
    RoomConfigs,
    RoomsFileError,
    field_problems,
    load_rooms_file,
)
from orchestrator.scheduling.scheduler import BoundaryScheduler
from orchestrator.scheduling.schedules import outlook
from orchestrator.settings import Settings, redacted_url
from orchestrator.store.console import ConsoleStore
from orchestrator.store.journal import Journal
from orchestrator.store.migrate import rename_legacy_keys
from orchestrator.store.reactions import Reactions
from orchestrator.store.redis import create_redis, redis_ready
from orchestrator.store.rooms import RoomStore, callback_batcher
from orchestrator.tasks import being_cancelled, cancel_and_wait, checkpoint, in_turns, pause
from orchestrator.web import admin, api, audience, console, health, ingest, openapi, policies, replies
from orchestrator.web.middlewares import BODY_BUDGET, BodyBudget, request_middleware
from orchestrator.web.public import PUBLIC_ROUTES

log = structlog.get_logger(__name__)


def create_app(settings: Settings, redactor: Redactor | None = None) -> web.Application:
    """The daemon's HTTP application, not yet started (aiohttp starts it, then the resources)."""
    budget = BodyBudget(  # shared with the public listener
        settings.server.body_bytes_in_flight,
        max_body_bytes=settings.server.max_body_bytes,
        read_timeout_s=settings.server.read_timeout_s,
    )
    metrics = Metrics()
    app = web.Application(
        client_max_size=settings.server.max_body_bytes,
        middlewares=[
            request_middleware(
                settings.server.max_body_bytes, settings.server.read_timeout_s, budget, metrics
            )
        ],
    )
    app[SETTINGS] = settings
    app[BODY_BUDGET] = budget
    app[REDACTOR] = redactor or Redactor()
    app[LIFECYCLE] = Lifecycle()
    app[READINESS_CHECKS] = {}
    app[METRICS] = metrics
    app[POLICY] = load_policy(settings.interaction.policy_file)
    app.cleanup_ctx.append(redis_ctx)
    app.cleanup_ctx.append(http_ctx)
    app.cleanup_ctx.append(callbacks_ctx)
    app.cleanup_ctx.append(scheduling_ctx)
    app.cleanup_ctx.append(audience_ctx)
    app.cleanup_ctx.append(console_ctx)
    app.cleanup_ctx.append(loop_lag_ctx)
    app.on_startup.append(_freeze_startup_heap)  # after every cleanup_ctx has started
    app.on_shutdown.append(_start_draining)
    app.on_cleanup.append(_stop_watching_gc)
    app.add_routes(health.routes)
    app.add_routes(api.routes)
    app.add_routes(admin.routes)
    app.add_routes(ingest.routes)
    app[ingest.INGEST_GATE] = ingest.IngestGate(settings.interaction.ingest_max_in_flight)
    app.add_routes(replies.routes)
    app.add_routes(policies.routes)
    app.add_routes(audience.routes)
    console.setup(app)
    openapi.setup(app)  # built at start, from every route added by then
    # The providers' own routes: what each vendor calls on the daemon (also on the public listener).
    metastudio_web.setup(app)
    softsugar_web.setup(app)
    app[PUBLIC_ROUTES] = [*metastudio_web.PUBLIC_ROUTES, *softsugar_web.PUBLIC_ROUTES]
    return app


def load_policy(path: Path | None) -> PolicyConfig:
    """The reply policy from its YAML file (raises ValueError naming the problem), or an empty one."""
    if path is None:
        return PolicyConfig()
    return PolicyConfig.model_validate(yaml.safe_load(path.read_text()) or {})


async def redis_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS].redis
    client = create_redis(settings)
    app[REDIS] = client
    app[CONSOLE] = ConsoleStore(client)
    app[READINESS_CHECKS]["redis"] = partial(redis_ready, client, settings.readiness_timeout_s)
    ok, detail = await redis_ready(client, settings.readiness_timeout_s)
    # Not fatal: the daemon starts without Redis, reports not-ready (/readyz 503), and recovers when Redis
    # returns -- every user of it retries with its own backoff. One line says so; no traceback.
    (log.info if ok else log.warning)(
        "redis client ready"
        if ok
        else "redis unreachable at start; retrying, /readyz is 503 until it answers",
        url=redacted_url(settings.url.get_secret_value()),
        reachable=ok,
        detail=detail,
    )
    if ok:
        try:
            await rename_legacy_keys(client)
        except RedisError as exc:  # the next start renames them; until then a vendor token is fetched anew
            log.warning("cannot rename keys stored under older names", error=str(exc) or type(exc).__name__)
    yield
    await client.aclose()
    log.info("redis client closed")


async def http_ctx(app: web.Application) -> AsyncIterator[None]:
    """The outgoing HTTP session (vendor API, alert webhooks): one per process, closed last but Redis; and
    the providers, which call their vendors through it."""
    # No connection cap on the shared pool: every vendor call is bounded by its provider's max_concurrency,
    # and a SoftSugar account without status callbacks holds one WebSocket per live room -- under aiohttp's
    # default cap of 100 the 101st room's socket, and then every API call, waited for a free connection
    # (benchmarks/softsugar: 1,000 rooms never all live, stat and heartbeat timing out).
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    app[HTTP] = session

    async def daemon_alert(kind: str, message: str) -> None:  # the alerter is made with the scheduler
        alerter = app.get(ALERTER)
        if alerter is not None:
            await alerter.daemon_alert(kind, message)

    app[PROVIDERS] = Providers(
        ProviderDeps(session, app[SETTINGS], app[REDIS], daemon_alert, observe=app[METRICS].vendor_call)
    )
    yield
    await session.close()


async def scheduling_ctx(app: web.Application) -> AsyncIterator[None]:
    """Room definitions, the reconciler and its scheduler; the rooms file, if any, is applied first."""
    settings = app[SETTINGS]
    redis, store = app[REDIS], app[ROOM_STORE]
    configs = RoomConfigs(redis, store)
    metrics = app[METRICS]
    alerter = Alerter(
        app[HTTP],
        redis,
        min_interval_s=settings.scheduling.alert_min_interval_s,
        events_maxlen=settings.callbacks.events_maxlen,
        daemon_targets=list(settings.alerts.targets),
        on_outcome=lambda outcome: metrics.alerts.labels(outcome).inc(),
    )
    app[ALERTER] = alerter
    providers = app[PROVIDERS]
    reconciler = Reconciler(
        redis,
        configs,
        store,
        lambda room: providers.for_room(room).jobs,
        alerter.alert,
        settings,
        resolve=alerter.resolved,
        on_action=metrics.reconciler_action,
    )
    scheduler = BoundaryScheduler(
        reconciler,
        configs,
        app[REACTIONS],
        interval_s=settings.scheduling.reconcile_interval_s,
        tolerance_s=settings.scheduling.boundary_tolerance_s,
    )
    app[ROOM_CONFIGS], app[RECONCILER], app[SCHEDULER] = configs, reconciler, scheduler
    applying: asyncio.Task[None] | None = None
    if settings.scheduling.rooms_file is not None:
        log.info(
            "rooms file: applied now and on SIGHUP; a room changed through the API since the file's "
            "definition of it was last applied keeps the API's until that definition changes",
            path=str(settings.scheduling.rooms_file),
        )
        applying = asyncio.create_task(
            _apply_rooms_file(app, configs, settings.scheduling.rooms_file), name="apply-rooms-file"
        )
        with contextlib.suppress(TimeoutError):  # applied before the first pass when Redis is there
            async with asyncio.timeout(settings.redis.readiness_timeout_s + 1):
                await asyncio.shield(applying)
    for room in await _rooms_or_none(configs):
        app[REDACTOR].add_values(room.secrets())
    if settings.scheduling.enabled:
        await scheduler.start()
    watching = asyncio.create_task(_watch_redis(app, alerter, scheduler), name="redis-alerts")
    yield
    await cancel_and_wait(watching)
    await cancel_and_wait(applying)
    await scheduler.aclose()


async def _watch_redis(
    app: web.Application,
    alerter: Alerter,
    scheduler: BoundaryScheduler,
    interval_s: float = 5.0,
    lost_after: int = 2,
) -> None:
    """Redis lost -- ``lost_after`` checks ``interval_s`` apart unanswered: a blip is not a page -- and back:
    daemon-level alerts (``alerts.targets``), on the transitions only. Back also wakes the reconciler at
    once: boundaries that came while Redis was away were skipped.

    It PINGs on a client of its own without retries: the shared client's retries (real seconds, with
    backoff) hid outages shorter than themselves -- the soak saw 70-second outages go unreported."""
    settings = app[SETTINGS].redis
    probe = create_redis(
        settings.model_copy(update={"retry_attempts": 0, "max_connections": 2}),
        client_name="orchestrator-watch",
    )
    failures, alerted = 0, False
    try:
        while True:
            checkpoint()
            ok, detail = await redis_ready(probe, settings.readiness_timeout_s)
            if METRICS in app:
                app[METRICS].redis_up.set(1 if ok else 0)
            if ok:
                if failures:
                    scheduler.pass_now()
                if alerted:
                    await alerter.daemon_alert("resolved", "Redis answers again", resolves="redis_lost")
                failures, alerted = 0, False
            else:
                failures += 1
                if failures == lost_after:
                    await alerter.daemon_alert("redis_lost", f"Redis does not answer ({detail})")
                    alerted = True
            await clock.sleep(interval_s)
    finally:
        await asyncio.shield(probe.aclose())  # not interrupted by a cancellation delivered again


async def audience_ctx(app: web.Application) -> AsyncIterator[None]:
    """Reporting, reply decisions and reply pacing for the live rooms this replica holds leases on."""
    settings = app[SETTINGS]
    interaction = settings.interaction
    chat = None
    if interaction.chat_url is not None:
        chat = ChatBackend(
            app[HTTP],
            str(interaction.chat_url),
            model=interaction.chat_model,
            api_key=interaction.chat_api_key.get_secret_value(),
            timeout_s=interaction.chat_timeout_s,
            system_prompt=interaction.chat_system_prompt,
        )
    audience = AudienceService(
        app[REDIS],
        interaction,
        provider_for=app[PROVIDERS].get,
        policy=app[POLICY],
        reactions=app[REACTIONS],
        metrics=app[METRICS],
        chat=chat,
        events_maxlen=settings.callbacks.events_maxlen,
    )
    app[AUDIENCE] = audience
    audience.start()
    yield
    await audience.aclose()


async def console_ctx(app: web.Application) -> AsyncIterator[None]:
    """This replica's presence (the console's daemon page) and the rooms' activity samples (its charts);
    the rooms' readings for /metrics are taken when scraped."""
    app[METRICS].rooms.source = partial(read_rooms, app)
    tasks = [
        asyncio.create_task(_announce(app), name="console-presence"),
        asyncio.create_task(_sample_activity(app), name="console-activity"),
    ]
    yield
    for task in tasks:
        await cancel_and_wait(task)
    await app[METRICS].rooms.aclose()
    with contextlib.suppress(RedisError, OSError):
        await app[CONSOLE].withdraw(app[AUDIENCE].leases.replica_id)


PRESENCE_INTERVAL_S = 5.0


async def _announce(app: web.Application) -> None:
    """Every few seconds: this replica is alive, on which host, and the rooms whose work it owns."""
    audience, settings = app[AUDIENCE], app[SETTINGS]
    about = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "version": __version__,
        "started_ms": int(time.time() * 1000),
        "listen": f"{settings.server.host}:{settings.server.port}",
    }
    while True:
        checkpoint()
        with contextlib.suppress(RedisError, OSError):  # Redis away: the next announcement says it
            await app[CONSOLE].announce(
                audience.leases.replica_id,
                {**about, "rooms_owned": sorted(audience.workers)},
                ttl_s=PRESENCE_INTERVAL_S * 3,
            )
        await pause(PRESENCE_INTERVAL_S)


async def _sample_activity(app: web.Application) -> None:
    """At each interval's start (one replica takes it): every managed room's viewers and totals."""
    interval_ms = int(app[SETTINGS].admin.console.activity_interval_s * 1000)
    while True:
        checkpoint()
        now_ms = clock.time_ms()
        await pause(clock.real_s((interval_ms - now_ms % interval_ms) / 1000))
        slot = clock.time_ms() // interval_ms * interval_ms
        with contextlib.suppress(RedisError, OSError):
            await app[CONSOLE].sample_activity(await app[ROOM_STORE].rooms(), slot)


#: The room state's audience counters are by the vendor's type number: named in the metrics.
AUDIENCE_TYPES = {str(number): name for number, name in NAMES.items()}


async def read_rooms(app: web.Application) -> dict[str, RoomReading]:
    """Each managed room's state for the ``orch_room_*`` metrics (a few pipelined round trips)."""
    store = app[ROOM_STORE]
    configs = {room.room_id: room for room in await app[ROOM_CONFIGS].all()}
    room_ids = sorted(configs)
    states = await store.states(room_ids)
    gauges = await store.gauges(room_ids, since_s=clock.time() - 3600)
    now, now_ms = clock.now(), time.time() * 1000
    readings: dict[str, RoomReading] = {}
    async for room_id, state in in_turns(list(states.items())):
        config = configs[room_id]
        queue, restarts, oldest_ms = gauges[room_id]
        readings[room_id] = RoomReading(
            provider=config.provider,
            live=state.get("job_state") == "PROCESSING",
            desired_live=outlook(config.schedule, now).live,
            paused=config.paused,
            viewers=int(state["viewers"]) if str(state.get("viewers", "")).isdigit() else None,
            reply_queue=queue,
            restarts_last_hour=restarts,
            report_lag_s=max(0.0, (now_ms - oldest_ms) / 1000) if oldest_ms is not None else 0.0,
            open_alerts=sorted(state.get("open_alerts", [])),
            audience={
                AUDIENCE_TYPES.get(k.removeprefix("audience:"), k.removeprefix("audience:")): int(v)
                for k, v in state.items()
                if k.startswith("audience:") and str(v).isdigit()
            },
            replies_inserted=int(state.get("events:reply_inserted", 0) or 0),
        )
    return readings


async def _apply_rooms_file(app: web.Application, configs: RoomConfigs, path: Path) -> None:
    """Write the rooms file's rooms to Redis; while Redis is away, retry with backoff (the rooms already
    in Redis are used meanwhile)."""
    rooms = load_rooms_file(path, app[SETTINGS])  # raises RoomsFileError: the CLI validated it already
    for room in rooms:
        app[REDACTOR].add_values(room.secrets())
    delay_s = 0.5
    while True:
        checkpoint()
        try:
            kept = await _apply_rooms(configs, rooms)
            break
        except RedisError as exc:
            log.warning("cannot apply the rooms file yet; retrying", error=str(exc), retry_in_s=delay_s)
            await asyncio.sleep(delay_s)
            delay_s = min(30.0, delay_s * 2)
    log.info("rooms file applied", path=str(path), rooms=len(rooms), kept_from_api=kept)


async def _apply_rooms(configs: RoomConfigs, rooms: list[ManagedRoom]) -> list[str]:
    """Apply the rooms file's rooms; the ids of those whose API-made definition was kept (see
    :meth:`RoomConfigs.apply_from_file`: the newer intent wins). Raises RedisError."""
    kept = []
    for room in rooms:
        if not await configs.apply_from_file(room):
            kept.append(room.room_id)
            log.info(
                "room changed through the API since the rooms file was applied; the API's definition stays",
                room_id=room.room_id,
            )
    return kept


async def reload(app: web.Application) -> bool:
    """SIGHUP: read the rooms file and the reply policy again, validated first. An invalid one is refused
    with a log line and the running configuration stays; a valid one takes effect (rooms written to Redis
    and announced to every replica, the policy swapped in). True when reloaded."""
    settings = app[SETTINGS]
    problems: list[tuple[str, str]] = []
    policy = None
    if settings.interaction.policy_file is not None:
        try:
            policy = load_policy(settings.interaction.policy_file)
        except OSError as exc:
            problems.append(("interaction.policy_file", f"cannot read: {exc.strerror}"))
        except ValidationError as exc:
            problems += [(f"{settings.interaction.policy_file}: {f}", m) for f, m in field_problems(exc)]
        except yaml.YAMLError as exc:
            problems.append(("interaction.policy_file", f"not YAML: {exc}"))
    rooms = None
    if settings.scheduling.rooms_file is not None:
        try:
            rooms = load_rooms_file(settings.scheduling.rooms_file, settings)
        except RoomsFileError as exc:
            problems += exc.problems
    if problems:
        log.error(
            "reload refused; the running configuration stays",
            problems=[f"{where}: {what}" for where, what in problems],
        )
        return False
    if policy is not None:
        app[AUDIENCE].desk.book.default = policy  # rooms that name no policy answer by it
    kept: list[str] = []
    if rooms is not None:
        for room in rooms:
            app[REDACTOR].add_values(room.secrets())
        try:
            kept = await _apply_rooms(app[ROOM_CONFIGS], rooms)
        except RedisError as exc:
            log.error("reload: cannot write the rooms to Redis; try again", error=str(exc))
            return False
    log.info("reloaded", policy=policy is not None, rooms=len(rooms or []), kept_from_api=kept)
    return True


async def _rooms_or_none(configs: RoomConfigs) -> list[ManagedRoom]:
    try:
        return await configs.all()
    except RedisError:
        return []


async def callbacks_ctx(app: web.Application) -> AsyncIterator[None]:
    """Room store, callback receiver (group-commit writer + local journal), reactions, RTMP watcher."""
    settings = app[SETTINGS].callbacks
    redis = app[REDIS]
    durability = app[SETTINGS].redis
    store = RoomStore(
        redis,
        events_maxlen=settings.events_maxlen,
        wait_replicas=durability.wait_replicas,
        wait_timeout_ms=durability.wait_timeout_ms,
    )
    batcher = callback_batcher(
        redis,
        timeout_s=settings.write_timeout_s,
        on_batch=lambda size: _count_batch(app[METRICS], size),
        wait_replicas=durability.wait_replicas,
        wait_timeout_ms=durability.wait_timeout_ms,
    )
    journal = Journal(settings.journal_path)
    journal.claim()  # raises JournalInUse: a replica sharing another's journal must not start
    receiver = CallbackReceiver(
        store,
        batcher,
        journal,
        codecs=lambda name: app[PROVIDERS].get(name).codec,
        max_skew_s=settings.max_skew_s,
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
        await cancel_and_wait(task)
    journal.release()
    await reactions.aclose()
    await batcher.aclose()


def _count_batch(metrics: Metrics, size: int) -> None:
    metrics.redis_batches.inc()
    metrics.redis_batched_calls.inc(size)


async def _replay_journal_forever(receiver: CallbackReceiver, journal: Journal, metrics: Metrics) -> None:
    """Replays the journal whenever it has entries and Redis takes them; checks every second."""
    while True:
        checkpoint()
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


#: Collections of the youngest generation after this many allocations (CPython: 700), of the older ones after
#: this many younger collections (10, 10). Every collection stops the event loop; at 20,000 audience events
#: a second the defaults meant ~150 young and ~1 full collection a second, ~5 % of the time, the full ones
#: ~8 ms each -- the tail of reply decisions (see benchmarks/README.md). Fewer, larger young collections
#: cost less in all; memory held by cyclic garbage waits a little longer.
GC_THRESHOLDS = (50_000, 20, 20)


async def loop_lag_ctx(app: web.Application) -> AsyncIterator[None]:
    """The event loop's own health: how late it runs timers (``orch_event_loop_lag_seconds``) -- the
    first thing to read when every latency of the process grows at once."""
    task = asyncio.create_task(app[METRICS].watch_loop_lag(), name="loop-lag")
    yield
    await cancel_and_wait(task)


async def _freeze_startup_heap(app: web.Application) -> None:
    """Move everything built at start-up (room definitions, scheduler jobs, clients) out of the cyclic
    garbage collector's reach. With 10,000 rooms a full collection otherwise stalls the event loop for
    ~150 ms at random moments (measured: boundary wake-up p99 176 ms without, 2 ms with; see
    benchmarks/README.md). Objects made later are collected as usual."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    app[METRICS].watch_gc()


async def _stop_watching_gc(app: web.Application) -> None:
    app[METRICS].unwatch_gc()


async def _start_draining(app: web.Application) -> None:
    app[LIFECYCLE].draining = True
