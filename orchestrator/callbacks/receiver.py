"""The callback receiver: authentic → decoded → durable, then acknowledged -- for every vendor.

A vendor's route authenticates a callback its own way (MetaStudio: an MSS_A signature over the callback URL
and time), then hands :meth:`CallbackReceiver.receive` what it learned -- the callback's id (its signature,
for replay detection) and time, the room its URL is bound to -- with the body and the provider's codec.
The receiver decodes the body into a domain event (400 if it cannot), checks the room id's shape (404),
and writes the callback with the room store's apply script through the group-commit batcher. It returns
only when the callback is durable: applied in Redis, or, when Redis cannot take it within
``callbacks.write_timeout_s``, appended to the local journal (fsync'd). If neither is possible it raises,
and the client gets a 5xx, never a 2xx for something we could lose.

Outcomes the caller turns into HTTP: ``applied``, ``recorded`` (unknown event type), ``stale_job``,
``out_of_order``, ``duplicate`` and ``journaled`` are 200; ``replay`` is 401; ``unknown_room`` and
``unknown_job`` are 404 (and go to the audit stream).

A callback URL bound to a room (every job the daemon starts is given one) is verified as that URL by the
vendor's route; a body naming another room is refused here (401 ``CALLBACK_ROOM_MISMATCH``). Used
callback ids are remembered per signed URL (the route's id includes a digest of the URL), so one room's
signature is never taken for another's.

Callbacks without an id (a vendor, or a profile, that signs nothing) have none to recognise them by: their
id is the body digest plus the receipt time, so a journal replay is applied once, but two identical
deliveries are two callbacks. Their time, for ordering, is the receipt time.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, NamedTuple

import orjson
import structlog
from redis.exceptions import RedisError

from orchestrator import clock
from orchestrator.callbacks.errors import CallbackMalformed, CallbackRejected, NotManaged, RejectReason
from orchestrator.domain import JobStateChanged, LinkChanged, ParagraphChanged, ReplyFailed, ReplyFinished
from orchestrator.providers.base import CallbackCodec, Decoded
from orchestrator.store import keys
from orchestrator.store.batch import ScriptBatcher
from orchestrator.store.journal import Journal
from orchestrator.store.redis import text as _text
from orchestrator.store.rooms import CallbackWrite, RoomStore

log = structlog.get_logger(__name__)

ACCEPTED = frozenset({"applied", "recorded", "stale_job", "out_of_order", "duplicate", "journaled"})
NOT_OURS = frozenset({"unknown_room", "unknown_job"})
#: The provider of callbacks journaled before journals named one (MetaStudio was then the only one).
LEGACY_JOURNAL_PROVIDER = "metastudio"


class Authenticated(NamedTuple):
    """What a vendor's route learned before the body was read: the callback's id and time (None: the
    route verifies nothing -- an id is made from the body), the room the URL is bound to (None: a bare
    URL), and the name the audit stream gives the route's credentials (a profile)."""

    callback_id: str | None
    event_ms: int | None
    room_id: str | None
    source: str


class CallbackReceiver:
    def __init__(
        self,
        store: RoomStore,
        batcher: ScriptBatcher,
        journal: Journal,
        *,
        codecs: Callable[[str], CallbackCodec],
        max_skew_s: float,
        events_maxlen: int,
    ) -> None:
        self._store = store
        self._batcher = batcher
        self._journal = journal
        self._codecs = codecs
        self._maxlen = events_maxlen
        # A callback id is refused as a replay for as long as it could pass the skew check (whole seconds).
        self.seen_ttl_s = math.ceil(clock.real_s(2 * max_skew_s + 60))

    async def receive(
        self,
        provider: str,
        auth: Authenticated,
        body: bytes | Callable[[], Awaitable[bytes]],
    ) -> tuple[str, Decoded]:
        """Decode and durably record one authenticated callback of ``provider``; its outcome and the
        decoded callback. ``body`` may be a function reading it (called now: the route authenticated
        before calling).

        Raises CallbackRejected (401), CallbackMalformed (400), NotManaged (404), OSError when neither Redis
        nor the journal could take it (5xx), and whatever reading the body raises.
        """
        now_ms = clock.time_ms()
        url_room = auth.room_id
        if url_room is not None:
            try:
                keys.check_room_id(url_room)
            except keys.InvalidKeyPart:
                raise NotManaged(f"room {url_room!r} is not managed here") from None
        raw = body if isinstance(body, bytes) else await body()
        digest = hashlib.sha256(raw).hexdigest()
        decoded = self._codecs(provider).decode(raw)
        if url_room is not None and decoded.room_id != url_room:
            raise CallbackRejected(RejectReason.ROOM_MISMATCH)
        try:
            keys.check_room_id(decoded.room_id)
        except keys.InvalidKeyPart:
            raise NotManaged(f"room {decoded.room_id!r} is not managed here") from None
        if auth.callback_id is None or auth.event_ms is None:
            callback_id, event_ms = f"none:{digest[:32]}:{now_ms}", now_ms
        else:
            callback_id, event_ms = auth.callback_id, auth.event_ms
        write = write_for(decoded, callback_id, event_ms, now_ms, digest)
        outcome = await self._durable(write, provider, auth.source)
        if outcome == "replay":
            raise CallbackRejected(RejectReason.REPLAY)
        if outcome in NOT_OURS:
            await self._audit(write, outcome, auth.source)
            if outcome == "unknown_room":
                raise NotManaged("room is not managed here")
            raise NotManaged("job is not managed here", job_only=True)
        return outcome, decoded

    async def _durable(self, write: CallbackWrite, provider: str, source: str) -> str:
        try:
            return await self.apply(write)  # the batcher enforces callbacks.write_timeout_s
        except (RedisError, OSError) as exc:
            log.warning(
                "redis cannot take the callback; journaling it",
                error=str(exc) or type(exc).__name__,
                room_id=write.room_id,
                event_type=write.event_type,
            )
        await self._journal.append({"provider": provider, "profile": source, "write": _write_to_json(write)})
        return "journaled"

    async def apply(self, write: CallbackWrite) -> str:
        """Write one callback to Redis (no journal fallback); its outcome. Raises RedisError."""
        return _text(await self._batcher.call(write.keys(), write.args(self._maxlen, self.seen_ttl_s)))

    async def replay_journal(self) -> int:
        """Apply journaled callbacks, oldest first; returns how many. Raises RedisError if Redis fails."""

        async def apply_entry(entry: dict[str, Any]) -> None:
            write = self._write_from_json(entry["write"], entry.get("provider", LEGACY_JOURNAL_PROVIDER))
            outcome = await self.apply(write)
            if outcome in NOT_OURS:
                await self._audit(write, outcome, str(entry.get("profile", "")))
            log.info(
                "journaled callback applied",
                room_id=write.room_id,
                event_type=write.event_type,
                outcome=outcome,
            )

        return await self._journal.replay(apply_entry)

    def _write_from_json(self, data: Mapping[str, Any], provider: str) -> CallbackWrite:
        fields = {**data, "fields": tuple(data["fields"])}
        if "kind" not in fields:  # journaled before writes carried their kind: the provider names it
            codec = self._codecs(provider)
            fields["kind"] = codec.kind_of(fields["event_type"])
            fields["counter"] = fields["event_type"] if fields["kind"] != "other" else "other"
        return CallbackWrite(**fields)

    async def _audit(self, write: CallbackWrite, outcome: str, source: str) -> None:
        try:
            await self._store.audit(
                {
                    "outcome": outcome,
                    "room_id": write.room_id,
                    "job_id": write.job_id,
                    "event_type": write.event_type,
                    "profile": source,
                    "received_ms": write.received_ms,
                    "message": write.message_json,
                }
            )
        except RedisError as exc:
            log.warning("audit entry lost", error=str(exc), room_id=write.room_id)


def write_for(decoded: Decoded, callback_id: str, event_ms: int, now_ms: int, digest: str) -> CallbackWrite:
    """The apply script's input for one decoded callback (pure)."""
    event = decoded.event
    fields: tuple[str, ...] = ()
    if isinstance(event, ParagraphChanged):
        fields = (event.scene, event.sequence, event.title, event.product_id, event.product_title)
    elif isinstance(event, LinkChanged):
        fields = (event.output, event.state.value)
    elif isinstance(event, ReplyFinished | ReplyFailed):  # a failed reply frees its slot as a finished one
        fields = (event.reply_id,)
    elif isinstance(event, JobStateChanged):
        fields = (event.status.value,)
    return CallbackWrite(
        room_id=decoded.room_id,
        callback_id=callback_id,
        event_type=decoded.vendor_type,
        job_id=decoded.job_id,
        event_ms=event_ms,
        received_ms=now_ms,
        message_json=_json(decoded.message),
        digest=digest,
        fields=fields,
        kind=event.kind,
        counter=decoded.counter,
    )


def _json(message: dict[str, Any]) -> str:
    """The message as JSON. orjson refuses integers beyond 64 bits; such a message is still the vendor's
    callback (refusing it would make the vendor retry a poison message for ever): the slower standard
    encoder writes it as it came."""
    try:
        return orjson.dumps(message).decode()
    except TypeError:
        return json.dumps(message, ensure_ascii=False, separators=(",", ":"))


def _write_to_json(write: CallbackWrite) -> dict[str, Any]:
    return {**write._asdict(), "fields": list(write.fields)}


__all__ = [
    "ACCEPTED",
    "Authenticated",
    "CallbackMalformed",
    "CallbackReceiver",
    "CallbackRejected",
    "NotManaged",
]
