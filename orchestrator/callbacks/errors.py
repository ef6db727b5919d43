"""Why a vendor callback is refused -- the same answers whatever the vendor::

    CallbackRejected   401: not authentic (signature, time, replay, or the body names another room)
    CallbackMalformed  400: not the vendor's callback (not JSON, missing fields, values out of range)
    NotManaged         404: authentic and readable, but about a room or job this daemon does not manage

A provider's verifier and codec raise the first two; the receiver raises the third.
"""

from __future__ import annotations

from enum import StrEnum


class RejectReason(StrEnum):
    MISSING = "missing"
    MALFORMED_TIME = "malformed_time"
    TOO_OLD = "too_old"
    IN_FUTURE = "in_future"
    BAD_SIGNATURE = "bad_signature"
    BAD_TOKEN = "bad_token"  # noqa: S105 -- a reason, not a token
    FORBIDDEN_ADDRESS = "forbidden_address"
    REPLAY = "replay"
    ROOM_MISMATCH = "room_mismatch"


_REASON_TEXT = {
    RejectReason.MISSING: "signature or time missing",
    RejectReason.MALFORMED_TIME: "time is not a hexadecimal timestamp",
    RejectReason.TOO_OLD: "time is too far in the past",
    RejectReason.IN_FUTURE: "time is too far in the future",
    RejectReason.BAD_SIGNATURE: "signature does not match",
    RejectReason.BAD_TOKEN: "the callback token does not match",
    RejectReason.FORBIDDEN_ADDRESS: "the sender's address is not allowed",
    RejectReason.REPLAY: "signature already used for another callback",
    RejectReason.ROOM_MISMATCH: "the body names another room than the callback URL",
}


class CallbackRejected(Exception):
    """A callback that failed authentication: 401, naming the failed check and never the expected value."""

    status = 401

    def __init__(self, reason: RejectReason) -> None:
        super().__init__(_REASON_TEXT[reason])
        self.reason = reason
        self.error_code = f"CALLBACK_{reason.value.upper()}"


class CallbackMalformed(ValueError):
    """A callback body we cannot read: 400."""


class NotManaged(LookupError):
    """The callback names a room or job this daemon does not manage: 404, audited, not applied.
    ``job_only``: the room is managed, the job is not one of its (a provider may claim it: SoftSugar's
    session whose create answer never reached the daemon)."""

    def __init__(self, message: str, *, job_only: bool = False) -> None:
        super().__init__(message)
        self.job_only = job_only
