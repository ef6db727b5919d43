"""What a live room's audience work needs, and nothing more: a small room context.

The reporter and the pacer of a room (and the room's worker) are given this, not the whole audience
service: the room and its job, the settings, the metrics, whether this replica may still act on the room
(its lease), the store's handles, and the room provider's audience channel. So they depend on the store and
the provider boundary, never back on the service that made them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from orchestrator.interaction.skips import SkipLog
from orchestrator.metrics import Metrics
from orchestrator.providers.base import AudienceChannel
from orchestrator.settings import InteractionSettings
from orchestrator.store.events import RoomEvents
from orchestrator.store.ingest import IngestStreams
from orchestrator.store.leases import RoomLeases
from orchestrator.store.replies import ReplyQueue
from orchestrator.store.reviews import Reviews


@dataclass(frozen=True)
class RoomContext:
    room_id: str
    job_id: str
    settings: InteractionSettings
    metrics: Metrics
    leases: RoomLeases
    streams: IngestStreams
    replies: ReplyQueue
    events: RoomEvents
    channel: AudienceChannel
    log: Any  # structlog logger bound to room_id and job_id
    #: What keeps the room's job alive at the vendor (SoftSugar: a heartbeat), and how often; None: nothing.
    keepalive: Callable[[], Awaitable[None]] | None = None
    keepalive_interval_s: float | None = None
    #: Where the room's unanswered events are noted (None: counted nowhere -- tests of one part).
    skips: SkipLog | None = None
    #: Where automatic replies wait while the room is in review mode (None: never in review).
    reviews: Reviews | None = None

    def owned(self) -> bool:
        """Whether this replica may still act on the room (its lease, renewed recently enough)."""
        return self.leases.valid(self.room_id)

    @property
    def replica_id(self) -> str:
        return self.leases.replica_id
