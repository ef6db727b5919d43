"""MetaStudio as a provider: its client behind the core's protocols (:mod:`orchestrator.providers.base`).

* live jobs -- start with the room's :class:`~.template.StartTemplate` and its callback profile's config
  (the URL bound to the room), stop, show, list (the tenant-wide listing, paged), repair an output with
  ``REFRESH_OUTPUT_URL``; no keepalive (a job lives until stopped);
* the audience channel -- the live-event report (batches as the ingest streams keep them), replies as
  ``INSERT_PLAY_SCRIPT`` (tracked: ``REPLY_COMMAND_FINISH`` reports each one's end), withdrawn with
  ``CLEAN_UP_INSERT_COMMAND``;
* the callback codec -- the three documented callbacks into domain events.

The client is built on first use from ``settings.metastudio``: until its credentials are complete, every
call raises ProviderConfigError (the daemon runs, and says so, without them).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cached_property
from typing import Any

from orchestrator.domain import (
    JobStatus,
    LinkChanged,
    LinkState,
    ParagraphChanged,
    ReplyFinished,
    RoomEvent,
    Unrecognised,
)
from orchestrator.providers.base import Decoded, JobRef, Notify, ReplyOrder, RoomSpec, Said
from orchestrator.providers.metastudio.callbacks import (
    KNOWN_EVENT_TYPES,
    json_object,
    parse_callback,
    plain_message,
)
from orchestrator.providers.metastudio.client import MetaStudioClient
from orchestrator.providers.metastudio.models import (
    MAX_INSERT_TEXT_CHARS,
    CleanUpInsertCommand,
    Command,
    JobState,
    PlayTextInfo,
    RefreshOutputUrlConfig,
    SmartLiveJob,
    TextConfig,
)
from orchestrator.providers.metastudio.profiles import live_event_callback_config, resolve_profile
from orchestrator.providers.metastudio.template import StartTemplate
from orchestrator.settings import Settings

NAME = "metastudio"
#: Jobs per page of the tenant-wide listing, and the pages read at most (5,000 active jobs).
LIST_PAGE = 100
MAX_LIST_PAGES = 50
_ACTIVE = [JobState.WAITING, JobState.PROCESSING]
_KINDS = {
    "SHOOT_SCRIPT_SWITCH": "paragraph",
    "RTMP_STREAM_STATE_CHANGE": "link",
    "REPLY_COMMAND_FINISH": "reply_finished",
}


def job_ref(job: SmartLiveJob) -> JobRef:
    return JobRef(
        job.job_id,
        JobStatus(job.state.value),
        room_id=job.room_id,
        report_url=job.live_event_report_url,
        created=job.create_time or "",
    )


class MetaStudioJobs:
    """:class:`~orchestrator.providers.base.LiveJobs` of MetaStudio."""

    keepalive_interval_s: float | None = None

    def __init__(self, client: Callable[[], MetaStudioClient], settings: Settings) -> None:
        self._client = client
        self._settings = settings

    async def start(self, room: RoomSpec) -> JobRef:
        """Raises UnknownProfile (a ProviderConfigError), ProviderError."""
        assert isinstance(room.template, StartTemplate)
        profile = resolve_profile(self._settings, room.callback_profile)
        request = room.template.to_request(live_event_callback_config(profile, room.room_id))
        started = await self._client().start_job(room.room_id, request)
        return JobRef(
            started.job_id, JobStatus.WAITING, room_id=room.room_id, report_url=started.live_event_report_url
        )

    async def stop(self, room_id: str, job_id: str) -> None:
        await self._client().stop_job(room_id, job_id)

    async def status(self, room_id: str, job_id: str) -> JobRef:
        return job_ref(await self._client().show_job(room_id, job_id))

    async def list_active(self, room_ids: Sequence[str]) -> dict[str, list[JobRef]]:
        """One room: its own listing; several: the tenant-wide listing (004 §6.2.6), paged."""
        client = self._client()
        found: dict[str, list[JobRef]] = {room_id: [] for room_id in room_ids}
        if len(room_ids) == 1:
            listing = await client.list_room_jobs(room_ids[0], states=_ACTIVE, limit=LIST_PAGE)
            found[room_ids[0]] = [job_ref(j) for j in listing.smart_live_jobs if j.state.active]
            return found
        for page in range(MAX_LIST_PAGES):
            listing = await client.list_jobs(states=_ACTIVE, offset=page * LIST_PAGE, limit=LIST_PAGE)
            for job in listing.smart_live_jobs:
                if job.room_id in found and job.state.active:
                    found[job.room_id].append(job_ref(job))
            if len(listing.smart_live_jobs) < LIST_PAGE:
                break
        return found

    async def repair(self, room: RoomSpec, job_id: str, output: str) -> None:
        """REFRESH_OUTPUT_URL with the room's outputs and stream keys (the job pushes again)."""
        assert isinstance(room.template, StartTemplate)
        template = room.template
        config = RefreshOutputUrlConfig(
            output_urls=template.output_urls,
            stream_keys=[k.get_secret_value() for k in template.stream_keys] or None,
        )
        await self._client().command(room.room_id, job_id, Command.refresh_output_url(config))

    async def keepalive(self, room_id: str, job_id: str) -> None:
        """MetaStudio keeps a job until it is stopped: nothing to do."""


class MetaStudioAudience:
    """:class:`~orchestrator.providers.base.AudienceChannel` of MetaStudio."""

    takes_reports = True
    max_reply_chars = MAX_INSERT_TEXT_CHARS
    reports_finishes = True  # REPLY_COMMAND_FINISH

    def __init__(self, client: Callable[[], MetaStudioClient]) -> None:
        self._client = client

    async def report(self, report_url: str, events: Sequence[bytes], batch_id: str) -> str | None:
        return await self._client().report_batch(report_url, list(events), batch_id)

    async def current_report_url(self, room_id: str, job_id: str) -> str | None:
        return (await self._client().show_job(room_id, job_id)).live_event_report_url

    async def say(self, room_id: str, job_id: str, reply: ReplyOrder) -> Said:
        """INSERT_PLAY_SCRIPT; tracked by its ``command_id`` (REPLY_COMMAND_FINISH names it)."""
        info = PlayTextInfo(
            text_config=TextConfig(text=reply.text),
            play_type=reply.mode.value if reply.mode is not None else None,
            rule_index=reply.rule_index,
        )
        answer = await self._client().command(room_id, job_id, Command.insert_play_script(info))
        command_id = answer.command_id or ""
        return Said(command_id, tracked=bool(command_id))

    async def withdraw(self, room_id: str, job_id: str, reply_ids: Sequence[str] | None) -> set[str]:
        """CLEAN_UP_INSERT_COMMAND (at most 100 ids a call; none: every unplayed insert). An insert already
        playing cannot be cleaned up and finishes; the answer's ``cleaned_command_ids``, where given, says
        which were."""
        ids = list(reply_ids or [])[:100]
        params = CleanUpInsertCommand(command_ids=ids or None)
        answer = await self._client().command(room_id, job_id, Command.clean_up_insert_command(params))
        try:
            result = answer.result_json()
        except ValueError:
            result = None
        cleaned = result.get("cleaned_command_ids", ids) if isinstance(result, dict) else ids
        return {str(c) for c in cleaned} & set(ids) if ids else {str(c) for c in cleaned}

    async def finished(self, room_id: str, job_id: str, in_flight: Sequence[str]) -> set[str]:
        """Never asked: REPLY_COMMAND_FINISH reports each end."""
        return set()

    def recheck_s(self, job_id: str) -> float:
        """A finish comes by callback, and reaches the owner's pacer as a reaction over pub/sub, which a
        reconnection can lose: look again every second."""
        return 1.0

    async def watch(self, room_id: str, job_id: str, notify: Notify) -> None:
        """Nothing to follow: REPLY_COMMAND_FINISH callbacks report every end."""
        return None

    async def answerer(self, room_id: str, job_id: str) -> None:
        """MetaStudio's own brain is its rules and its LLM callback (``/llm/metastudio``), not an API the
        daemon asks: the daemon's chat backend answers, if configured."""
        return None


class MetaStudioCodec:
    """:class:`~orchestrator.providers.base.CallbackCodec` of MetaStudio's live-event callbacks."""

    def decode(self, body: bytes) -> Decoded:
        """Raises CallbackMalformed."""
        return decode_plain(body) or decode_by_models(body)

    def kind_of(self, vendor_type: str) -> str:
        return _KINDS.get(vendor_type, "other")


def decode_plain(body: bytes) -> Decoded | None:
    """A plain paragraph switch or reply finish decoded without the models (``plain_message``); None for
    anything else."""
    envelope = json_object(body)
    if envelope is None:
        return None
    event_type = envelope.get("event_type")
    if type(event_type) is not str:
        return None
    stored = plain_message(event_type, envelope.get("message"))
    if stored is None:
        return None
    return Decoded(
        stored["room_id"], stored["job_id"], event_type, event_type, _event(event_type, stored), stored
    )


def decode_by_models(body: bytes) -> Decoded:
    """Any callback, validated by its model. Raises CallbackMalformed."""
    parsed = parse_callback(body)
    stored = parsed.stored_message()
    counter = parsed.event_type if parsed.event_type in KNOWN_EVENT_TYPES else "other"
    return Decoded(
        parsed.room_id, parsed.job_id, parsed.event_type, counter, _event(parsed.event_type, stored), stored
    )


def _event(event_type: str, stored: dict[str, Any]) -> RoomEvent:
    """What a valid message (as stored: absent fields left out) says happened."""
    if event_type == "SHOOT_SCRIPT_SWITCH":
        seq = stored.get("shoot_script_sequence_no")
        return ParagraphChanged(
            stored.get("scene_script_name", ""),
            "" if seq is None else str(seq),
            stored.get("shoot_script_title", ""),
            stored.get("product_id", ""),
            stored.get("product_title", ""),
        )
    if event_type == "RTMP_STREAM_STATE_CHANGE":
        return LinkChanged(stored["output_url"], LinkState(stored["state"]))
    if event_type == "REPLY_COMMAND_FINISH":
        return ReplyFinished(stored["reply_id"])
    return Unrecognised()


class MetaStudio:
    """The MetaStudio provider: one client for the process (its per-project concurrency limit is shared by
    every caller), built on first use."""

    name = NAME

    def __init__(self, client: Callable[[], MetaStudioClient], settings: Settings) -> None:
        self.client = client
        self._settings = settings

    @cached_property
    def jobs(self) -> MetaStudioJobs:
        return MetaStudioJobs(self.client, self._settings)

    @cached_property
    def audience(self) -> MetaStudioAudience:
        return MetaStudioAudience(self.client)

    @cached_property
    def codec(self) -> MetaStudioCodec:
        return MetaStudioCodec()
