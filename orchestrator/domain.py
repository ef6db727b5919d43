"""The daemon's own vocabulary: what a live job, an output link, an audience event and a reply *are*, whatever
the vendor.

The core -- scheduling, callbacks, interaction, store, web, metrics -- speaks only these; each provider
(:mod:`orchestrator.providers`) translates its vendor's words into them, before anything reaches Redis:

* :class:`JobStatus` -- a live job's life. MetaStudio's job states are these words; SoftSugar's numeric
  session statuses map onto them (its provider says how).
* :class:`LinkState` -- one output link (RTMP/RTC) of a live job.
* :class:`AudienceKind` -- what a viewer did. The numbers are the daemon's own event types (the ingest
  API and the ingest streams carry them); that MetaStudio's live-event report uses the same numbers is
  its provider's convenience, not the core's assumption.
* :data:`Priority` and :class:`PlayMode` -- how much a reply matters, and how it enters what the avatar
  is saying.
* :data:`RoomEvent` -- what a vendor's callback says happened in a room, decoded by the provider's
  callback codec: :class:`JobStateChanged`, :class:`LinkChanged`, :class:`ParagraphChanged`,
  :class:`ReplyStarted`, :class:`ReplyFinished`, :class:`ReplyFailed`, :class:`Unrecognised`. Each has a
  ``kind``, the word the store's callback script branches on.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Literal


class JobStatus(StrEnum):
    """A live job's life: waiting to go live, live, or over (and how)."""

    WAITING = "WAITING"  # created or starting; not yet pushing
    PROCESSING = "PROCESSING"  # live
    SUCCEED = "SUCCEED"  # ended as asked (stopped, or its script played out)
    FAILED = "FAILED"  # ended by a failure
    BLOCKED = "BLOCKED"  # ended by the vendor's content review: a human must look
    CANCELED = "CANCELED"  # ended before it went live

    @property
    def active(self) -> bool:
        """Waiting or live: the room has this job, and it costs money."""
        return self in _ACTIVE

    @property
    def terminal(self) -> bool:
        """Over: it never comes back; the room needs another job to be live."""
        return not self.active


_ACTIVE = frozenset({JobStatus.WAITING, JobStatus.PROCESSING})
ACTIVE_STATUSES = frozenset(s.value for s in _ACTIVE)
TERMINAL_STATUSES = frozenset(s.value for s in JobStatus if s.terminal)


class LinkState(StrEnum):
    """One output link of a live job. ``END``: the vendor will not reconnect it by itself."""

    CONNECTING = "CONNECTING"
    CONNECTED = "CONNECTED"
    DISCONNECTED = "DISCONNECTED"
    RECONNECTING = "RECONNECTING"
    END = "END"

    @property
    def down(self) -> bool:
        """Not pushing, but the vendor is trying (a grace applies before a repair)."""
        return self in (LinkState.DISCONNECTED, LinkState.RECONNECTING)


DOWN_LINK_STATES = frozenset(s.value for s in LinkState if s.down)


class AudienceKind(IntEnum):
    """What a viewer did; the numbers are the daemon's event types (ingest API, ingest streams)."""

    COMMENT = 1
    JOIN = 2
    LIKE = 3
    GIFT = 4
    FOLLOW = 5
    VIEWERS = 6  # a viewer count, not a viewer

    @property
    def label(self) -> str:
        """The name operators see (metrics, the event record): ``comment``, ``viewers``, ..."""
        return _LABELS[self]

    @property
    def may_need_reply(self) -> bool:
        """Comments and gifts can be answered; the others are acknowledged in bulk or counted."""
        return self in (AudienceKind.COMMENT, AudienceKind.GIFT)


_LABELS = {
    AudienceKind.COMMENT: "comment",
    AudienceKind.JOIN: "join",
    AudienceKind.LIKE: "like",
    AudienceKind.GIFT: "gift",
    AudienceKind.FOLLOW: "follow",
    AudienceKind.VIEWERS: "viewers",
}

#: How much a reply matters, most first: an operator's words, thanks for a gift, an answer, a welcome or
#: thanks for a like or follow, a filler line (timed and idle lines).
Priority = Literal["operator", "gift", "question", "reaction", "idle"]
PRIORITIES: tuple[Priority, ...] = ("operator", "gift", "question", "reaction", "idle")


class PlayMode(StrEnum):
    """How a reply enters what the avatar says: after the current script (``APPEND``), after the current
    sentence (``INSERT``), or at once, cutting in (``PLAY_NOW``)."""

    APPEND = "APPEND"
    INSERT = "INSERT"
    PLAY_NOW = "PLAY_NOW"


class AnswerUnavailable(Exception):
    """An answer backend (a chat model, a vendor's Q&A database) gave no usable answer in time: the desk
    answers from the policy's FAQ instead."""


# --- what a callback says happened ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JobStateChanged:
    """The vendor says the job is now ``status`` (a hint: destructive transitions are confirmed with the
    vendor's API before the daemon acts on them)."""

    status: JobStatus
    kind: Literal["job_state"] = "job_state"


@dataclass(frozen=True, slots=True)
class LinkChanged:
    output: str  # the output's address as the room's template names it
    state: LinkState
    kind: Literal["link"] = "link"


@dataclass(frozen=True, slots=True)
class ParagraphChanged:
    """The avatar moved to another part of its script -- and perhaps another product."""

    scene: str = ""
    sequence: str = ""
    title: str = ""
    product_id: str = ""
    product_title: str = ""
    kind: Literal["paragraph"] = "paragraph"


@dataclass(frozen=True, slots=True)
class ReplyStarted:
    reply_id: str
    kind: Literal["reply_started"] = "reply_started"


@dataclass(frozen=True, slots=True)
class ReplyFinished:
    reply_id: str
    kind: Literal["reply_finished"] = "reply_finished"


@dataclass(frozen=True, slots=True)
class ReplyFailed:
    reply_id: str
    reason: str = ""
    kind: Literal["reply_failed"] = "reply_failed"


@dataclass(frozen=True, slots=True)
class Unrecognised:
    """A callback of a type the provider does not know: recorded, acknowledged, not acted on."""

    kind: Literal["other"] = "other"


RoomEvent = (
    JobStateChanged
    | LinkChanged
    | ParagraphChanged
    | ReplyStarted
    | ReplyFinished
    | ReplyFailed
    | Unrecognised
)
