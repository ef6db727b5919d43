"""The callback receiver: authentic → parsed → durable, then acknowledged.

:meth:`CallbackReceiver.receive` runs the checks in order -- signature and time (401), body (400), room id
shape (404) -- then writes the callback with the room store's apply script through the group-commit
batcher. It returns only when the callback is durable: applied in Redis, or, when Redis cannot take it
within ``callbacks.write_timeout_s``, appended to the local journal (fsync'd). If neither is possible it
raises, and the client gets a 5xx, never a 2xx for something we could lose.

Outcomes the caller turns into HTTP: ``applied``, ``recorded`` (unknown event type), ``stale_job``,
``out_of_order``, ``duplicate`` and ``journaled`` are 200; ``replay`` is 401; ``unknown_room`` and
``unknown_job`` are 404 (and go to the audit stream).

A callback URL that names its room (``?room_id=R``: every job the daemon starts is given one, see
``callbacks/profiles.py``) is verified as that URL -- the signature covers it -- and a body naming another
room is refused (401 ``CALLBACK_ROOM_MISMATCH``). Used signatures are remembered per signed URL (the
callback id is a digest of the URL with the signature), so one room's signature is never taken for
another's, and two rooms' callbacks in the same millisecond do not collide. Jobs started with the bare
profile URL keep working, with the weaker guarantee MSS_A gives there.

Unsigned (NONE) callbacks have no signature to recognise them by: their id is the body digest plus the
receipt time, so a journal replay is applied once, but two identical unsigned deliveries are two callbacks.
Their time, for ordering, is the receipt time.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

import orjson
import structlog
from redis.exceptions import RedisError

from orchestrator import clock
from orchestrator.callbacks.profiles import ResolvedProfile, room_callback_url
from orchestrator.providers.metastudio.callbacks import (
    CallbackMalformed,
    CallbackRejected,
    ParsedCallback,
    RejectReason,
    ReplyCommandFinish,
    RtmpStreamStateChange,
    ShootScriptSwitch,
    SignatureVerifier,
    VerifyPolicy,
    parse_callback,
)
from orchestrator.settings import CallbackAuthType
from orchestrator.store import keys
from orchestrator.store.batch import ScriptBatcher
from orchestrator.store.journal import Journal
from orchestrator.store.redis import text as _text
from orchestrator.store.rooms import CallbackWrite, RoomStore

log = structlog.get_logger(__name__)

ACCEPTED = frozenset({"applied", "recorded", "stale_job", "out_of_order", "duplicate", "journaled"})
NOT_OURS = frozenset({"unknown_room", "unknown_job"})


class NotManaged(LookupError):
    """The callback names a room or job this daemon does not manage: 404, audited, not applied."""


class Credentials(NamedTuple):
    """What the request carried for authentication (query for MSS_A, headers for MSS_A_HEAD), and the room
    its URL names (``room_id`` in the query; None for a bare profile URL)."""

    secret: str | None
    time_text: str | None
    room_id: str | None = None


#: Verifiers kept per (profile, room) before the cache starts again (one HMAC state per key each).
MAX_VERIFIERS = 20_000


class CallbackReceiver:
    def __init__(
        self,
        store: RoomStore,
        batcher: ScriptBatcher,
        journal: Journal,
        *,
        policy: VerifyPolicy,
        events_maxlen: int,
    ) -> None:
        self._store = store
        self._batcher = batcher
        self._journal = journal
        self._policy = policy
        self._maxlen = events_maxlen
        # A signature is refused as a replay for as long as it could pass the skew check (whole seconds).
        self._seen_ttl_s = math.ceil(clock.real_s(2 * policy.max_skew_s + 60))
        self._verifiers: dict[tuple[str, str], tuple[ResolvedProfile, SignatureVerifier, str]] = {}

    async def receive(
        self,
        profile: ResolvedProfile,
        credentials: Credentials,
        body: bytes | Callable[[], Awaitable[bytes]],
    ) -> tuple[str, ParsedCallback]:
        """Verify, parse and durably record one callback; return its outcome and the parsed callback.
        ``body`` may be a function reading it: it is called only once the credentials verified (an
        unauthenticated sender gets no body read at all).

        Raises CallbackRejected (401), CallbackMalformed (400), NotManaged (404), OSError when neither Redis
        nor the journal could take it (5xx), and whatever reading the body raises.
        """
        now_ms = clock.time_ms()
        url_room = credentials.room_id
        if url_room is not None:
            try:
                keys.check_room_id(url_room)
            except keys.InvalidKeyPart:
                raise NotManaged(f"room {url_room!r} is not managed here") from None
        verified = self._verify(profile, credentials, now_ms)
        raw = body if isinstance(body, bytes) else await body()
        digest = hashlib.sha256(raw).hexdigest()
        callback_id, event_ms = verified or (f"none:{digest[:32]}:{now_ms}", now_ms)
        parsed = parse_callback(raw)
        if url_room is not None and parsed.room_id != url_room:
            raise CallbackRejected(RejectReason.ROOM_MISMATCH)
        try:
            keys.check_room_id(parsed.room_id)
        except keys.InvalidKeyPart:
            raise NotManaged(f"room {parsed.room_id!r} is not managed here") from None
        write = _write_for(parsed, callback_id, event_ms, now_ms, digest)
        outcome = await self._durable(write, profile)
        if outcome == "replay":
            raise CallbackRejected(RejectReason.REPLAY)
        if outcome in NOT_OURS:
            await self._audit(write, outcome, profile)
            raise NotManaged(f"{'room' if outcome == 'unknown_room' else 'job'} is not managed here")
        return outcome, parsed

    def _verify(
        self, profile: ResolvedProfile, credentials: Credentials, now_ms: int
    ) -> tuple[str, int] | None:
        """The callback id and time of a signed callback (None: the profile signs nothing)."""
        if profile.auth_type is CallbackAuthType.NONE:
            return None
        verifier, url_tag = self._verifier(profile, credentials.room_id)
        verified = verifier.verify(credentials.secret, credentials.time_text, now_ms)
        return f"{url_tag}:{verified.signature}", verified.event_ms

    def _verifier(self, profile: ResolvedProfile, room_id: str | None) -> tuple[SignatureVerifier, str]:
        """The verifier of the signed URL -- the profile's, bound to the room when the URL names one -- and
        a short digest of that URL (used signatures are kept per signed URL)."""
        cache_key = (profile.name, room_id or "")
        known = self._verifiers.get(cache_key)
        if known is None or known[0] is not profile:
            if len(self._verifiers) >= MAX_VERIFIERS:
                self._verifiers.clear()
            url = profile.public_url if room_id is None else room_callback_url(profile.public_url, room_id)
            tag = hashlib.sha256(url.encode()).hexdigest()[:16]
            known = self._verifiers[cache_key] = (
                profile,
                SignatureVerifier(url, profile.keys, self._policy),
                tag,
            )
        return known[1], known[2]

    async def _durable(self, write: CallbackWrite, profile: ResolvedProfile) -> str:
        try:
            return await self.apply(write)  # the batcher enforces callbacks.write_timeout_s
        except (RedisError, OSError) as exc:
            log.warning(
                "redis cannot take the callback; journaling it",
                error=str(exc) or type(exc).__name__,
                room_id=write.room_id,
                event_type=write.event_type,
            )
        await self._journal.append({"profile": profile.name, "write": _write_to_json(write)})
        return "journaled"

    async def apply(self, write: CallbackWrite) -> str:
        """Write one callback to Redis (no journal fallback); its outcome. Raises RedisError."""
        return _text(await self._batcher.call(write.keys(), write.args(self._maxlen, self._seen_ttl_s)))

    async def replay_journal(self) -> int:
        """Apply journaled callbacks, oldest first; returns how many. Raises RedisError if Redis fails."""

        async def apply_entry(entry: dict[str, Any]) -> None:
            write = _write_from_json(entry["write"])
            outcome = await self.apply(write)
            if outcome in NOT_OURS:
                await self._audit(write, outcome, None)
            log.info(
                "journaled callback applied",
                room_id=write.room_id,
                event_type=write.event_type,
                outcome=outcome,
            )

        return await self._journal.replay(apply_entry)

    async def _audit(self, write: CallbackWrite, outcome: str, profile: ResolvedProfile | None) -> None:
        try:
            await self._store.audit(
                {
                    "outcome": outcome,
                    "room_id": write.room_id,
                    "job_id": write.job_id,
                    "event_type": write.event_type,
                    "profile": profile.name if profile else "",
                    "received_ms": write.received_ms,
                    "message": write.message_json,
                }
            )
        except RedisError as exc:
            log.warning("audit entry lost", error=str(exc), room_id=write.room_id)


def _write_for(
    parsed: ParsedCallback, callback_id: str, event_ms: int, now_ms: int, digest: str
) -> CallbackWrite:
    message = parsed.message
    fields: tuple[str, ...] = ()
    if isinstance(message, ShootScriptSwitch):
        fields = (
            message.scene_script_name or "",
            "" if message.shoot_script_sequence_no is None else str(message.shoot_script_sequence_no),
            message.shoot_script_title or "",
            message.product_id or "",
            message.product_title or "",
        )
    elif isinstance(message, RtmpStreamStateChange):
        fields = (message.output_url, message.state)
    elif isinstance(message, ReplyCommandFinish):
        fields = (message.reply_id,)
    return CallbackWrite(
        room_id=parsed.room_id,
        callback_id=callback_id,
        event_type=parsed.event_type,
        job_id=parsed.job_id,
        event_ms=event_ms,
        received_ms=now_ms,
        message_json=_json(parsed.stored_message()),
        digest=digest,
        fields=fields,
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


def _write_from_json(data: dict[str, Any]) -> CallbackWrite:
    return CallbackWrite(**{**data, "fields": tuple(data["fields"])})


__all__ = [
    "ACCEPTED",
    "CallbackMalformed",
    "CallbackReceiver",
    "CallbackRejected",
    "Credentials",
    "NotManaged",
]
