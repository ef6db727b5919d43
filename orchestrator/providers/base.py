"""What the core needs from a vendor: small protocols, in the style of httpx's transport interface.

A provider is the package that drives one vendor (``providers/metastudio``, ``providers/softsugar``); it
offers three faces, each a :class:`typing.Protocol` the core calls and never looks behind:

* :class:`LiveJobs` -- a room's live job: start it (with the room's template and our callback target),
  stop it, read its status, list the active ones, repair a broken output, keep it alive (a heartbeat
  where the vendor wants one; nothing for MetaStudio).
* :class:`AudienceChannel` -- the room's audience, vendor side: report audience events (where the vendor
  takes them: MetaStudio), say a reply and learn whether its finish will be reported, withdraw replies
  not yet played.
* :class:`CallbackCodec` -- a vendor callback's body, decoded into :data:`orchestrator.domain.RoomEvent`
  values (verification is the vendor's route's, before the body is read; see ``web/`` of each provider).

:class:`Provider` bundles them with the provider's name; :mod:`orchestrator.providers.registry` finds the
one a room names (``ManagedRoom.provider``). Every call raises from the one error tree of
:mod:`orchestrator.providers.errors`; a provider translates its client's failures into it.

Types the protocols pass are here too: :class:`JobRef` (a job as the core knows it), :class:`RoomSpec`
(what a provider reads of a managed room), :class:`ReplyOrder` / :class:`Said` (a reply going out and
what became of it), and :class:`RoomTemplate`, the base of each provider's room template model.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, SecretStr
from pydantic_core import to_jsonable_python

from orchestrator.domain import JobStatus, PlayMode, RoomEvent


class RoomTemplate(BaseModel):
    """Everything a provider needs to start a room's live job, but the callback target (which the daemon
    adds). Each provider subclasses it; a room's ``template`` is validated as its provider's.

    Secret fields are ``SecretStr``: :meth:`secrets` names their values (logs are scrubbed of them) and
    :meth:`stored` writes them in clear for Redis only."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Where each output link goes, in the template's own words (RTMP URLs for MetaStudio).
    def outputs(self) -> list[str]:
        return []

    def secrets(self) -> set[str]:
        return {v.get_secret_value() for v in _secret_values(self) if v.get_secret_value()}

    def stored(self) -> dict[str, Any]:
        """As JSON for Redis: secrets in clear."""
        revealed: dict[str, Any] = to_jsonable_python(_reveal(self.model_dump(mode="python")))
        return revealed


def _secret_values(value: Any) -> list[SecretStr]:
    if isinstance(value, SecretStr):
        return [value]
    if isinstance(value, BaseModel):
        return [s for name in type(value).model_fields for s in _secret_values(getattr(value, name))]
    if isinstance(value, list | tuple):
        return [s for item in value for s in _secret_values(item)]
    if isinstance(value, dict):
        return [s for item in value.values() for s in _secret_values(item)]
    return []


def _reveal(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, dict):
        return {k: _reveal(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_reveal(v) for v in value]
    return value


class RoomSpec(Protocol):
    """What a provider reads of a managed room (``scheduling.rooms.ManagedRoom`` is one)."""

    @property
    def room_id(self) -> str: ...

    @property
    def provider(self) -> str: ...

    @property
    def callback_profile(self) -> str: ...

    @property
    def template(self) -> RoomTemplate: ...


@dataclass(frozen=True)
class JobRef:
    """A live job as the core knows it: its id at the vendor, its status, where its audience events go
    (MetaStudio's ``live_event_report_url``; None where the vendor takes none), when it was created."""

    job_id: str
    status: JobStatus
    room_id: str | None = None
    report_url: str | None = None
    created: str = ""  # sortable (ISO time, or zero-padded epoch): the newest of several wins


@dataclass(frozen=True)
class ReplyOrder:
    """A reply going out to the avatar."""

    text: str
    mode: PlayMode | None = None  # None: the vendor's default
    rule_index: str | None = None  # the vendor rule it answers, where it has one
    operator: bool = False  # an operator's words: ahead of everything the vendor has queued


@dataclass(frozen=True)
class Said:
    """What became of a reply: the vendor's id for it, and whether its finish will be reported (a
    callback, or a queue the daemon can poll); an untracked reply is done once sent."""

    reply_id: str
    tracked: bool


@runtime_checkable
class LiveJobs(Protocol):
    """A vendor's live jobs. Every method raises a ``ProviderError``."""

    async def start(self, room: RoomSpec) -> JobRef:
        """Start the room's job with its template and the daemon's callback target; adopt the job the
        vendor already runs for it (a second start refused as a conflict) instead of paying for two.
        Raises UnknownCallbackTarget (a ProviderConfigError) when the room names none that exists."""
        ...

    async def stop(self, room_id: str, job_id: str) -> None: ...

    async def status(self, room_id: str, job_id: str) -> JobRef:
        """The job now. Raises ProviderNotFound when the vendor says it does not exist or has expired."""
        ...

    async def list_active(self, room_ids: Sequence[str]) -> dict[str, list[JobRef]]:
        """Active jobs of these rooms, by room (one tenant-wide listing where the vendor has one)."""
        ...

    async def repair(self, room: RoomSpec, job_id: str, output: str) -> None:
        """Ask the vendor to reconnect an output link that went down (MetaStudio: REFRESH_OUTPUT_URL)."""
        ...

    async def keepalive(self, room_id: str, job_id: str) -> None:
        """What the vendor needs to keep a live job alive (SoftSugar: a heartbeat); MetaStudio: nothing."""
        ...

    #: Seconds between keepalives the vendor needs; None when it needs none.
    keepalive_interval_s: float | None


#: Where a provider passes what its push channel says happened to a room's replies.
Notify = Callable[[RoomEvent], Awaitable[None]]
#: Told of each vendor call: (provider, operation, code, seconds) -- see ``ProviderDeps.observe``.
CallObserver = Callable[[str, str, str, float], None]


class Answerer(Protocol):
    """Something that answers an audience question in words the avatar can say (a chat model; a vendor's
    Q&A database)."""

    async def answer(self, question: str, *, user: str = "", product: str = "") -> str:
        """Raises AnswerUnavailable (the desk then answers from the FAQ)."""
        ...


@runtime_checkable
class AudienceChannel(Protocol):
    """The room's audience, vendor side. Every method raises a ``ProviderError``."""

    #: Whether the vendor takes audience event reports (its rules fire on them): MetaStudio yes.
    takes_reports: bool
    #: The longest reply text the vendor takes.
    max_reply_chars: int
    #: Whether a tracked reply's end is reported by callback; if not, :meth:`finished` is polled.
    reports_finishes: bool

    async def report(self, report_url: str, events: Sequence[bytes], batch_id: str) -> str | None:
        """Report events (each the wire JSON of one, as the ingest stream keeps it); the refreshed
        report URL if the vendor handed one out."""
        ...

    async def current_report_url(self, room_id: str, job_id: str) -> str | None:
        """The job's report URL as the vendor shows it now."""
        ...

    async def say(self, room_id: str, job_id: str, reply: ReplyOrder) -> Said: ...

    async def withdraw(self, room_id: str, job_id: str, reply_ids: Sequence[str] | None) -> set[str]:
        """Withdraw replies not yet played (None: all of them); the ids withdrawn."""
        ...

    async def finished(self, room_id: str, job_id: str, in_flight: Sequence[str]) -> set[str]:
        """Of the replies in flight, those the vendor has done with (asked when it reports no finishes)."""
        ...

    def recheck_s(self, job_id: str) -> float:
        """How long a pacer with replies in flight may go without looking at them again (real seconds):
        their ends are pushed (a callback's reaction, a followed socket's notice) and wake it at once, so
        this bounds only how late a lost notice is made up for. In the daemon's clock's seconds."""
        ...

    async def watch(self, room_id: str, job_id: str, notify: Notify) -> None:
        """Follow the job's reply notices over the vendor's push channel, passing each to ``notify``,
        until cancelled or the job ends (SoftSugar without callbacks: the session's WebSocket). Run by the
        room's owner when :attr:`reports_finishes` is false; returns at once where there is none."""
        ...

    async def answerer(self, room_id: str, job_id: str) -> Answerer | None:
        """The vendor's own answer backend for this job's audience questions, if the room has one
        (SoftSugar: the room's Q&A database); None: the daemon's chat backend, if any, answers."""
        ...


class Decoded(NamedTuple):
    """A callback body, decoded (a named tuple: one is made per callback, cheaply): the room and job it
    names, the vendor's own name for its type (kept in the room's record), the counter it adds to (the
    vendor type, or ``other`` -- bounded whatever the sender writes), what it says happened, and the
    message as the record keeps it (secrets removed)."""

    room_id: str
    job_id: str
    vendor_type: str
    counter: str
    event: RoomEvent
    message: dict[str, Any]


class CallbackCodec(Protocol):
    def decode(self, body: bytes) -> Decoded:
        """Raises CallbackMalformed (400) for a body that is not the vendor's callback."""
        ...

    def kind_of(self, vendor_type: str) -> str:
        """The :data:`~orchestrator.domain.RoomEvent` kind of a callback type (``other``: unknown)."""
        ...


class Provider(Protocol):
    """One vendor, as the core sees it."""

    @property
    def name(self) -> str: ...

    @property
    def jobs(self) -> LiveJobs: ...

    @property
    def audience(self) -> AudienceChannel: ...

    @property
    def codec(self) -> CallbackCodec: ...
