"""A live room's reporter: its audience events, from the ingest stream to the job's live-event report URL.

Events wait in the room's ingest stream ``orch:{room}:ingest`` (the HTTP ingest
writes them there normalised as field ``event``; a bridge writing to Redis puts its own event format,
the one ``POST /api/rooms/{room}/events`` takes, in field ``raw``). One reader per replica reads the streams
of all its rooms in one ``XREADGROUP`` (consumer group ``reporter``, consumer = replica id) and hands the
entries to their rooms. A room reads no more while it holds a full batch, so while the vendor is down
the backlog stays in Redis, not in memory. A batch goes out when it holds ``report_max_events`` (≤ 1000)
or ``report_window_ms`` after its first event; within it, viewer counts coalesce to the latest. Before it
is sent, the batch's id and entry range are written to ``orch:{room}:report``; a failed send is retried
with backoff, the same batch with the same ``X-Batch-Id``, for as long as the lease is held. Only after
the vendor accepted it are its entries acknowledged (``XACK``) and trimmed, and the marker removed, in
one transaction. A successor (after a crash or a lost lease) claims the group's pending entries with
``XAUTOCLAIM`` and first resends the marked batch exactly as it was: at least once, and no event in two
different batches. A refreshed ``live_event_report_url`` in the answer is stored and used from then on.
Events older than ``report_max_age_s`` when a batch forms are dropped and counted, not reported.

A batch the vendor cannot take is not retried for ever: refused as invalid (400), or for a job that ended
or is gone (MetaStudio's MSS.20010099 "not running", MSS.20010046/51/59 "does not exist or has expired",
each an HTTP 500), it is dropped and counted. A report URL whose own authentication fails or expired (401
MSS.20010039/MSS.20010054) is replaced once by the job's current ``live_event_report_url`` (show job), and
the batch dropped if that does not help either.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from orchestrator import clock
from orchestrator.interaction.ingest import NAMES
from orchestrator.providers.errors import (
    ProviderAuthError,
    ProviderBadRequest,
    ProviderError,
    ProviderJobNotRunning,
    ProviderNotFound,
)
from orchestrator.store import keys
from orchestrator.store.redis import text as _text
from orchestrator.tasks import being_cancelled, checkpoint, pause, wait_event

if TYPE_CHECKING:
    from orchestrator.interaction.audience import AudienceService

GROUP = "reporter"

#: Acknowledge a reported batch and trim the stream behind it -- but never past the group's oldest entry
#: still pending (another consumer's, read before it lost the room: the owner claims those a lease later).
#: Soak finding: trimming to the first entry the owner itself still needed deleted them, unreported.
#: The marker goes only if it still names this batch: a worker that lost the room while its batch was out
#: must not delete the successor's marker.
#: KEYS[1] stream, KEYS[2] marker; ARGV[1] group, ARGV[2] the owner's trim point, ARGV[3] the batch id,
#: ARGV[4..] the batch's entry ids.
ACK_AND_TRIM_LUA = """
local function before(a, b)
  local am, as = string.match(a, '^(%d+)-?(%d*)$')
  local bm, bs = string.match(b, '^(%d+)-?(%d*)$')
  am, bm = tonumber(am), tonumber(bm)
  if am ~= bm then return am < bm end
  return (tonumber(as) or 0) < (tonumber(bs) or 0)
end
local acked = redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, 4))
if redis.call('HGET', KEYS[2], 'batch_id') == ARGV[3] then redis.call('DEL', KEYS[2]) end
local keep = ARGV[2]
local pending = redis.call('XPENDING', KEYS[1], ARGV[1])
if pending[1] > 0 and before(pending[2], keep) then keep = pending[2] end
redis.call('XTRIM', KEYS[1], 'MINID', '~', keep)
return acked
"""

#: Mark the batch about to be sent, if the room's lease is still this replica's; then the report URL and
#: the current product. KEYS[1] lease, KEYS[2] marker, KEYS[3] room state; ARGV[1] replica id, ARGV[2..4]
#: batch id, first and last entry id. Returns {1 or 0, url, product}.
MARK_BATCH_LUA = """
local marked = 0
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('HSET', KEYS[2], 'batch_id', ARGV[2], 'first', ARGV[3], 'last', ARGV[4])
  marked = 1
end
local target = redis.call('HMGET', KEYS[3], 'report_url', 'product_title')
return {marked, target[1], target[2]}
"""


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


class RoomReporter:
    """Batches of one room's events to its job's report URL; at most one batch (plus one read) in memory."""

    def __init__(self, service: AudienceService, room_id: str, job_id: str, log: Any) -> None:
        self.service = service
        self.room_id = room_id
        self.job_id = job_id
        self.stream = keys.room_ingest(room_id)
        self.buffer: list[Buffered] = []
        self.product = ""  # the current paragraph's product, read with the report URL
        self.ready = asyncio.Event()
        self.full = asyncio.Event()
        #: (batch id, first, last): the batch that goes next, as it was -- a predecessor's (from its marker),
        #: or this reporter's own once it began marking it, until the vendor took it and it is acknowledged.
        self._resend: tuple[str, str, str] | None = None
        self._log = log

    async def recover(self) -> None:
        """Pick up the batch a predecessor marked as being sent: it goes first, as it was."""
        marker = await self.service.redis.hgetall(keys.room_report(self.room_id))
        if marker:
            self._resend = (_text(marker[b"batch_id"]), _text(marker[b"first"]), _text(marker[b"last"]))

    def wants_more(self) -> bool:
        return len(self.buffer) < self.service.settings.report_max_events

    def add(self, entry_id: str, event_type: int, timestamp: int, raw: bytes) -> None:
        self.buffer.append(Buffered(entry_id, event_type, timestamp, raw))

    def added(self) -> None:
        """Wake the sender after a read: a batch may have filled."""
        if self.buffer:
            self.ready.set()
            if len(self.buffer) >= self.service.settings.report_max_events:
                self.full.set()

    async def run(self) -> None:
        """Send batches as they fill or their window ends, until cancelled."""
        settings = self.service.settings
        while True:
            await wait_event(self.ready, None)
            if self._resend is None:
                first_at = entry_ms(self.buffer[0].entry_id) / 1000 if self.buffer else clock.time()
                wait_s = first_at + settings.report_window_ms / 1000 - clock.time()
                if wait_s > 0 and len(self.buffer) < settings.report_max_events:
                    await wait_event(self.full, clock.real_s(wait_s))
            try:
                await self._flush_one()
            except (RedisError, OSError) as exc:
                if being_cancelled():
                    raise
                self._log.warning("reporter cannot reach Redis; retrying", error=str(exc))
                await pause(1.0)
                continue
            if not self.buffer:
                self.ready.clear()
            if len(self.buffer) < settings.report_max_events:
                self.full.clear()

    def _next_batch(self) -> tuple[str, list[Buffered]]:
        if self._resend is not None:
            batch_id, first, last = self._resend
            first_key, last_key = entry_order(first), entry_order(last)
            batch = [b for b in self.buffer if first_key <= entry_order(b.entry_id) <= last_key]
            if batch:
                return batch_id, batch
            self._resend = None  # its entries are gone (trimmed or acknowledged): nothing to resend
        batch = self.buffer[: self.service.settings.report_max_events]
        return f"{self.room_id}/{batch[0].entry_id}/{batch[-1].entry_id}", batch

    async def _flush_one(self) -> None:
        if not self.buffer:
            return
        batch_id, batch = self._next_batch()
        # From here the batch is fixed until acknowledged: whatever interrupts it (Redis away, the lease
        # lapsing while the vendor answered), the next attempt sends these entries under this id again.
        # Soak finding: a retry after a failed acknowledgement formed a new batch from the grown buffer,
        # and the events the vendor already had went out again in a second batch.
        self._resend = (batch_id, batch[0].entry_id, batch[-1].entry_id)
        events = _coalesce_viewers(batch)
        self.service.metrics.audience_events.labels("coalesced").inc(len(batch) - len(events))
        metrics = self.service.metrics
        # The marker and the report URL in one round trip (the URL is read again before each retry). A
        # worker that lost the room marks and sends nothing: the marker is its successor's.
        while True:
            if self.service.leases.valid(self.room_id):
                marked, url, self.product = await self.service.mark_batch(
                    self.room_id, (batch_id, batch[0].entry_id, batch[-1].entry_id)
                )
                if marked:
                    break
            await pause(0.5)
        attempt = 0
        reauthorised = False
        while True:
            checkpoint()
            if not self.service.leases.valid(self.room_id):
                await pause(0.5)
                continue
            if attempt:
                url, self.product = await self.service.report_target(self.room_id)
            try:
                if url is None:
                    raise _NoReportUrl
                refreshed = await self.service.client().report_batch(url, [e.raw for e in events], batch_id)
                accepted_at = clock.time()  # reported: the vendor has it (our acknowledgement follows)
                for entry in batch:
                    metrics.report_latency.observe(max(0.0, accepted_at - entry_ms(entry.entry_id) / 1000))
                break
            except ProviderAuthError as exc:
                fresh = None if reauthorised else await self._current_report_url(url)
                if fresh is not None:
                    reauthorised = True
                    self._log.warning("report URL refused; using the job's current one", error=str(exc))
                    await self.service.redis.hset(keys.room_state(self.room_id), "report_url", fresh)
                    attempt += 1
                    continue
                self._drop(batch_id, events, "report URL refused", exc)
                refreshed, events = None, []
                break
            except (ProviderBadRequest, ProviderNotFound, ProviderJobNotRunning) as exc:
                # The vendor refuses this batch as such, or its job ended or is gone: resending it would
                # block the room for ever (a 5xx with one of these codes is not a passing failure).
                self._drop(batch_id, events, "report batch refused", exc)
                refreshed, events = None, []  # nothing of it was reported
                break
            except (ProviderError, _NoReportUrl) as exc:
                if being_cancelled():
                    raise
                delay = min(30.0, 0.5 * 2**attempt)
                attempt += 1
                metrics.report_batches.labels("retry").inc()
                self._log.warning(
                    "report failed; the same batch goes again",
                    batch_id=batch_id,
                    events=len(events),
                    attempt=attempt,
                    retry_in_s=delay,
                    error=str(exc) or type(exc).__name__,
                )
                await pause(clock.real_s(delay))
        await self._acknowledge(batch_id, batch, events, refreshed)

    def _drop(self, batch_id: str, events: list[Buffered], why: str, exc: ProviderError) -> None:
        self._log.error(f"{why}; dropped", batch_id=batch_id, events=len(events), error=str(exc))
        self.service.metrics.report_batches.labels("dropped").inc()
        self.service.metrics.audience_events.labels("dropped").inc(len(events))

    async def _current_report_url(self, refused: str | None) -> str | None:
        """The job's report URL as the vendor shows it now, if it differs from the one refused."""
        try:
            job = await self.service.client().show_job(self.room_id, self.job_id)
        except ProviderError as exc:
            self._log.warning("cannot read the job's current report URL", error=str(exc))
            return None
        fresh = job.live_event_report_url
        return fresh if fresh and fresh != refused else None

    async def _acknowledge(
        self, batch_id: str, batch: list[Buffered], events: list[Buffered], refreshed: str | None
    ) -> None:
        done = {b.entry_id for b in batch}
        while True:  # the vendor has the batch: acknowledge it, however long Redis takes to come back
            remaining = [b for b in self.buffer if b.entry_id not in done]
            keep_from = remaining[0].entry_id if remaining else _after(batch[-1].entry_id)
            try:
                await self._ack(batch_id, done, keep_from, events, refreshed)
                break
            except (RedisError, OSError) as exc:
                if being_cancelled() or not self.service.leases.valid(self.room_id):
                    raise  # a successor resends the marked batch (same id)
                self._log.warning("cannot acknowledge a reported batch; retrying", error=str(exc))
                await pause(0.5)
        self.buffer = [b for b in self.buffer if b.entry_id not in done]
        self._resend = None
        metrics = self.service.metrics
        metrics.report_batches.labels("ok").inc()
        metrics.audience_events.labels("reported").inc(len(events))
        self._log.debug("reported", batch_id=batch_id, events=len(events), refreshed=bool(refreshed))

    async def _ack(
        self,
        batch_id: str,
        done: set[str],
        keep_from: str,
        events: list[Buffered],
        refreshed: str | None,
    ) -> None:
        async with self.service.redis.pipeline(transaction=True) as pipe:
            await self.service.ack_and_trim(
                keys=[self.stream, keys.room_report(self.room_id)],
                args=[GROUP, keep_from, batch_id, *done],
                client=pipe,
            )
            pipe.hincrby(keys.room_state(self.room_id), "reported", len(events))
            if refreshed:
                pipe.hset(keys.room_state(self.room_id), "report_url", refreshed)
            pipe.xadd(
                keys.room_events(self.room_id),
                {
                    "kind": "reported",
                    "job_id": self.job_id,
                    "batch_id": batch_id,
                    "events": len(events),
                    "types": _type_counts(events),
                },
                maxlen=self.service.events_maxlen,
                approximate=True,
            )
            await pipe.execute()


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
    counts: dict[str, int] = {}
    for event in events:
        name = NAMES.get(event.type, str(event.type))
        counts[name] = counts.get(name, 0) + 1
    return ",".join(f"{name}:{n}" for name, n in counts.items())


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
