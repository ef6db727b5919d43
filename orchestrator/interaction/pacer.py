"""A live room's reply pacer: the room's reply queue, inserted with INSERT_PLAY_SCRIPT at the vendor's pace.

The pacer inserts the most important waiting reply (:mod:`orchestrator.interaction.queue`) with
INSERT_PLAY_SCRIPT whenever fewer than ``reply_in_flight`` are in flight; a REPLY_COMMAND_FINISH (a
reaction from the callback receiver, on any replica) wakes it for the next. An insert without a finish
after ``reply_timeout_s`` is given up. An operator reply that finds the slots taken by less important ones
first clears those at the vendor with CLEAN_UP_INSERT_COMMAND (an insert already playing cannot be cleared
and finishes). After ``idle_after_s`` without a reply, an idle line. It wakes on a kick (a reply queued, a
finish) and on a timer only while something can come due.

Failures of INSERT_PLAY_SCRIPT: certainly unsent (connection refused, 429) → back in the queue, retried;
ambiguous (timeout, 5xx) → given up and counted ``lost``: saying it twice is worse than not at all;
refused (400, or the job is gone or no longer running) → counted ``failed``, never repeated.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, cast

from redis.exceptions import RedisError

from orchestrator import clock
from orchestrator.interaction.queue import Reply
from orchestrator.providers.errors import (
    ProviderConnectError,
    ProviderError,
    ProviderRateLimited,
    ProviderServerError,
    ProviderStatusError,
)
from orchestrator.providers.metastudio.models import CleanUpInsertCommand, Command, PlayTextInfo, TextConfig
from orchestrator.settings import PlayTypeName
from orchestrator.tasks import being_cancelled, pause, wait_event

if TYPE_CHECKING:
    from orchestrator.interaction.audience import AudienceService


class ReplyPacer:
    """Inserts one room's queued replies, at most ``reply_in_flight`` unfinished at once."""

    def __init__(self, service: AudienceService, room_id: str, job_id: str, log: Any) -> None:
        self.service = service
        self.room_id = room_id
        self.job_id = job_id
        self.kick = asyncio.Event()  # a reply was queued, or one finished
        self.busy = 1  # replies in flight at the last pass (unknown at start: look once)
        self.last_activity = clock.monotonic()
        self._idle_cursor = 0
        self._log = log

    async def run(self) -> None:
        """Pace the room's replies until cancelled."""
        settings = self.service.settings
        while True:
            # Wake on a kick (a reply queued, a finish); on a timer only when something can come due: a
            # reply in flight (its timeout), or the idle filler. A thousand idle rooms cost nothing.
            tick = None
            if self.busy:
                tick = min(1.0, settings.reply_timeout_s / 4)
            elif settings.idle_after_s > 0 and settings.idle_lines:
                tick = min(1.0, settings.idle_after_s)
            # At most 20 timer wake-ups a second per room, however compressed the clock.
            await wait_event(self.kick, None if tick is None else max(0.05, clock.real_s(tick)))
            self.kick.clear()
            if not self.service.leases.valid(self.room_id):
                continue
            try:
                await self._pace_once()
            except (RedisError, ProviderError) as exc:
                if being_cancelled():
                    raise
                self._log.warning("reply pacing failed; retrying", error=str(exc))
                await pause(1.0)

    async def _pace_once(self) -> None:
        service, settings = self.service, self.service.settings
        queue, metrics = service.queue, service.metrics
        flights = await queue.in_flight(self.room_id)
        now_ms = clock.time_ms()
        overdue = [f.reply_id for f in flights if now_ms - f.sent_ms > settings.reply_timeout_s * 1000]
        if overdue:
            await queue.forget(self.room_id, overdue)
            metrics.replies.labels("timed_out").inc(len(overdue))
            self._log.warning("replies given up: no REPLY_COMMAND_FINISH in time", reply_ids=overdue)
            flights = [f for f in flights if f.reply_id not in overdue]
        if len(flights) >= settings.reply_in_flight:
            pending = await queue.pending(self.room_id)
            victims = [f.reply_id for f in flights if f.priority != "operator"]
            if pending and pending[0].priority == "operator" and victims:
                cleaned = await self._clean_up(victims)
                flights = [f for f in flights if f.reply_id not in cleaned]
        busy = len(flights)
        while busy < settings.reply_in_flight:
            reply = await queue.pop(self.room_id)
            if reply is None:
                break
            busy += await self._insert(reply)
        self.busy = busy
        if (
            not busy
            and settings.idle_after_s > 0
            and settings.idle_lines
            and clock.monotonic() - self.last_activity >= settings.idle_after_s
            and not await queue.pending(self.room_id)
        ):
            line = settings.idle_lines[self._idle_cursor % len(settings.idle_lines)]
            self._idle_cursor += 1
            self.last_activity = clock.monotonic()
            await service.enqueue(self.room_id, Reply(line, "idle", service.play_type("idle")), source="idle")
            self.kick.set()

    async def _insert(self, reply: Reply) -> bool:
        """INSERT_PLAY_SCRIPT for ``reply``; True when it is now in flight."""
        service, metrics = self.service, self.service.metrics
        info = PlayTextInfo(
            text_config=TextConfig(text=reply.text),
            play_type=cast(PlayTypeName | None, reply.play_type),
            rule_index=reply.rule_index,
        )
        try:
            answer = await service.client().command(
                self.room_id, self.job_id, Command.insert_play_script(info)
            )
        except (ProviderConnectError, ProviderRateLimited) as exc:
            await service.queue.push_back(self.room_id, reply)
            self._log.warning("insert not sent; the reply waits", error=str(exc))
            await pause(1.0)
            return False
        except ProviderStatusError as exc:
            # A 5xx is ambiguous -- but not MetaStudio's documented "job not running / gone" answers,
            # which arrive as 500 too and are read as refusals (ProviderJobNotRunning, ProviderNotFound).
            if isinstance(exc, ProviderServerError):
                metrics.replies.labels("lost").inc()
                self._log.error("insert outcome unknown; not repeated", reply=reply.text[:40], error=str(exc))
            else:
                metrics.replies.labels("failed").inc()
                self._log.error("insert refused", reply=reply.text[:40], error=str(exc))
            return False
        except ProviderError as exc:
            metrics.replies.labels("lost").inc()
            self._log.error("insert outcome unknown; not repeated", reply=reply.text[:40], error=str(exc))
            return False
        command_id = answer.command_id or ""
        now_ms = clock.time_ms()
        in_flight = bool(command_id) and await service.queue.record_sent(
            self.room_id, command_id, reply, now_ms
        )
        self.last_activity = clock.monotonic()
        metrics.replies.labels("inserted").inc()
        await service.record(
            self.room_id,
            kind="reply_inserted",
            job_id=self.job_id,
            reply_id=command_id,
            priority=reply.priority,
            play_type=reply.play_type or "",
            rule_index=reply.rule_index or "",
            text=reply.text,
        )
        return in_flight

    async def _clean_up(self, victims: list[str]) -> set[str]:
        answer = await self.service.client().command(
            self.room_id,
            self.job_id,
            Command.clean_up_insert_command(CleanUpInsertCommand(command_ids=victims[:100])),
        )
        try:
            result = answer.result_json()
            cleaned = (
                set(result.get("cleaned_command_ids", victims)) if isinstance(result, dict) else set(victims)
            )
        except ValueError:
            cleaned = set(victims)
        cleaned &= set(victims)
        await self.service.queue.forget(self.room_id, sorted(cleaned))
        self.service.metrics.replies.labels("cleaned_up").inc(len(cleaned))
        self._log.info("cleared unplayed inserts for an operator reply", cleaned=sorted(cleaned))
        return cleaned
