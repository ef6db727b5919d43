"""Prometheus metrics of one daemon process, in their own registry (one per application instance).

Two kinds: what this process did (counters and histograms, summed across replicas by a query), and how
each managed room is (``orch_room_*``, read from the shared Redis when scraped, at most every few seconds,
by :class:`RoomMetrics` -- every replica reports the same values: aggregate them with ``max``). Every label
is bounded: rooms are the managed ones only, routes the registered ones, vendor operations the client's
own names, vendor codes at most :data:`MAX_CODES` distinct (``other`` beyond).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import cast

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from redis.exceptions import RedisError

log = structlog.get_logger(__name__)

#: Distinct vendor error codes counted by name; any further one is counted as ``other``.
MAX_CODES = 64


#: How often (s) the event loop's lag is sampled (``orch_event_loop_lag_seconds``).
LOOP_LAG_INTERVAL_S = 0.1


def observe_all(histogram: Histogram, amounts: Sequence[float]) -> None:
    """``histogram.observe(a)`` for every ``a``, each bucket and the sum changed once: a report carries up
    to 1,000 events, and prometheus_client takes a lock per observation and per bucket (2.5 % of the
    daemon's CPU under the pipeline benchmark). Reaches into prometheus_client's histogram, which has no
    bulk form; tests/scheduling/test_room_metrics.py proves the exposition the same as observing one by
    one."""
    if not amounts:
        return
    bounds: list[float] = histogram._upper_bounds  # ascending, +Inf last
    counts = [0] * len(bounds)
    for amount in amounts:
        counts[bisect_left(bounds, amount)] += 1  # observe's "first bound >= amount"
    histogram._sum.inc(sum(amounts))
    for bucket, count in zip(histogram._buckets, counts, strict=True):
        if count:
            bucket.inc(count)


@dataclass
class RoomReading:
    """One managed room, as read from Redis (:meth:`RoomMetrics.update`)."""

    provider: str
    live: bool
    desired_live: bool
    paused: bool
    viewers: int | None = None
    reply_queue: int = 0
    restarts_last_hour: int = 0
    report_lag_s: float = 0.0
    open_alerts: list[str] = field(default_factory=list)
    audience: dict[str, int] = field(default_factory=dict)
    replies_inserted: int = 0


ROOM_GAUGES: dict[str, tuple[str, Callable[[RoomReading], float]]] = {
    "live": ("Whether the room's job is live (1) or not (0).", lambda r: float(r.live)),
    "desired_live": ("Whether the room's schedule wants it live now.", lambda r: float(r.desired_live)),
    "paused": ("Whether the room's automation is paused.", lambda r: float(r.paused)),
    "reply_queue_depth": ("Replies waiting in the room's queue.", lambda r: float(r.reply_queue)),
    "restarts_last_hour": (
        "Restarts of the room's job in the last hour.",
        lambda r: float(r.restarts_last_hour),
    ),
    "report_lag_seconds": (
        "Age of the oldest audience event not yet reported to the vendor (0: none waits).",
        lambda r: r.report_lag_s,
    ),
}
_VIEWERS = "The room's audience, as last reported."
_ALERT_OPEN = "An alert open on the room (1), by kind."
_AUDIENCE = "Audience events taken for the room, by type."
_INSERTED = "Replies said in the room (sent to its vendor)."
_AGE = "Seconds since the rooms were last read from Redis (stale when Redis is away)."


def _head(name: str, doc: str, kind: str) -> str:
    """A family's HELP and TYPE lines (its help text escaped as the text format says)."""
    text = doc.replace("\\", "\\\\").replace("\n", "\\n")
    return f"# HELP {name} {text}\n# TYPE {name} {kind}\n"


def _label(value: str) -> str:
    """A label value as the text format escapes it (backslash, newline, double quote)."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    return cast(str, floatToGoString(value))  # type: ignore[no-untyped-call]


#: A reading of the rooms serves every scrape within this long (s).
ROOM_READING_MAX_AGE_S = 5.0
#: A scrape waits this long for a new reading; past it, it is served the last one (stale: see its age).
ROOM_READING_WAIT_S = 2.0


class RoomMetrics(Collector):
    """The ``orch_room_*`` families, from the latest reading of every managed room.

    The rooms are read when a scrape asks (:meth:`refresh`), at most every :data:`ROOM_READING_MAX_AGE_S`
    and once for any number of scrapes at the same time -- not on a timer: a thousand rooms' reading is a
    few pipelined round trips and ~40 ms of the loop, which a daemon nobody scrapes need not pay every
    5 s (a fifth of the CPU of 1,000 idle live SoftSugar rooms went to it)."""

    def __init__(self) -> None:
        self.rooms: dict[str, RoomReading] = {}
        self.read_at = 0.0
        self.source: Callable[[], Awaitable[dict[str, RoomReading]]] | None = None
        self._reading: asyncio.Task[None] | None = None

    def update(self, rooms: dict[str, RoomReading]) -> None:
        self.rooms, self.read_at = rooms, time.time()

    async def refresh(self) -> None:
        """Read the rooms again if the last reading is older than :data:`ROOM_READING_MAX_AGE_S`; a scrape
        waits :data:`ROOM_READING_WAIT_S` at most (the reading goes on for the next one), and a reading that
        fails leaves the last one (its age tells)."""
        if self.source is None or time.time() - self.read_at < ROOM_READING_MAX_AGE_S:
            return
        if self._reading is None:
            self._reading = asyncio.create_task(self._read(self.source), name="room-metrics-reading")
        try:
            async with asyncio.timeout(ROOM_READING_WAIT_S):
                await asyncio.shield(self._reading)
        except TimeoutError:
            log.warning("reading the rooms for the metrics is slow; serving the last reading")

    async def _read(self, source: Callable[[], Awaitable[dict[str, RoomReading]]]) -> None:
        try:
            self.update(await source())
        except (RedisError, OSError) as exc:  # Redis away: orch_room_metrics_age_seconds grows
            log.warning("cannot read the rooms for the metrics", error=str(exc) or type(exc).__name__)
        except Exception:  # a bug must not take the process's own metrics down with the rooms'
            log.exception("reading the rooms for the metrics failed")
        finally:
            self._reading = None

    async def aclose(self) -> None:
        """Stop a reading under way (the application is stopping)."""
        if self._reading is not None:
            self._reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reading

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        """The families as prometheus_client objects: the reference :meth:`render` is held equal to (a
        test); a registry can collect them too."""
        rooms = self.rooms
        for name, (doc, value) in ROOM_GAUGES.items():
            family = GaugeMetricFamily(f"orch_room_{name}", doc, labels=["room", "provider"])
            for room_id, reading in rooms.items():
                family.add_metric([room_id, reading.provider], value(reading))
            yield family
        viewers = GaugeMetricFamily("orch_room_viewers", _VIEWERS, labels=["room"])
        alerts = GaugeMetricFamily("orch_room_alert_open", _ALERT_OPEN, labels=["room", "alert"])
        audience = CounterMetricFamily("orch_room_audience_events", _AUDIENCE, labels=["room", "type"])
        inserted = CounterMetricFamily("orch_room_replies_inserted", _INSERTED, labels=["room"])
        for room_id, reading in rooms.items():
            if reading.viewers is not None:
                viewers.add_metric([room_id], reading.viewers)
            for kind in reading.open_alerts:
                alerts.add_metric([room_id, kind], 1)
            for kind, count in reading.audience.items():
                audience.add_metric([room_id, kind], count)
            inserted.add_metric([room_id], reading.replies_inserted)
        yield from (viewers, alerts, audience, inserted)
        yield GaugeMetricFamily("orch_room_metrics_age_seconds", _AGE, value=self.age_s())

    def age_s(self) -> float:
        return time.time() - self.read_at if self.read_at else float("nan")

    def render(self) -> str:
        """The families in Prometheus's text format, exactly as prometheus_client renders :meth:`collect`,
        ~8x faster: its per-sample formatting and label checks took ~45 ms for a thousand rooms' 11,000
        samples, every scrape."""
        rooms = self.rooms
        labels = {room_id: f'room="{_label(room_id)}"' for room_id in rooms}
        out: list[str] = []
        for name, (doc, value) in ROOM_GAUGES.items():
            out.append(_head(f"orch_room_{name}", doc, "gauge"))
            out.extend(
                f'orch_room_{name}{{provider="{_label(r.provider)}",{labels[room_id]}}} {_number(value(r))}\n'
                for room_id, r in rooms.items()
            )
        out.append(_head("orch_room_viewers", _VIEWERS, "gauge"))
        out.extend(
            f"orch_room_viewers{{{labels[room_id]}}} {_number(r.viewers)}\n"
            for room_id, r in rooms.items()
            if r.viewers is not None
        )
        out.append(_head("orch_room_alert_open", _ALERT_OPEN, "gauge"))
        out.extend(
            f'orch_room_alert_open{{alert="{_label(kind)}",{labels[room_id]}}} 1.0\n'
            for room_id, r in rooms.items()
            for kind in r.open_alerts
        )
        out.append(_head("orch_room_audience_events_total", _AUDIENCE, "counter"))
        out.extend(
            f'orch_room_audience_events_total{{{labels[room_id]},type="{_label(kind)}"}} {_number(count)}\n'
            for room_id, r in rooms.items()
            for kind, count in r.audience.items()
        )
        out.append(_head("orch_room_replies_inserted_total", _INSERTED, "counter"))
        out.extend(
            f"orch_room_replies_inserted_total{{{labels[room_id]}}} {_number(r.replies_inserted)}\n"
            for room_id, r in rooms.items()
        )
        out.append(_head("orch_room_metrics_age_seconds", _AGE, "gauge"))
        out.append(f"orch_room_metrics_age_seconds {_number(self.age_s())}\n")
        return "".join(out)

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return []  # collected fresh each scrape; nothing to register up front


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.callbacks_received = Counter(
            "orch_callbacks_received_total",
            "Vendor callbacks accepted, by event type and outcome.",
            ["event_type", "outcome"],
            registry=self.registry,
        )
        self.callbacks_rejected = Counter(
            "orch_callbacks_rejected_total",
            "Vendor callbacks refused, by reason (missing, malformed_time, too_old, in_future, "
            "bad_signature, replay, malformed_body, not_managed, unknown_profile).",
            ["reason"],
            registry=self.registry,
        )
        self.alerts = Counter(
            "orch_alerts_total",
            "Alert deliveries to webhooks, by outcome (sent, failed: refused or unreachable after retries).",
            ["outcome"],
            registry=self.registry,
        )
        self._received: dict[tuple[str, str], Counter] = {}
        self.journal_pending = Gauge(
            "orch_callback_journal_pending",
            "Callbacks journaled locally while Redis was unreachable, waiting for replay.",
            registry=self.registry,
        )

        self.redis_batches = Counter(
            "orch_callback_write_batches_total",
            "Redis round trips that wrote callbacks (group commit): callbacks / batches is the batch size.",
            registry=self.registry,
        )
        self.redis_batched_calls = Counter(
            "orch_callback_writes_total",
            "Callbacks written to Redis through the group commit.",
            registry=self.registry,
        )

        self.audience_events = Counter(
            "orch_audience_events_total",
            "Audience events by what became of them: reported, expired (too old to report), rejected "
            "(malformed, from the Redis ingest path), coalesced (superseded viewer counts), dropped (in a "
            "batch the vendor refused with 400), shed (likes and viewer counts not stored while the room's "
            "backlog was past interaction.ingest_shed_at).",
            ["outcome"],
            registry=self.registry,
        )
        self.report_batches = Counter(
            "orch_report_batches_total",
            "Live-event report calls, by outcome (ok, retry, dropped).",
            ["outcome"],
            registry=self.registry,
        )
        self.report_latency = Histogram(
            "orch_report_latency_seconds",
            "From an audience event's ingest to the vendor accepting the report that carried it.",
            buckets=(0.05, 0.1, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 1, 2, 5, 10, 30),
            registry=self.registry,
        )
        self.reply_decision = Histogram(
            "orch_reply_decision_seconds",
            "From a comment's ingest to the decision of its reply (text, priority, play_type: the "
            "INSERT_PLAY_SCRIPT to send), for comments that get one.",
            buckets=(0.001, 0.002, 0.003, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1, 5),
            registry=self.registry,
        )
        self.reply_queued = Histogram(
            "orch_reply_queued_seconds",
            "From a comment's ingest to its reply being in the room's reply queue in Redis.",
            buckets=(0.001, 0.002, 0.003, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1, 5),
            registry=self.registry,
        )
        self.reply_sent = Histogram(
            "orch_reply_sent_seconds",
            "From a comment's ingest to its reply being sent to the vendor (the request handed over; the "
            "vendor's round trip excluded), for replies that answer an audience event.",
            buckets=(0.001, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.5, 1, 5),
            registry=self.registry,
        )
        self.replies = Counter(
            "orch_replies_total",
            "Replies by outcome: queued, dropped (queue full), evicted, inserted, finished, timed_out, "
            "cleaned_up, failed, lost (the insert may or may not have happened: not repeated).",
            ["outcome"],
            registry=self.registry,
        )
        self.unanswered = Counter(
            "orch_audience_unanswered_total",
            "Audience events that got no reply, by reason: no_rule, blocked_user, forbidden_word, "
            "rate_limited, duplicate, queue_full, disabled, too_old, rejected (in review), not_answered.",
            ["reason"],
            registry=self.registry,
        )
        self.rooms_owned = Gauge(
            "orch_audience_rooms_owned",
            "Live rooms whose reporting and replies this replica owns (room leases held).",
            registry=self.registry,
        )

        self.gc_pause = Histogram(
            "orch_gc_pause_seconds",
            "Cyclic garbage collector pauses (the whole event loop stops), by generation.",
            ["generation"],
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
            registry=self.registry,
        )
        self._gc_started = 0.0
        self.loop_lag = Histogram(
            "orch_event_loop_lag_seconds",
            f"How late the event loop ran a timer due every {LOOP_LAG_INTERVAL_S} s: what every request, "
            "report and reply waited, at that moment, behind work holding the loop -- or for a core, on a "
            "machine that does not give the process one.",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=self.registry,
        )

        self.http_requests = Counter(
            "orch_http_requests_total",
            "HTTP requests answered on the admin listener, by route (the registered path, or "
            "'unmatched'), method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self._http: dict[tuple[str, str, int], Counter] = {}
        self.vendor_calls = Counter(
            "orch_vendor_calls_total",
            "Calls to a vendor's API, by provider, operation and code: ok, the vendor's error code, an HTTP "
            "status, or timeout / connect / transport / invalid.",
            ["provider", "operation", "code"],
            registry=self.registry,
        )
        self.vendor_call_seconds = Histogram(
            "orch_vendor_call_seconds",
            "Duration of calls to a vendor's API (each attempt), by provider and operation.",
            ["provider", "operation"],
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self._codes: set[str] = set()
        self.reconciler_actions = Counter(
            "orch_reconciler_actions_total",
            "Room actions taken (start, stop, restart, refresh, adopt), by room and outcome (done, failed, "
            "skipped).",
            ["room", "action", "outcome"],
            registry=self.registry,
        )
        self.redis_up = Gauge(
            "orch_redis_up", "Whether this replica reaches Redis (1) or not (0).", registry=self.registry
        )
        self.rooms = RoomMetrics()  # rendered by exposition(), not through the registry: see render()

    def http_request(self, route: str, method: str, status: int) -> None:
        key = (route, method, status)
        child = self._http.get(key)
        if child is None:
            child = self._http[key] = self.http_requests.labels(route, method, str(status))
        child.inc()

    def vendor_call(self, provider: str, operation: str, code: str, seconds: float) -> None:
        if code not in self._codes:
            if len(self._codes) >= MAX_CODES:
                code = "other"
            else:
                self._codes.add(code)
        self.vendor_calls.labels(provider, operation, code).inc()
        self.vendor_call_seconds.labels(provider, operation).observe(seconds)

    def reconciler_action(self, room: str, action: str, outcome: str) -> None:
        self.reconciler_actions.labels(room, action, outcome).inc()

    def callback_received(self, counter: str, outcome: str) -> None:
        """Count one accepted callback under the counter its provider's codec named -- the vendor's type for
        the types it knows, one ``other`` for every type it does not (a signed callback's type is the
        sender's string: one series per distinct string would grow /metrics without bound). The labelled
        child is looked up once per pair, not per callback."""
        label = counter
        child = self._received.get((label, outcome))
        if child is None:
            child = self._received[(label, outcome)] = self.callbacks_received.labels(label, outcome)
        child.inc()

    def watch_gc(self) -> None:
        """Time every collection of the cyclic garbage collector (``gc.callbacks``)."""
        if self._on_gc not in gc.callbacks:
            gc.callbacks.append(self._on_gc)

    def unwatch_gc(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            self.gc_pause.labels(str(info.get("generation", "?"))).observe(
                time.perf_counter() - self._gc_started
            )

    async def watch_loop_lag(self, interval_s: float = LOOP_LAG_INTERVAL_S) -> None:
        """Observe, until cancelled, how late the running loop wakes a timer (real time, whatever the
        process clock's speed)."""
        while True:
            due = time.perf_counter() + interval_s
            await asyncio.sleep(interval_s)
            self.loop_lag.observe(max(0.0, time.perf_counter() - due))

    def exposition(self) -> bytes:
        """Every metric in Prometheus's text format: the process's own, then the rooms'."""
        return generate_latest(self.registry) + self.rooms.render().encode()
