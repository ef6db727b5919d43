"""``POST /api/rooms/{room_id}/events``: audience events from platform bridges (the admin token, or a
bridge's own token naming the room: ``admin.bridges``).

The body is one event, a list of events, or ``{"events": [...]}`` (at most 1,000). Valid events are
normalised (:mod:`orchestrator.interaction.ingest`) and appended to the room's ingest stream
``orch:{room_id}:ingest``; invalid ones get a per-event error and do not stop the others. 200 when any was
accepted (``{"accepted", "duplicates", "rejected": [{"index", "error_code", "error_msg"}]}``; a duplicate is
an event whose ``message_id`` was taken already, counted in ``accepted`` too: the bridge may forget it),
422 when none was. A room whose backlog (events not yet reported) is at ``interaction.ingest_backlog_max``
takes nothing: 429 ``BACKLOG_FULL`` with ``Retry-After`` -- the bridge waits and sends the same batch
again; past ``interaction.ingest_shed_at`` of that bound it stops storing likes and viewer counts (``shed``
in the answer, not in ``accepted``; ``orch_audience_events_total{outcome="shed"}``) so that what may need a
reply goes first. A process already working on ``interaction.ingest_max_in_flight`` ingest requests
answers 429 ``BUSY`` with ``Retry-After``, taking nothing. A bridge token answers 403
``ROOM_NOT_ALLOWED`` for a room it does not name, 401 everywhere else.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web
from pydantic import BaseModel, Field

from orchestrator import clock
from orchestrator.appkeys import AUDIENCE, METRICS, ROOM_STORE, SETTINGS
from orchestrator.interaction.ingest import MAX_BATCH, BridgeEvent, Rejected, normalise_batch
from orchestrator.web.api import require_ingest, room_id_param
from orchestrator.web.errors import ApiError
from orchestrator.web.openapi import describe

routes = web.RouteTableDef()


class EventsEnvelope(BaseModel):
    events: list[BridgeEvent] = Field(..., max_length=MAX_BATCH)


#: What a bridge posts: one event, a list of them, or ``{"events": [...]}`` (for the API's description;
#: the handler normalises each event on its own, so one bad event does not refuse the others).
IngestBody = BridgeEvent | list[BridgeEvent] | EventsEnvelope


#: Events normalised (and decided, on the room's owner) between two turns of the event loop. Each turn
#: costs a comment later in the request the whole queue of other work (with fifty-event slices its decision
#: waited four); a slice of 250 holds the loop ~3.5 ms with its decisions on the slow machine of the
#: 2026-12-08 benchmarks (~1 ms normalised alone), a quarter of that on the one of the day before.
SLICE = 250


async def normalise_in_slices(
    items: list[Any], on_slice: Callable[[list[dict[str, Any]]], None] | None = None
) -> tuple[list[dict[str, Any]], list[Rejected]]:
    """:func:`normalise_batch` :data:`SLICE` events at a time, handing each slice's valid events to
    ``on_slice`` and yielding to the event loop in between: a 1,000-event batch would hold the loop four
    times as long at once, and every other room's work wait behind it."""
    accepted: list[dict[str, Any]] = []
    rejected: list[Rejected] = []
    for start in range(0, len(items), SLICE):
        if start:
            await asyncio.sleep(0)
        more, bad = normalise_batch(items[start : start + SLICE])
        if on_slice is not None:
            on_slice(more)
        accepted += more
        rejected += [r.model_copy(update={"index": r.index + start}) for r in bad]
    return accepted, rejected


#: What a refused batch is told to wait (s).
RETRY_AFTER_S = 1


@routes.post("/api/rooms/{room_id}/events")
@describe(
    "Post audience events from a platform bridge",
    body=IngestBody,
    auth="ingest",
    tag="audience",
    errors=(403, 429),
)
async def ingest(request: web.Request) -> web.Response:
    gate = request.app[INGEST_GATE]
    if gate.busy:
        raise ApiError(
            429,
            "BUSY",
            f"this replica already works on {gate.limit} ingest requests; nothing was taken -- send the "
            "batch again later",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )
    gate.busy_count += 1
    try:
        return await _ingest(request)
    finally:
        gate.busy_count -= 1


class IngestGate:
    """Ingest requests being worked on by this process, bounded (``interaction.ingest_max_in_flight``)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.busy_count = 0

    @property
    def busy(self) -> bool:
        return self.busy_count >= self.limit


INGEST_GATE = web.AppKey("ingest_gate", IngestGate)


async def _ingest(request: web.Request) -> web.Response:
    received_s = clock.time()
    room_id = room_id_param(request)
    require_ingest(request, room_id)
    store = request.app[ROOM_STORE]
    try:
        body: Any = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise ApiError(
            400, "BAD_JSON", 'the body must be a JSON event, list of events or {"events": [...]}'
        ) from None
    items = body.get("events") if isinstance(body, dict) and "events" in body else body
    items = items if isinstance(items, list) else [items]
    if not 1 <= len(items) <= MAX_BATCH:
        raise ApiError(400, "BAD_BATCH", f"send 1 to {MAX_BATCH} events at a time")
    # On the replica that owns the room, replies are decided right here, slice by slice as the comments
    # are validated (before the write: a retried request is caught by the policy's per-user interval and
    # deduplication); the entries are marked so the owner's reader does not decide them again. Elsewhere
    # the owner decides when it reads them from the stream.
    on_slice = request.app[AUDIENCE].arrivals(room_id, since_s=received_s)
    accepted, rejected = await normalise_in_slices(items, on_slice)
    if on_slice is not None and accepted:
        # The room's pacer, woken by the replies just decided, goes first: its round trip to Redis is then
        # not queued behind this write and the reader's wake-up on it (which takes Redis a thousand
        # streams' worth of work when the replica owns a thousand rooms).
        await asyncio.sleep(0)
    # The room must be managed and its backlog under its bound; the script checks both where it writes
    # (one round trip per request).
    settings = request.app[SETTINGS].interaction
    ingested = await store.ingest(
        room_id,
        accepted,
        maxlen=settings.ingest_maxlen,
        decided=on_slice is not None,
        backlog_max=settings.ingest_backlog_max,
        dedup_window_s=settings.ingest_dedup_window_s,
        shed_at=max(1, int(settings.ingest_backlog_max * settings.ingest_shed_at)),
    )
    if not ingested.managed:
        raise ApiError(404, "ROOM_NOT_FOUND", f"room {room_id!r} is not managed here")
    if ingested.backlog_full:
        raise ApiError(
            429,
            "BACKLOG_FULL",
            f"room {room_id!r} has {settings.ingest_backlog_max} events waiting to be reported; "
            "nothing was taken -- send the batch again later",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )
    if ingested.shed:
        request.app[METRICS].audience_events.labels("shed").inc(ingested.shed)
    payload: dict[str, Any] = {
        "accepted": len(accepted) - ingested.shed,
        "duplicates": ingested.duplicates,
        "rejected": [r.model_dump() for r in rejected],
    }
    if ingested.shed:
        payload["shed"] = ingested.shed
    if not accepted:  # an error like every other: error_code and error_msg, beside the per-event reasons
        payload.update(error_code="EVENTS_INVALID", error_msg=f"none of the {len(items)} events is valid")
    return web.json_response(payload, status=200 if accepted else 422)
