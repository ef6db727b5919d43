"""The MetaStudio sandbox's world: rooms, live jobs that play, and the callbacks they send.

A job lives WAITING → PROCESSING → SUCCEED (rounds done, per ``play_policy.repeat_count``: -1 forever,
0 once, n → n+1 rounds), FAILED or BLOCKED (fault controls), or SUCCEED when stopped. While PROCESSING it
plays the room's scene scripts paragraph by paragraph (each ``len(text) / CHARS_PER_S`` simulated
seconds, SHOOT_SCRIPT_SWITCH at each start), brings each output's RTMP link up (CONNECTING → CONNECTED),
and plays inserted scripts: APPEND between paragraphs, INSERT and PLAY_NOW by interrupting the paragraph,
each followed by REPLY_COMMAND_FINISH whose ``reply_id`` is the insert's ``command_id``.

Callbacks go to the job's ``live_event_callback_config`` URL, only for the subscribed event types, signed
per ``auth_type``, ``message`` a JSON string with numbers as strings -- one sender per sandbox, in order,
unless the fault controls delay, duplicate or reorder them.

Sandbox decisions where the documents are silent: stopping a finished job succeeds; the CALLBACK reply
mode POSTs ``{"room_id", "job_id", "rule_index", "event"}`` to ``interaction_callback_url``. (One job per
room at a time is the app's rule -- MSS.20010036 -- not the world's: a test may still build two.)
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import structlog

from orchestrator import clock
from orchestrator.providers.metastudio.callbacks import mss_a_head_headers, mss_a_url
from orchestrator.providers.metastudio.models import (
    CallbackEventType,
    InteractionRule,
    JobState,
    SceneScript,
    ShootScriptItem,
    SmartLiveRoom,
    StartJobRequest,
)
from orchestrator.providers.metastudio.rules import best_rule, parse_content, suppressed
from orchestrator.sandbox.clock import SimClock

log = structlog.get_logger(__name__)

CHARS_PER_S = 4.0  # about 250 characters a minute, a TTS voice's pace
MIN_PLAY_S = 1.0
WAITING_S = 2.0  # WAITING → PROCESSING
CONNECT_S = 1.0  # RTMP CONNECTING → CONNECTED
AUDIO_PLAY_S = 5.0
ALL_CALLBACK_EVENTS: tuple[CallbackEventType, ...] = (
    "SHOOT_SCRIPT_SWITCH",
    "RTMP_STREAM_STATE_CHANGE",
    "REPLY_COMMAND_FINISH",
)


def play_seconds(text: str) -> float:
    return max(MIN_PLAY_S, len(text) / CHARS_PER_S)


def new_id() -> str:
    return uuid.uuid4().hex


@dataclass
class Insert:
    command_id: str
    text: str
    play_type: str
    rule_index: str | None = None
    audio: bool = False
    state: str = "PENDING"  # PENDING → PLAYING → FINISHED | CLEANED

    @property
    def seconds(self) -> float:
        return AUDIO_PLAY_S if self.audio else play_seconds(self.text)


@dataclass
class Job:
    job_id: str
    room_id: str
    room_name: str
    request: StartJobRequest
    scene_scripts: list[SceneScript]
    rules: list[InteractionRule]
    report_secret: bytes
    report_url: str = ""
    state: JobState = JobState.WAITING
    create_time: str = ""
    created: str = ""  # create_time with microseconds: list filters and sorting
    updated: str = ""  # the same for the last state change
    start_time: str | None = None
    end_time: str | None = None
    started_sim_s: float | None = None
    error_info: dict[str, str] | None = None
    block_reason: str | None = None
    rtmp: dict[str, str] = field(default_factory=dict)
    scene: str | None = None
    paragraph: int | None = None
    inserts: list[Insert] = field(default_factory=list)
    reported: list[dict[str, Any]] = field(default_factory=list)
    report_batches: dict[str, int] = field(default_factory=dict)  # X-Batch-Id → times received
    reported_batch: list[str | None] = field(default_factory=list)  # the X-Batch-Id each event came under
    fired: dict[str, float] = field(default_factory=dict)
    reply_cursor: dict[str, int] = field(default_factory=dict)
    layers: list[dict[str, Any]] = field(default_factory=list)
    rtmp_sticky: bool = False  # fault control: REFRESH_OUTPUT_URL does not bring the link back
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    @property
    def output_urls(self) -> list[str]:
        return list(self.request.output_urls or [])

    def pending(self, *play_types: str) -> list[Insert]:
        return [
            i for i in self.inserts if i.state == "PENDING" and (not play_types or i.play_type in play_types)
        ]


@dataclass
class CallbackFaults:
    delay_s: float = 0.0
    duplicate: bool = False
    reorder: bool = False
    drop: int = 0  # drop the next N callbacks entirely
    drop_types: list[str] | None = None  # ... of these event types only (none: of any type)


@dataclass
class Delivery:
    url: str
    event_type: str
    message: dict[str, Any]
    status: int | None = None
    error: str | None = None


class CallbackSender:
    """Delivers each job's callbacks one at a time, in order, with the configured faults; jobs do not wait
    for each other (a hundred live rooms are a hundred independent senders at the cloud, and one slow
    receiver answer must not hold every room's notices back). Keeps a delivery log."""

    def __init__(self, session: aiohttp.ClientSession, clock: SimClock) -> None:
        self._session = session
        self._clock = clock
        self._queues: dict[str, asyncio.Queue[tuple[Job, str, dict[str, Any]]]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.faults = CallbackFaults()
        self.log: list[Delivery] = []
        self._last_ms = 0
        self._running = False

    def start(self) -> None:
        self._running = True

    async def aclose(self) -> None:
        self._running = False
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    def emit(self, job: Job, event_type: str, message: dict[str, Any]) -> None:
        config = job.request.live_event_callback_config
        if config is None or not config.live_event_type_callback_url or not self._running:
            return
        subscribed = config.callback_event_type or list(ALL_CALLBACK_EVENTS)
        if event_type not in subscribed:
            return
        queue = self._queues.get(job.job_id)
        if queue is None:
            queue = self._queues[job.job_id] = asyncio.Queue()
            self._tasks[job.job_id] = asyncio.create_task(
                self._run(queue), name=f"sandbox-callbacks-{job.job_id}"
            )
        queue.put_nowait((job, event_type, message))

    async def drain(self) -> None:
        """Wait until every queued callback has been attempted."""
        for queue in list(self._queues.values()):
            await queue.join()

    async def _run(self, queue: asyncio.Queue[tuple[Job, str, dict[str, Any]]]) -> None:
        while True:
            batch = [await queue.get()]
            if self.faults.reorder:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.2):
                        batch.append(await queue.get())
                batch.reverse()
            for job, event_type, message in batch:
                try:
                    await self._deliver(job, event_type, message)
                finally:
                    queue.task_done()
            if queue.empty() and not job.state.active:  # an ended job's sender ends (a later notice: anew)
                self._queues.pop(job.job_id, None)
                self._tasks.pop(job.job_id, None)
                return

    async def _deliver(self, job: Job, event_type: str, message: dict[str, Any]) -> None:
        faults = self.faults
        if faults.drop > 0 and (faults.drop_types is None or event_type in faults.drop_types):
            faults.drop -= 1
            self.log.append(Delivery("", event_type, message, error="dropped by fault control"))
            return
        if self.faults.delay_s:
            await clock.sleep(self.faults.delay_s)
        for _ in range(2 if self.faults.duplicate else 1):
            await self._post(job, event_type, message)

    async def _post(self, job: Job, event_type: str, message: dict[str, Any]) -> None:
        config = job.request.live_event_callback_config
        if config is None or not config.live_event_type_callback_url:
            return
        url, headers = config.live_event_type_callback_url, {"Content-Type": "application/json"}
        # MSS_A signs URL + time only: two callbacks in one millisecond would share a signature, and the
        # receiver would take the second for a replay. A careful sender never reuses a millisecond.
        now_ms = self._last_ms = max(self._clock.epoch_ms(), self._last_ms + 1)
        if config.auth_type == "MSS_A":
            url = mss_a_url(url, config.key or "", now_ms)
        elif config.auth_type == "MSS_A_HEAD":
            headers.update(mss_a_head_headers(url, config.key or "", now_ms))
        body = {"event_type": event_type, "message": json.dumps(message, ensure_ascii=False)}
        delivery = Delivery(url, event_type, message)
        self.log.append(delivery)
        for attempt in range(3):
            try:
                async with self._session.post(
                    url, json=body, headers=headers, timeout=aiohttp.ClientTimeout(total=5)
                ) as resp:
                    delivery.status = resp.status
                    if resp.status < 500:
                        return
            except (aiohttp.ClientError, TimeoutError) as exc:
                delivery.error = f"{type(exc).__name__}: {exc}"
            await clock.sleep(0.1 * 2**attempt)


class World:
    """Every room and job of one sandbox project, and the tasks that play the jobs."""

    def __init__(self, clock: SimClock, sender: CallbackSender, session: aiohttp.ClientSession) -> None:
        self.clock = clock
        self.sender = sender
        self._session = session
        self.rooms: dict[str, SmartLiveRoom] = {}
        self.jobs: dict[str, Job] = {}
        self.gone: dict[str, Job] = {}  # vanished jobs
        self.interaction_posts: list[dict[str, Any]] = []
        #: Every job-state and link-state change, when a harness asks for them (set it to a list): (epoch
        #: seconds on the process's clock, room id, job id, "job" or the output URL, the new state; a
        #: vanished job's state is "GONE"). The soak measures availability from it.
        self.history: list[tuple[float, str, str, str, str]] | None = None

    # --- rooms and jobs ---

    def add_room(self, room: SmartLiveRoom) -> SmartLiveRoom:
        room_id = room.room_id or new_id()
        stored = room.model_copy(update={"room_id": room_id, "room_state": room.room_state or "ENABLE"})
        self.rooms[room_id] = stored
        return stored

    def start_job(self, room_id: str, request: StartJobRequest, report_url: Callable[[Job], str]) -> Job:
        room = self.rooms[room_id]
        job = Job(
            job_id=new_id(),
            room_id=room_id,
            room_name=room.room_name or room_id,
            request=request,
            scene_scripts=[s.model_copy(deep=True) for s in room.scene_scripts],
            rules=[r.model_copy(deep=True) for r in room.interaction_rules],
            report_secret=uuid.uuid4().bytes,
            create_time=_rfc3339(self.clock),
            created=_precise(self.clock),
        )
        job.updated = job.created
        job.report_url = report_url(job)
        self.jobs[job.job_id] = job
        self._note(job, "job", job.state.value)
        job.task = asyncio.create_task(self._run(job), name=f"sandbox-job-{job.job_id}")
        return job

    def stop_job(self, job: Job) -> None:
        if job.state.active:
            self._finish(job, JobState.SUCCEED)

    def vanish(self, job: Job) -> None:
        """The cloud no longer knows the job (expired, cleaned up): it stops and is gone from every API."""
        self.jobs.pop(job.job_id, None)
        self.gone[job.job_id] = job  # still on record for the harness (what was reported to it, played)
        self._note(job, "job", "GONE")
        if job.task is not None and job.task is not asyncio.current_task():
            job.task.cancel()

    async def aclose(self) -> None:
        tasks = [job.task for job in self.jobs.values() if job.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _note(self, job: Job, what: str, state: str) -> None:
        if self.history is not None:
            self.history.append((clock.time(), job.room_id, job.job_id, what, state))

    def _finish(self, job: Job, state: JobState, **fields: Any) -> None:
        job.state = state
        self._note(job, "job", state.value)
        job.end_time = _rfc3339(self.clock)
        job.updated = _precise(self.clock)
        for name, value in fields.items():
            setattr(job, name, value)
        for url in job.output_urls:
            self.set_rtmp(job, url, "END")
        if job.task is not None and job.task is not asyncio.current_task():
            job.task.cancel()

    # --- the job's life ---

    async def _run(self, job: Job) -> None:
        await self.clock.sleep(WAITING_S)
        job.state = JobState.PROCESSING
        self._note(job, "job", "PROCESSING")
        job.start_time = _rfc3339(self.clock)
        job.updated = _precise(self.clock)
        job.started_sim_s = self.clock.elapsed_s()
        for url in job.output_urls:
            self.set_rtmp(job, url, "CONNECTING")
        asyncio.get_running_loop().call_later(self.clock.real_s(CONNECT_S), self._connect_all, job)
        policy = job.request.play_policy
        repeat = policy.repeat_count if policy and policy.repeat_count is not None else 0
        round_no = 0
        while repeat == -1 or round_no <= repeat:
            played = await self._play_round(job)
            round_no += 1
            if not played:  # no preset script: serve inserts until stopped
                await self._serve_inserts_forever(job)
        await self._play_inserts(job, job.pending())
        self._finish(job, JobState.SUCCEED)

    def _connect_all(self, job: Job) -> None:
        for url, state in list(job.rtmp.items()):
            if job.state is JobState.PROCESSING and state == "CONNECTING":
                self.set_rtmp(job, url, "CONNECTED")

    async def _play_round(self, job: Job) -> bool:
        scene_i = para_i = 0
        played = False
        while scene_i < len(job.scene_scripts):  # re-read each step: REWRITE_PLAY_SCRIPT may change it
            scene = job.scene_scripts[scene_i]
            if para_i >= len(scene.shoot_scripts):
                scene_i, para_i = scene_i + 1, 0
                continue
            await self._play_inserts(job, job.pending("APPEND"))
            await self._play_paragraph(job, scene, scene.shoot_scripts[para_i])
            para_i += 1
            played = True
        return played

    async def _play_paragraph(self, job: Job, scene: SceneScript, item: ShootScriptItem) -> None:
        job.scene, job.paragraph = scene.script_name, item.sequence_no
        product = item.relation_product
        message = {
            "room_id": job.room_id,
            "job_id": job.job_id,
            "scene_script_name": scene.script_name,
            "shoot_script_sequence_no": str(item.sequence_no),
            "shoot_script_title": item.title or "",
        }
        if product is not None:
            message.update(product_id=product.product_id or "", product_title=product.product_title or "")
        self.sender.emit(job, "SHOOT_SCRIPT_SWITCH", message)
        remaining = play_seconds(item.text_config.text if item.text_config else "")
        while remaining > 0:
            job.wake.clear()
            started = self.clock.elapsed_s()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.clock.real_s(remaining)):
                    await job.wake.wait()
            remaining -= self.clock.elapsed_s() - started
            await self._play_inserts(job, job.pending("PLAY_NOW", "INSERT"))

    async def _serve_inserts_forever(self, job: Job) -> None:
        while True:
            job.wake.clear()
            await self._play_inserts(job, job.pending())
            await job.wake.wait()

    async def _play_inserts(self, job: Job, inserts: list[Insert]) -> None:
        for insert in inserts:
            if insert.state != "PENDING":  # cleaned up meanwhile
                continue
            insert.state = "PLAYING"
            await self.clock.sleep(insert.seconds)
            insert.state = "FINISHED"
            self.sender.emit(
                job,
                "REPLY_COMMAND_FINISH",
                {"room_id": job.room_id, "job_id": job.job_id, "reply_id": insert.command_id},
            )

    # --- what commands and faults do ---

    def add_insert(self, job: Job, insert: Insert) -> None:
        job.inserts.append(insert)
        job.wake.set()

    def clean_up_inserts(self, job: Job, command_ids: list[str] | None) -> list[str]:
        cleaned = []
        for insert in job.inserts:
            if insert.state == "PENDING" and (not command_ids or insert.command_id in command_ids):
                insert.state = "CLEANED"
                cleaned.append(insert.command_id)
        return cleaned

    def set_rtmp(self, job: Job, url: str, state: str) -> None:
        job.rtmp[url] = state
        self._note(job, url, state)
        keys = job.request.stream_keys or []
        index = job.output_urls.index(url) if url in job.output_urls else -1
        self.sender.emit(
            job,
            "RTMP_STREAM_STATE_CHANGE",
            {
                "room_id": job.room_id,
                "job_id": job.job_id,
                "output_url": url,
                "stream_key": keys[index] if 0 <= index < len(keys) else "",
                "state": state,
            },
        )

    def refresh_output(self, job: Job, urls: list[str], keys: list[str] | None) -> None:
        job.request = job.request.model_copy(update={"output_urls": urls, "stream_keys": keys})
        if job.rtmp_sticky:
            return
        job.rtmp = {}
        for url in urls:
            self.set_rtmp(job, url, "CONNECTING")
        asyncio.get_running_loop().call_later(self.clock.real_s(CONNECT_S), self._connect_all, job)

    def fail(self, job: Job, code: str, msg: str) -> None:
        self._finish(job, JobState.FAILED, error_info={"error_code": code, "error_msg": msg})

    def block(self, job: Job, reason: str) -> None:
        self._finish(job, JobState.BLOCKED, block_reason=reason)

    # --- reported events and interaction rules ---

    def report_auth_key(self, job: Job, expires_ms: int) -> str:
        message = f"{job.room_id}/{job.job_id}/{expires_ms}".encode()
        return hmac.new(job.report_secret, message, hashlib.sha256).hexdigest()

    async def receive_events(
        self, job: Job, events: list[dict[str, Any]], batch_id: str | None = None
    ) -> None:
        job.reported.extend(events)
        job.reported_batch.extend([batch_id] * len(events))
        if not job.rules:
            return
        contents = [(event.get("type"), parse_content(event.get("content"))) for event in events]
        by_type: dict[Any, list[dict[str, Any]]] = {}
        for event_type, content in contents:  # the batch of each type, once (not once per event)
            by_type.setdefault(event_type, []).append(content)
        for event, (event_type, content) in zip(events, contents, strict=True):
            if isinstance(event_type, int):
                await self._apply_rules(job, event, event_type, content, by_type[event_type])

    async def _apply_rules(
        self,
        job: Job,
        event: dict[str, Any],
        event_type: int,
        content: dict[str, Any],
        batch: list[dict[str, Any]],
    ) -> None:
        rule = best_rule(job.rules, event_type, content, scene=job.scene, batch=batch)
        if rule is None:
            return
        key = rule.rule_index or rule.rule_name or str(id(rule))
        now = self.clock.elapsed_s()
        if suppressed(rule.trigger.time_window, job.fired.get(key), now):
            return
        job.fired[key] = now
        mode = rule.trigger.reply_mode or "SYSTEM_REPLY"
        if mode == "CALLBACK" and job.request.interaction_callback_url:
            await self._post_interaction(job, rule, event)
        elif mode == "SHOW_LAYER":
            job.layers.append(rule.trigger.layer_config or {})
        elif rule.trigger.reply_texts:
            self.add_insert(
                job,
                Insert(
                    new_id(),
                    self._reply_text(job, key, rule),
                    rule.trigger.play_type or "PLAY_NOW",
                    rule.rule_index,
                ),
            )

    def _reply_text(self, job: Job, key: str, rule: InteractionRule) -> str:
        texts = rule.trigger.reply_texts or [""]
        if rule.trigger.reply_order == "RANDOM":
            return random.choice(texts)  # noqa: S311
        cursor = job.reply_cursor.get(key, 0)
        job.reply_cursor[key] = cursor + 1
        return texts[cursor % len(texts)]

    async def _post_interaction(self, job: Job, rule: InteractionRule, event: dict[str, Any]) -> None:
        body = {"room_id": job.room_id, "job_id": job.job_id, "rule_index": rule.rule_index, "event": event}
        record: dict[str, Any] = {"body": body}
        self.interaction_posts.append(record)
        try:
            async with self._session.post(
                job.request.interaction_callback_url or "",
                json=body,
                timeout=aiohttp.ClientTimeout(total=5),
            ) as resp:
                record["status"] = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            record["error"] = str(exc)


def _rfc3339(clock: SimClock) -> str:
    return clock.wall().strftime("%Y-%m-%dT%H:%M:%SZ")


def _precise(clock: SimClock) -> str:
    return clock.wall().strftime("%Y-%m-%dT%H:%M:%S.%fZ")
