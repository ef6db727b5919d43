"""A live room's reporter: its audience events, from the ingest stream to the job's live-event report URL.

Events wait in the room's ingest stream (:mod:`orchestrator.store.ingest`). One reader per replica
(:mod:`orchestrator.interaction.reader`) reads the streams of all its rooms in one ``XREADGROUP`` and hands
the entries to their rooms. A room reads no more while it holds a full batch, so while the vendor is down the
backlog stays in Redis, not in memory. A batch goes out when it holds ``report_max_events`` (≤ 1000) or
``report_window_ms`` after its first event; within it, viewer counts coalesce to the latest. Before it is
sent, the batch's id and entry range are written to ``orch:{room}:report``; a failed send is retried with
backoff, the same batch with the same ``X-Batch-Id``, for as long as the lease is held. Only after the vendor
accepted it are its entries acknowledged (``XACK``) and trimmed, and the marker removed, in one transaction. A
successor (after a crash or a lost lease) claims the group's pending entries with ``XAUTOCLAIM`` and first
resends the marked batch exactly as it was: at least once, and no event in two different batches. A refreshed
``live_event_report_url`` in the answer is stored and used from then on. Events older than
``report_max_age_s`` when a batch forms are dropped and counted, not reported.

A batch the vendor refuses as invalid (``ProviderBadRequest``) is dropped and counted. One refused because
its job ended or is gone (``ProviderJobNotRunning``, ``ProviderNotFound`` -- MetaStudio answers those with
HTTP 500 and a documented code) is the room's, not the job's: it is sent again, with backoff, to the room's
report URL as it is then -- the next job's, once the room has one -- until its events are older than
``report_max_age_s`` (then dropped, counted ``expired``). Soak finding: dropping it at once lost the comments
viewers made around a job's failure, which the room's next job would have taken. A report URL whose own
authentication fails or expired (``ProviderAuthError``) is replaced once by the job's current one (the
provider's ``current_report_url``), and the batch dropped if that does not help either.

A worker being stopped lets its reporter finish the batch it has in flight (at most :data:`STOP_GRACE_S`),
so that a successor does not resend what the vendor took.

The vendor is reached through the room provider's audience channel; a provider that takes no reports
(``takes_reports`` false) has its rooms' events acknowledged as they are read, never sent.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from redis.exceptions import RedisError

from orchestrator import clock
from orchestrator.domain import AudienceKind
from orchestrator.interaction.context import RoomContext
from orchestrator.metrics import observe_all
from orchestrator.providers.errors import (
    ProviderAuthError,
    ProviderBadRequest,
    ProviderError,
    ProviderJobNotRunning,
    ProviderNotFound,
)
from orchestrator.store.ingest import Marker
from orchestrator.tasks import being_cancelled, checkpoint, pause, wait_event

#: How long a stopping worker's reporter may take to finish the batch it has in flight (real seconds: a
#: report on a healthy link answers within it; one that does not is resent by the successor, same id).
STOP_GRACE_S = 1.0


def entry_ms(entry_id: str) -> int:
    """When Redis added the stream entry (its id's milliseconds, on the process's clock): the event's
    ingest time."""
    return int(clock.of_real(int(entry_id.split("-", 1)[0]) / 1000) * 1000)


@dataclass(slots=True)
class Buffered:
    """An event waiting for its report: kept as the JSON the report carries (a few hundred bytes, not a
    parsed dict), with what batching needs."""

    entry_id: str
    type: int
    timestamp: int
    raw: bytes  # wire form: {"timestamp", "type", "content": JSON string}
    at_ms: int  # its ingest time: entry_ms(entry_id), worked out once


class RoomReporter:
    """Batches of one room's events to its job's report URL; at most one batch (plus one read) in memory."""

    def __init__(self, ctx: RoomContext) -> None:
        self.ctx = ctx
        self.buffer: list[Buffered] = []
        self.ready = asyncio.Event()
        self.full = asyncio.Event()
        #: The batch that goes next, as it was -- a predecessor's (from its marker), or this reporter's own
        #: once it began marking it, until the vendor took it and it is acknowledged.
        self._resend: Marker | None = None
        #: Set when the worker stops: no new batch is begun; the one in flight is finished.
        self.stopping = False

    async def recover(self) -> None:
        """Pick up the batch a predecessor marked as being sent: it goes first, as it was."""
        self._resend = await self.ctx.streams.marker(self.ctx.room_id)

    def wants_more(self) -> bool:
        return len(self.buffer) < self.ctx.settings.report_max_events

    def add(self, entry_id: str, event_type: int, timestamp: int, raw: bytes, at_ms: int) -> None:
        self.buffer.append(Buffered(entry_id, event_type, timestamp, raw, at_ms))

    def added(self) -> None:
        """Wake the sender after a read: a batch may have filled."""
        if self.buffer:
            self.ready.set()
            if len(self.buffer) >= self.ctx.settings.report_max_events:
                self.full.set()

    async def run(self) -> None:
        """Send batches as they fill or their window ends, until cancelled."""
        settings = self.ctx.settings
        while True:
            await wait_event(self.ready, None)
            if self.stopping:
                return
            if self._resend is None:
                first_at = self.buffer[0].at_ms / 1000 if self.buffer else clock.time()
                wait_s = first_at + settings.report_window_ms / 1000 - clock.time()
                if wait_s > 0 and len(self.buffer) < settings.report_max_events:
                    await wait_event(self.full, clock.real_s(wait_s))
            try:
                await self._flush_one()
            except (RedisError, OSError) as exc:
                if being_cancelled():
                    raise
                self.ctx.log.warning("reporter cannot reach Redis; retrying", error=str(exc))
                await pause(1.0)
                continue
            if not self.buffer or self.stopping:
                self.ready.clear()
            if len(self.buffer) < settings.report_max_events:
                self.full.clear()
            if self.stopping:
                return

    def stop(self) -> None:
        """Begin no new batch; wake the sender so that an idle one returns at once."""
        self.stopping = True
        self.ready.set()

    def _next_batch(self) -> tuple[str, list[Buffered]]:
        if self._resend is not None:
            batch_id, first, last = self._resend
            first_key, last_key = entry_order(first), entry_order(last)
            batch = [b for b in self.buffer if first_key <= entry_order(b.entry_id) <= last_key]
            if batch:
                return batch_id, batch
            self._resend = None  # its entries are gone (trimmed or acknowledged): nothing to resend
        batch = self.buffer[: self.ctx.settings.report_max_events]
        return f"{self.ctx.room_id}/{batch[0].entry_id}/{batch[-1].entry_id}", batch

    async def _flush_one(self) -> None:
        if not self.buffer:
            return
        ctx = self.ctx
        batch_id, batch = self._next_batch()
        # From here the batch is fixed until acknowledged: whatever interrupts it (Redis away, the lease
        # lapsing while the vendor answered), the next attempt sends these entries under this id again.
        # Soak finding: a retry after a failed acknowledgement formed a new batch from the grown buffer,
        # and the events the vendor already had went out again in a second batch.
        self._resend = marker = Marker(batch_id, batch[0].entry_id, batch[-1].entry_id)
        if not ctx.channel.takes_reports:  # this vendor takes no reports: the events are done with
            await self._acknowledge(batch_id, batch, [], None, sent=False)
            return
        events = _coalesce_viewers(batch)
        ctx.metrics.audience_events.labels("coalesced").inc(len(batch) - len(events))
        # The marker and the report URL in one round trip (the URL is read again before each retry). A
        # worker that lost the room marks and sends nothing: the marker is its successor's.
        while True:
            if ctx.owned():
                marked, url = await ctx.streams.mark(ctx.room_id, ctx.replica_id, marker)
                if marked:
                    break
            await pause(0.5)
        refreshed, events, sent_to = await self._send(batch_id, batch, events, url)
        await self._acknowledge(batch_id, batch, events, refreshed, sent_to=sent_to)

    async def _send(
        self, batch_id: str, batch: list[Buffered], events: list[Buffered], url: str | None
    ) -> tuple[str | None, list[Buffered], str | None]:
        """Send until the vendor takes the batch (its refreshed report URL, if any, the events sent and the
        URL they went to), or refuses it for good (nothing sent)."""
        ctx = self.ctx
        attempt = 0
        reauthorised = False
        while True:
            checkpoint()
            if not ctx.owned():
                await pause(0.5)
                continue
            if attempt:
                url = await ctx.streams.report_url(ctx.room_id)
            try:
                if url is None:
                    raise _NoReportUrl
                refreshed = await ctx.channel.report(url, [e.raw for e in events], batch_id)
                accepted_ms = clock.time_ms()  # reported: the vendor has it (our acknowledgement follows)
                observe_all(ctx.metrics.report_latency, [max(0, accepted_ms - b.at_ms) / 1000 for b in batch])
                return refreshed, events, url
            except ProviderAuthError as exc:
                fresh = None if reauthorised else await self._current_report_url(url)
                if fresh is None:
                    self._drop(batch_id, events, "report URL refused", exc)
                    return None, [], None
                reauthorised = True
                ctx.log.warning("report URL refused; using the job's current one", error=str(exc))
                await ctx.streams.swap_report_url(ctx.room_id, url, fresh)
                attempt += 1
            except ProviderBadRequest as exc:
                # The vendor refuses this batch as such: resending it would block the room for ever.
                self._drop(batch_id, events, "report batch refused", exc)
                return None, [], None  # nothing of it was reported
            except (ProviderNotFound, ProviderJobNotRunning) as exc:
                # The job ended or is gone: the events are the room's, and its next job takes them -- unless
                # they are too old by then.
                newest_s = max(e.at_ms for e in batch) / 1000
                if clock.time() - newest_s > ctx.settings.report_max_age_s:
                    self._drop(
                        batch_id, events, "report batch too old for the room's next job", exc, "expired"
                    )
                    return None, [], None
                delay = min(30.0, 0.5 * 2**attempt)
                attempt += 1
                ctx.metrics.report_batches.labels("retry").inc()
                ctx.log.info(
                    "report refused: the job is not running; the batch waits for the room's next job",
                    batch_id=batch_id,
                    retry_in_s=delay,
                    error=str(exc),
                )
                await pause(clock.real_s(delay))
            except (ProviderError, _NoReportUrl) as exc:
                if being_cancelled():
                    raise
                delay = min(30.0, 0.5 * 2**attempt)
                attempt += 1
                ctx.metrics.report_batches.labels("retry").inc()
                ctx.log.warning(
                    "report failed; the same batch goes again",
                    batch_id=batch_id,
                    events=len(events),
                    attempt=attempt,
                    retry_in_s=delay,
                    error=str(exc) or type(exc).__name__,
                )
                await pause(clock.real_s(delay))

    def _drop(
        self, batch_id: str, events: list[Buffered], why: str, exc: ProviderError, outcome: str = "dropped"
    ) -> None:
        self.ctx.log.error(f"{why}; dropped", batch_id=batch_id, events=len(events), error=str(exc))
        self.ctx.metrics.report_batches.labels("dropped").inc()
        self.ctx.metrics.audience_events.labels(outcome).inc(len(events))

    async def _current_report_url(self, refused: str | None) -> str | None:
        """The job's report URL as the vendor shows it now, if it differs from the one refused."""
        try:
            fresh = await self.ctx.channel.current_report_url(self.ctx.room_id, self.ctx.job_id)
        except ProviderError as exc:
            self.ctx.log.warning("cannot read the job's current report URL", error=str(exc))
            return None
        return fresh if fresh and fresh != refused else None

    async def _acknowledge(
        self,
        batch_id: str,
        batch: list[Buffered],
        events: list[Buffered],
        refreshed: str | None,
        *,
        sent: bool = True,
        sent_to: str | None = None,
    ) -> None:
        ctx = self.ctx
        done = {b.entry_id for b in batch}
        while True:  # the vendor has the batch: acknowledge it, however long Redis takes to come back
            remaining = [b for b in self.buffer if b.entry_id not in done]
            keep_from = remaining[0].entry_id if remaining else _after(batch[-1].entry_id)
            try:
                await ctx.streams.acknowledge(
                    ctx.room_id,
                    job_id=ctx.job_id,
                    batch_id=batch_id,
                    entry_ids=done,
                    keep_from=keep_from,
                    reported=len(events),
                    types=_type_counts(events),
                    sent_to=sent_to,
                    refreshed_url=refreshed,
                )
                break
            except (RedisError, OSError) as exc:
                if being_cancelled() or not ctx.owned():
                    raise  # a successor resends the marked batch (same id)
                ctx.log.warning("cannot acknowledge a reported batch; retrying", error=str(exc))
                await pause(0.5)
        self.buffer = [b for b in self.buffer if b.entry_id not in done]
        self._resend = None
        if sent:
            ctx.metrics.report_batches.labels("ok").inc()
            ctx.metrics.audience_events.labels("reported").inc(len(events))
        ctx.log.debug("reported", batch_id=batch_id, events=len(events), refreshed=bool(refreshed))


class _NoReportUrl(Exception):
    """The job's live_event_report_url is not known (yet)."""


def entry_order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _after(entry_id: str) -> str:
    ms, seq = entry_order(entry_id)
    return f"{ms}-{seq + 1}"


def _type_counts(events: list[Buffered]) -> str:
    """``comment:3,viewers:1`` -- what a report carried, for the room's event record."""
    counts: dict[int, int] = {}
    for event in events:  # by number, named once each (an enum lookup per event cost 1.5 us)
        counts[event.type] = counts.get(event.type, 0) + 1
    return ",".join(f"{_label(number)}:{n}" for number, n in counts.items())


def _coalesce_viewers(batch: list[Buffered]) -> list[Buffered]:
    """The batch's events in order, with only the latest viewer count (type 6) kept."""
    viewers = [b for b in batch if b.type == 6]
    if len(viewers) <= 1:
        return batch
    latest = viewers[0]
    for event in viewers:  # the newest by timestamp; on a tie, the later in the stream
        if event.timestamp >= latest.timestamp:
            latest = event
    return [b for b in batch if b.type != 6 or b is latest]


def _label(event_type: int) -> str:
    try:
        return AudienceKind(event_type).label
    except ValueError:
        return str(event_type)
