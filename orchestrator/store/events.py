"""A room's event record: the capped stream ``orch:{room}:events`` the API, the CLI and the console read.

Every entry has ``kind`` and ``event_ms`` (when it happened, on the daemon's clock), most a ``job_id``;
structured details travel in ``message`` (JSON). The kinds, and who writes them:

=================  ==========================================  ==============================================
kind               fields                                      written by
=================  ==========================================  ==============================================
``callback``       event_type, job_id, outcome, received_ms,   the callback script (``apply_callbacks.lua``)
                   message (the vendor's message)
``job_started``    job_id                                      ``new_job.lua``
``job_state``      job_id, job_state                           ``set_job_state.lua``
``reaction``       reaction (``rtmp_stalled``), job_id,        ``mark_rtmp_stall.lua``
                   output_url, state
``reply_queued``,  reply_id, evicted, priority, text, source,  ``reply_enqueue.lua``
``reply_dropped``  rule_index
``action``         action, reason, outcome, message ({fence})  :meth:`RoomEvents.action`
``alert``          alert, severity, outcome, message ({text})  :meth:`RoomEvents.alert`
``reported``       job_id, batch_id, events, types             :meth:`RoomEvents.add` (in the reporter's
                                                               acknowledgement transaction)
``reply_inserted`` job_id, reply_id, priority, play_type,      :meth:`RoomEvents.add`
                   rule_index, text, waited_ms (from the
                   comment's arrival to the vendor call)
``replies_cleared`` dropped, withdrawn                         :meth:`RoomEvents.add` (an operator's clear)
``reply_cancelled`` reply_id, by (the operator)                the replies API (an operator's cancel)
``reply_finished``, job_id, reply_id                           :meth:`RoomEvents.add` (a vendor's push
``reply_failed``                                               channel said so: SoftSugar's socket)
``microphone``     job_id, outcome (``taken``, ``released``),  :meth:`RoomEvents.add` (the microphone
                   error_code, error_msg (the vendor's last)   relay)
``comment_skipped`` reason (a ``Skip`` code), why, user_id,  ``SkipLog`` (:mod:`.interaction.skips`),
                   user, text (a comment that got no reply)    once a second per replica
``unanswered``     total, message ({kind: {reason: count}})    the same: what was not recorded one by one
``review_decided`` review_id, outcome (approved, edited,       the review API (any replica); the owner's
                   rejected, expired), text                    pacer for those expired
=================  ==========================================  ==============================================

Entries a script writes are written there, in the same atomic step as the change they record; every
entry written from Python goes through :class:`RoomEvents` (alone, or added to a caller's pipeline).
"""

from __future__ import annotations

import json
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from orchestrator import clock
from orchestrator.store import keys

Field = str | int

#: Kinds also counted in the room's state (``events:<kind>``, a running total): the console's replies per
#: minute are differences of it (:mod:`orchestrator.store.console`).
COUNTED = frozenset({"reply_inserted"})


class RoomEvents:
    """Appends entries to rooms' event records (capped at about ``maxlen`` each)."""

    def __init__(self, redis: aioredis.Redis, *, maxlen: int = 10_000) -> None:
        self._redis = redis
        self.maxlen = maxlen

    def entry(self, kind: str, fields: dict[str, Field]) -> dict[Any, Any]:
        return {"kind": kind, **fields, "event_ms": fields.get("event_ms", clock.time_ms())}

    async def add(self, room_id: str, kind: str, **fields: Field) -> None:
        """Append one entry. Raises RedisError."""
        if kind in COUNTED:
            pipe = self.pipeline()
            self.add_to(pipe, room_id, kind, **fields)
            await pipe.execute()
            return
        await self._redis.xadd(
            keys.room_events(room_id), self.entry(kind, fields), maxlen=self.maxlen, approximate=True
        )

    def pipeline(self) -> Pipeline:
        """A pipeline (no transaction) for :meth:`add_to`."""
        return self._redis.pipeline(transaction=False)

    def add_to(self, pipe: Pipeline, room_id: str, kind: str, **fields: Field) -> None:
        """Queue one entry on ``pipe`` (the caller's transaction)."""
        pipe.xadd(keys.room_events(room_id), self.entry(kind, fields), maxlen=self.maxlen, approximate=True)
        if kind in COUNTED:
            pipe.hincrby(keys.room_state(room_id), f"events:{kind}", 1)

    async def action(self, room_id: str, action: str, reason: str, outcome: str, fence: str) -> None:
        await self.add(
            room_id,
            "action",
            action=action,
            reason=reason,
            outcome=outcome,
            message=json.dumps({"fence": fence}),
        )

    async def alert(self, room_id: str, alert: str, severity: str, outcome: str, text: str) -> None:
        await self.add(
            room_id,
            "alert",
            alert=alert,
            severity=severity,
            outcome=outcome,
            message=json.dumps({"text": text}, ensure_ascii=False),
        )
