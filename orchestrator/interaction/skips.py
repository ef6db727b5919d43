"""Why audience events got no reply: every one is counted by reason (``orch_audience_unanswered_total``)
and recorded in its room's event stream.

Comments are recorded one entry each (``comment_skipped``: reason, why, user_id, user, text), at most
:data:`MAX_ENTRIES` per room per flush; the rest of a flush's skips -- comments beyond that, and every
other kind (a like that got no thanks is not news) -- go into one ``unanswered`` entry counting them by
kind and reason. So nothing is skipped without a trace, and a room flooded with 20,000 events a second
writes a few entries a second to its record instead of pushing the job's history out of it (the record is
capped). The replica writes every room's entries in one pipeline a second, and adds to the metric then
too: a skip costs the ingest path a counter's increment (at 20,000 events a second, a locked metric
increment and a few allocations per skip were a tenth of the daemon's throughput).
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import dataclass, field

import structlog
from prometheus_client import Counter as Metric
from redis.exceptions import RedisError

from orchestrator.interaction.policy import REACTION_KINDS, Decision, Event, Skip
from orchestrator.store.events import RoomEvents
from orchestrator.tasks import being_cancelled, checkpoint

log = structlog.get_logger(__name__)

#: How often (s) the replica writes what it noted.
FLUSH_S = 1.0
#: Comments recorded one by one per room and flush; beyond, counted.
MAX_ENTRIES = 10
#: A room's notes kept while Redis is away (beyond, counted only in the metric).
MAX_HELD = 1000
KIND_NAMES = {0: "reply", 1: "comment", **REACTION_KINDS, 6: "viewers"}
#: A reply decided but without room in the room's queue (dropped, or evicted by a more important one).
QUEUE_FULL = Decision(None, "the room's reply queue is full", code=Skip.QUEUE_FULL)
#: A reply a reviewer rejected, or let expire.
REJECTED_IN_REVIEW = Decision(None, "rejected in review", code=Skip.REJECTED)
EXPIRED_IN_REVIEW = Decision(None, "expired in review", code=Skip.REJECTED)


@dataclass
class _RoomNotes:
    comments: list[dict[str, str | int]] = field(default_factory=list)
    counted: Counter[tuple[int, Skip]] = field(default_factory=Counter)  # (LiveEvent type; 0: a reply)
    held: int = 0  # sum of counted


class SkipLog:
    """What this replica's rooms left unanswered, waiting for the next flush."""

    def __init__(self, events: RoomEvents, metric: Metric) -> None:
        self._events = events
        self._children = {reason: metric.labels(reason.value) for reason in Skip}
        self._notes: dict[str, _RoomNotes] = {}
        self._unmetered: Counter[Skip] = Counter()  # skips not yet added to the metric

    def note(self, room_id: str, event: Event | None, decision: Decision, *, at_ms: int) -> None:
        """One event ``decision`` left unanswered (``event`` None: the reply was decided but had no room
        in the queue, or a reviewer's). Called for most audience events of a busy room: kept to a few
        dictionary operations (kinds are named when written)."""
        reason = decision.code or Skip.NO_RULE
        self._unmetered[reason] += 1
        notes = self._notes.get(room_id)
        if notes is None:
            notes = self._notes[room_id] = _RoomNotes()
        kind = event.type if event is not None else 0
        if kind == 1 and event is not None and len(notes.comments) < MAX_ENTRIES:
            notes.comments.append(
                {
                    "reason": reason,
                    "why": decision.reason,
                    "user_id": event.user_id,
                    "user": event.user_name,
                    "text": event.text[:100],
                    "event_ms": at_ms,
                }
            )
        elif notes.held < MAX_HELD:
            notes.counted[(kind, reason)] += 1
            notes.held += 1

    def meter(self) -> None:
        """Add what was noted to the metric (every flush; at once when a caller wants it current)."""
        unmetered, self._unmetered = self._unmetered, Counter()
        for reason, n in unmetered.items():
            self._children[reason].inc(n)

    async def flush(self) -> None:
        """Write what was noted, every room in one pipeline. Raises RedisError (the notes are kept)."""
        self.meter()
        if not self._notes:
            return
        notes, self._notes = self._notes, {}
        pipe = self._events.pipeline()
        for room_id, room in notes.items():
            for entry in room.comments:
                self._events.add_to(pipe, room_id, "comment_skipped", **entry)
            if room.counted:
                by_kind: dict[str, dict[str, int]] = {}
                for (kind, reason), n in sorted(room.counted.items()):
                    by_kind.setdefault(KIND_NAMES.get(kind, str(kind)), {})[reason.value] = n
                self._events.add_to(
                    pipe, room_id, "unanswered", total=sum(room.counted.values()), message=json.dumps(by_kind)
                )
        try:
            await pipe.execute()
        except BaseException:
            for room_id, room in notes.items():  # kept for the next flush, newer notes after them
                newer = self._notes.get(room_id)
                if newer is not None:
                    room.comments = (room.comments + newer.comments)[:MAX_ENTRIES]
                    room.counted.update(newer.counted)
                    room.held += newer.held
                self._notes[room_id] = room
            raise

    async def run(self) -> None:
        """Flush every :data:`FLUSH_S` until cancelled (and once more then)."""
        try:
            while True:
                checkpoint()
                await asyncio.sleep(FLUSH_S)
                try:
                    await self.flush()
                except RedisError as exc:
                    if being_cancelled():
                        raise
                    log.warning("cannot record unanswered audience events; kept", error=str(exc))
        finally:
            if self._notes:
                try:
                    async with asyncio.timeout(1.0):
                        await self.flush()
                except (RedisError, OSError, TimeoutError):
                    pass
