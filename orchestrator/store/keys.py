"""Every Redis key name the daemon uses, and nothing else.

Per-room keys put the room id in a hash tag -- ``orch:{room_id}:state`` -- so that a Redis Cluster keeps all
of one room's keys in one slot, which lets a room's multi-key writes run as one transaction or Lua script.
Global keys (the room index, schedule definitions) carry no tag; code never writes them together with a
room's keys in one transaction.
"""

from __future__ import annotations

import re

PREFIX = "orch"

#: Room ids come from operators and vendors; this keeps them printable, tag-safe and reasonably short.
_ROOM_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


class InvalidKeyPart(ValueError):
    """A value that would make an ambiguous or cluster-unsafe key (braces, spaces, empty, too long)."""


def check_room_id(room_id: str) -> str:
    """Return ``room_id`` if it can be used in key names.

    Raises InvalidKeyPart otherwise.
    """
    if not _ROOM_ID_RE.fullmatch(room_id):
        raise InvalidKeyPart(
            f"invalid room id {room_id!r}: 1-128 characters of letters, digits and . _ : -, "
            "starting with a letter or digit"
        )
    return room_id


def _room(room_id: str, suffix: str) -> str:
    return f"{PREFIX}:{{{check_room_id(room_id)}}}:{suffix}"


def room_state(room_id: str) -> str:
    """Hash: the room's live state (job, scene/paragraph, RTMP per output, counters)."""
    return _room(room_id, "state")


def room_events(room_id: str) -> str:
    """Stream (capped): everything that happened to the room, callbacks and our own actions."""
    return _room(room_id, "events")


def room_lease(room_id: str) -> str:
    """String with TTL: which replica owns the room's background work right now."""
    return _room(room_id, "lease")


def room_fence(room_id: str, action: str, window: str) -> str:
    """String with TTL: taken once per (action, desired window) so one replica acts, once."""
    return _room(room_id, f"fence:{action}:{window}")


def room_config(room_id: str) -> str:
    """String (JSON): the managed room's definition -- template, schedule, restart policy, alerts."""
    return _room(room_id, "config")


def room_config_source(room_id: str) -> str:
    """Hash: where the room's definition came from -- ``source`` (``api`` or ``file``) and ``file_sha``, the
    digest of the rooms file's definition when it was last applied (so a restart does not revert the API)."""
    return _room(room_id, "config:source")


def room_restarts(room_id: str) -> str:
    """Sorted set: restart attempts (score: epoch seconds), for backoff and the circuit breaker."""
    return _room(room_id, "restarts")


def room_alert_gate(room_id: str, kind: str) -> str:
    """String with TTL: an alert of this kind was sent recently (rate limit across replicas)."""
    return _room(room_id, f"alert:{kind}")


def room_jobs(room_id: str) -> str:
    """Set: every job id started for the room (callbacks for other jobs are not the room's)."""
    return _room(room_id, "jobs")


def room_replies(room_id: str) -> str:
    """Set: reply (insert command) ids in flight; REPLY_COMMAND_FINISH removes one."""
    return _room(room_id, "replies")


def room_seen(room_id: str, callback_id: str) -> str:
    """String with TTL: a callback already taken (its signature → body digest): duplicates and replays."""
    return _room(room_id, f"seen:{callback_id}")


def room_ingest(room_id: str) -> str:
    """Stream: audience events written by platform bridges, read by a consumer group."""
    return _room(room_id, "ingest")


def room_message_ids(room_id: str) -> str:
    """Sorted set: the platform message ids the room's ingest took lately (score: when), for dedup."""
    return _room(room_id, "msgids")


def room_of_ingest(stream: str) -> str:
    """The room of an ingest stream's key (the inverse of :func:`room_ingest`)."""
    return stream[len(PREFIX) + 2 : -len("}:ingest")]


def room_of_events(stream: str) -> str:
    """The room of an event stream's key (the inverse of :func:`room_events`)."""
    return stream[len(PREFIX) + 2 : -len("}:events")]


def room_replies_meta(room_id: str) -> str:
    """Hash: reply id in flight → JSON {priority, text, sent_ms} (for timeouts and clean-ups)."""
    return _room(room_id, "replies:meta")


def room_replies_done(room_id: str) -> str:
    """Set (with TTL): REPLY_COMMAND_FINISH for ids not yet recorded in flight (the finish won the race)."""
    return _room(room_id, "replies:done")


def room_replies_hold(room_id: str) -> str:
    """String with TTL: while it exists no reply is said (an operator holds the microphone; the value
    names the holder)."""
    return _room(room_id, "replies:hold")


def room_reply_queue(room_id: str) -> str:
    """Sorted set: replies waiting to be inserted (score: priority band, then enqueue time)."""
    return _room(room_id, "replyq")


def room_reply_items(room_id: str) -> str:
    """Hash: queued reply id → JSON {text, priority, play_type, rule_index, enqueued_ms, arrived_s}."""
    return _room(room_id, "replyq:items")


def room_report(room_id: str) -> str:
    """Hash: the report batch being sent (``batch_id``, ``first``, ``last``), so a successor resends it."""
    return _room(room_id, "report")


def rooms_index() -> str:
    """Set: ids of every managed room."""
    return f"{PREFIX}:rooms"


def callbacks_audit() -> str:
    """Stream (capped): callbacks naming rooms or jobs we do not manage, kept for audit, never applied."""
    return f"{PREFIX}:audit:callbacks"


def llm_seen(signature: str) -> str:
    """String with TTL: a signature of a third-party LLM call already answered (replay protection)."""
    return f"{PREFIX}:llmseen:{signature}"


def _vendor(provider: str, account: str, suffix: str) -> str:
    """A vendor account's key: ``orch:vendor:{provider:account}:suffix`` -- one hash tag per account, so
    that its keys written together (a session and its answer backend) share a Redis Cluster slot."""
    return f"{PREFIX}:vendor:{{{provider}:{account}}}:{suffix}"


def vendor_token(provider: str, account: str) -> str:
    """Hash: a vendor account's access token shared by every replica (``access``, ``refresh``,
    ``expires_ms``, ``refresh_expires_ms``): one token for the whole deployment, not one per process."""
    return _vendor(provider, account, "token")


def vendor_sessions(provider: str, account: str) -> str:
    """Hash: the vendor sessions the daemon created, session id → room id (a vendor whose listing does not
    name rooms: SoftSugar)."""
    return _vendor(provider, account, "sessions")


def vendor_unknown_sessions(provider: str, account: str) -> str:
    """Hash: running vendor sessions no room knows, session id → when first seen (ms; ``-1`` once dealt
    with), so every replica gives the same session the same grace."""
    return _vendor(provider, account, "unknown-sessions")


def vendor_session_answers(provider: str, account: str) -> str:
    """Hash: session id → the vendor answer backend its audience questions go to (a SoftSugar room's Q&A
    database, fixed for the session as the vendor fixes it per live broadcast)."""
    return _vendor(provider, account, "session-answers")


def vendor_token_lock(provider: str, account: str) -> str:
    """String with TTL: held by the replica obtaining or refreshing the account's token."""
    return _vendor(provider, account, "token-lock")


def check_policy_name(name: str) -> str:
    """Return ``name`` if it can name a reply policy (a brand, a group of rooms: ``lipstick``,
    ``brand-a.v2``): the characters of a room id. Raises InvalidKeyPart otherwise."""
    if not _ROOM_ID_RE.fullmatch(name):
        raise InvalidKeyPart(
            f"invalid policy name {name!r}: 1-128 characters of letters, digits and . _ : -, "
            "starting with a letter or digit"
        )
    return name


def policy(name: str) -> str:
    """Hash: a reply policy's versions (``version`` → the current number; ``<n>`` → version n's document)."""
    return f"{PREFIX}:policy:{{{check_policy_name(name)}}}"


def room_blocklist(room_id: str) -> str:
    """Hash: viewers blocked in the room (platform user id → ``{"until_ms", "reason", "at_ms"}``)."""
    return _room(room_id, "blocklist")


def room_review(room_id: str) -> str:
    """Hash: replies waiting for a human's review (review id → the reply, its source and times)."""
    return _room(room_id, "review")


def room_review_expiry(room_id: str) -> str:
    """Sorted set: the review ids by when they expire (ms)."""
    return _room(room_id, "review:exp")


def global_blocklist() -> str:
    """Hash: viewers blocked in every room (as :func:`room_blocklist`)."""
    return f"{PREFIX}:blocklist"


def blocklist_version() -> str:
    """Counter: raised on every change of any blocklist (replicas compare it to know when to read again)."""
    return f"{PREFIX}:blocklist:version"


def policies_index() -> str:
    """Set: the names of every stored reply policy."""
    return f"{PREFIX}:policies"


def reactions_channel() -> str:
    """Pub/sub channel: room reactions (RTMP END, reply finished ...) fanned out to every replica."""
    return f"{PREFIX}:reactions"


def console_session(digest: str) -> str:
    """Hash with TTL: a console login (operator, CSRF token, expiry), under the digest of its cookie."""
    return f"{PREFIX}:console:session:{digest}"


def console_link(digest: str) -> str:
    """String with TTL: a one-time console login link's operator, under the digest of its code."""
    return f"{PREFIX}:console:link:{digest}"


def replica(replica_id: str) -> str:
    """String (JSON) with TTL: a replica's presence -- host, version, the rooms it owns."""
    return f"{PREFIX}:replica:{replica_id}"


def replicas_index() -> str:
    """Sorted set: replicas by when they last announced themselves (epoch ms)."""
    return f"{PREFIX}:replicas"


def activity_claim(minute_ms: int) -> str:
    """String with TTL: one replica samples the rooms' activity for this interval."""
    return f"{PREFIX}:activity:{minute_ms}"


def room_activity(room_id: str) -> str:
    """Stream (capped, one entry per sampling interval): viewers and the comment and reply totals."""
    return _room(room_id, "activity")


def migration_done(name: str) -> str:
    """String: a one-time rename of stored keys (``store/migrate.py``) has run to the end on this Redis."""
    return f"{PREFIX}:migrated:{name}"
