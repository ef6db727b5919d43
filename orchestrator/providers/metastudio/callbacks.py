"""MetaStudio live-event callbacks: MSS_A / MSS_A_HEAD signing and verification, and body parsing.

The documents (000, Table 7)::

    hwSecret = hmac_sha256(Key, URI(live_event_callback_url) + hwTime)
    hwTime   = hex(timestamp)

Decisions (DESIGN.md §4): the signed URI is the callback URL exactly as configured (any query it already
has included, hwSecret/hwTime not); ``hwTime`` is the lower-case hex of the timestamp in milliseconds, and
the primary reading signs that hex string as written. (004 §7.1 signs ``uri + decimal milliseconds`` while
sending hex; the verifier accepts that reading too unless strict.) The signature is lower-case hex.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple
from urllib.parse import urlencode

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orchestrator.callbacks.errors import CallbackMalformed, CallbackRejected, RejectReason

QUERY_SECRET = "hwSecret"  # noqa: S105 -- a parameter name
QUERY_TIME = "hwTime"
HEADER_SECRET = "x-hw-mss-secret"  # noqa: S105 -- a header name
HEADER_TIME = "x-hw-mss-time"


def hw_time(timestamp_ms: int) -> str:
    """``hex(timestamp)`` without the ``0x`` prefix, lower case."""
    return format(timestamp_ms, "x")


def mss_a_signature(key: str, uri: str, signed_time: str) -> str:
    """hex(hmac_sha256(key, uri + signed_time)); ``signed_time`` is the hex time (or, in the alternative
    reading, the decimal milliseconds)."""
    return hmac.digest(key.encode(), (uri + signed_time).encode(), hashlib.sha256).hex()


def mss_a_url(callback_url: str, key: str, timestamp_ms: int) -> str:
    """The URL MetaStudio calls for MSS_A: the configured URL plus ``hwSecret`` and ``hwTime``."""
    time_hex = hw_time(timestamp_ms)
    query = urlencode({QUERY_SECRET: mss_a_signature(key, callback_url, time_hex), QUERY_TIME: time_hex})
    return f"{callback_url}{'&' if '?' in callback_url else '?'}{query}"


def mss_a_head_headers(callback_url: str, key: str, timestamp_ms: int) -> dict[str, str]:
    """The headers MetaStudio adds for MSS_A_HEAD."""
    time_hex = hw_time(timestamp_ms)
    return {HEADER_SECRET: mss_a_signature(key, callback_url, time_hex), HEADER_TIME: time_hex}


# --- verification (vendor → us) ------------------------------------------------------------

#: Below this a timestamp is read as seconds, above as milliseconds (1e11 ms is 1973; 1e11 s is year 5138).
SECONDS_MAGNITUDE_LIMIT = 100_000_000_000
_HEX_TIME_RE = re.compile(r"[0-9a-fA-F]{1,16}")


@dataclass(frozen=True)
class VerifyPolicy:
    max_skew_s: float = 300.0
    strict: bool = False  # only the hex-string reading


class Verified(NamedTuple):
    """An authentic callback: its signature (lower-case hex; the replay key) and its time in ms."""

    signature: str
    event_ms: int
    reading: str  # "hex" or "decimal": which documented reading matched


def parse_hw_time(text: str) -> int:
    """The callback time in milliseconds from ``hwTime`` (hex; seconds recognised by magnitude).

    Raises CallbackRejected(MALFORMED_TIME).
    """
    if not _HEX_TIME_RE.fullmatch(text):
        raise CallbackRejected(RejectReason.MALFORMED_TIME)
    value = int(text, 16)
    return value * 1000 if value < SECONDS_MAGNITUDE_LIMIT else value


class SignatureVerifier:
    """MSS_A / MSS_A_HEAD verification for one callback URL and its keys (DESIGN.md §4).

    The HMAC of each key over the URL is computed once, here; a callback then costs one ``copy`` and
    ``update`` with its time per reading tried. Keys are tried in order (the current key first during a
    rotation), and for each the hex-string reading before the decimal-milliseconds one; the first match
    ends the search. That the search stops early tells a timing observer at most *which* key or reading
    matched -- neither is secret; the comparison of the signature itself is constant-time.
    """

    def __init__(self, url: str, keys: Sequence[str], policy: VerifyPolicy) -> None:
        encoded_url = url.encode()
        self._states = [hmac.new(key.encode(), encoded_url, hashlib.sha256) for key in keys]
        self._skew_ms = policy.max_skew_s * 1000
        self._strict = policy.strict

    def verify(self, secret: str | None, time_text: str | None, now_ms: int) -> Verified:
        """Raises CallbackRejected naming the first failed check: missing, malformed time, too old, in the
        future, bad signature. (The replay check is the store's.)"""
        if not secret or not time_text:
            raise CallbackRejected(RejectReason.MISSING)
        event_ms = parse_hw_time(time_text)
        if now_ms - event_ms > self._skew_ms:
            raise CallbackRejected(RejectReason.TOO_OLD)
        if event_ms - now_ms > self._skew_ms:
            raise CallbackRejected(RejectReason.IN_FUTURE)
        provided = _ascii_lower(secret)
        readings = [("hex", time_text.encode())]
        if not self._strict:
            readings.append(("decimal", str(int(time_text, 16)).encode()))
        for state in self._states:
            for reading, signed_time in readings:
                mac = state.copy()
                mac.update(signed_time)
                if hmac.compare_digest(mac.hexdigest().encode(), provided):
                    return Verified(provided.decode(), event_ms, reading)
        raise CallbackRejected(RejectReason.BAD_SIGNATURE)


def verify_signature(
    *,
    url: str,
    keys: Sequence[str],
    secret: str | None,
    time_text: str | None,
    now_ms: int,
    policy: VerifyPolicy,
) -> Verified:
    """One-off :meth:`SignatureVerifier.verify` (a receiver keeps its verifier instead).

    Raises CallbackRejected naming the first failed check.
    """
    return SignatureVerifier(url, keys, policy).verify(secret, time_text, now_ms)


def _ascii_lower(secret: str) -> bytes:
    """The provided signature as lower-case ASCII bytes; anything else cannot match (compare_digest on str
    raises for non-ASCII, so bytes it is)."""
    try:
        return secret.strip().lower().encode("ascii")
    except UnicodeEncodeError:
        raise CallbackRejected(RejectReason.BAD_SIGNATURE) from None


# --- parsing --------------------------------------------------------------------------------

KNOWN_EVENT_TYPES = ("SHOOT_SCRIPT_SWITCH", "RTMP_STREAM_STATE_CHANGE", "REPLY_COMMAND_FINISH")
RtmpState = Literal["CONNECTING", "CONNECTED", "DISCONNECTED", "RECONNECTING", "END"]


class _Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    room_id: str = Field(..., min_length=1, max_length=128)
    job_id: str = Field(..., min_length=1, max_length=128)


class ShootScriptSwitch(_Message):
    scene_script_name: str | None = None
    shoot_script_sequence_no: int | None = None  # arrives as a string: "2"
    shoot_script_title: str | None = None
    product_id: str | None = None
    product_title: str | None = None


class RtmpStreamStateChange(_Message):
    output_url: str = Field(..., min_length=1, max_length=2048)
    stream_key: str | None = Field(None, exclude=True, repr=False)  # a secret: never stored or shown
    state: RtmpState


class ReplyCommandFinish(_Message):
    reply_id: str = Field(..., min_length=1, max_length=128)


_MESSAGE_MODELS: dict[str, type[_Message]] = {
    "SHOOT_SCRIPT_SWITCH": ShootScriptSwitch,
    "RTMP_STREAM_STATE_CHANGE": RtmpStreamStateChange,
    "REPLY_COMMAND_FINISH": ReplyCommandFinish,
}


class ParsedCallback(NamedTuple):
    """A parsed callback (a named tuple: one is made per callback, and cheaply)."""

    event_type: str
    message: _Message  # a typed model for known types, the bare room/job envelope otherwise

    @property
    def known(self) -> bool:
        return self.event_type in _MESSAGE_MODELS

    @property
    def room_id(self) -> str:
        return self.message.room_id

    @property
    def job_id(self) -> str:
        return self.message.job_id

    def stored_message(self) -> dict[str, Any]:
        """The message as we keep it: secrets (stream keys) removed."""
        data = self.message.model_dump(mode="json", exclude_none=True)
        data.pop("stream_key", None)
        return data


def parse_callback(raw: bytes) -> ParsedCallback:
    """``{"event_type", "message"}`` with ``message`` a JSON string or an object; numbers may be strings.

    Raises CallbackMalformed naming what is wrong.
    """
    try:
        envelope = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise CallbackMalformed(f"body is not JSON (UTF-8): {exc.msg}") from None
    if not isinstance(envelope, dict):
        raise CallbackMalformed("body must be a JSON object")
    event_type, message = envelope.get("event_type"), envelope.get("message")
    if not isinstance(event_type, str) or not event_type:
        raise CallbackMalformed("event_type must be a non-empty string")
    model = _MESSAGE_MODELS.get(event_type, _Message)
    if isinstance(message, str):
        if not message.lstrip().startswith("{"):
            raise CallbackMalformed("message must be a JSON object or a string holding one")
        try:
            # Parsed and validated in one pass (pydantic's own JSON parser): the common shape, kept cheap.
            return ParsedCallback(event_type, model.model_validate_json(message))
        except ValidationError as exc:
            raise _malformed(exc) from None
    if not isinstance(message, dict):
        raise CallbackMalformed("message must be a JSON object or a string holding one")
    try:
        return ParsedCallback(event_type, model.model_validate(message))
    except ValidationError as exc:
        raise _malformed(exc) from None


# --- the plain shapes, without the models ---------------------------------------------------------------
#
# A callback's message validated by its model and dumped again for the record cost ~15 us of the callback
# path's ~150 (issue 18, benchmarks/callbacks). The checks below take the two kinds that come with every
# paragraph and every reply -- SHOOT_SCRIPT_SWITCH and REPLY_COMMAND_FINISH, their message a JSON string as
# the vendor sends it, plain values -- and answer None for anything else (a coerced or out-of-range value,
# an extra field that is not a plain string or number, another kind): the models decide then, so the
# result is theirs either way (tests/metastudio/test_callbacks.py proves the two agree).

_PLAIN_FIELDS: dict[str, tuple[str, ...]] = {
    "SHOOT_SCRIPT_SWITCH": (
        "room_id",
        "job_id",
        "scene_script_name",
        "shoot_script_sequence_no",
        "shoot_script_title",
        "product_id",
        "product_title",
    ),
    "REPLY_COMMAND_FINISH": ("room_id", "job_id", "reply_id"),
}


def _int64(value: Any) -> bool:
    """A plain integer (not a bool) the models and orjson both take as it is."""
    return type(value) is int and -(1 << 63) <= value < 1 << 63


def json_object(text: str | bytes) -> dict[str, Any] | None:
    """``text`` parsed, if it is a JSON object."""
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    return data if type(data) is dict else None


def plain_message(event_type: str, message: Any) -> dict[str, Any] | None:
    """The message of a plain SHOOT_SCRIPT_SWITCH or REPLY_COMMAND_FINISH as
    :meth:`ParsedCallback.stored_message` gives it (``shoot_script_sequence_no`` a number, absent fields
    left out, extra fields after the known ones); None when the models must decide."""
    fields = _PLAIN_FIELDS.get(event_type)
    if fields is None or type(message) is not str:
        return None
    data = json_object(message)
    if data is None:
        return None
    stored: dict[str, Any] = {}
    for name in fields:
        value = data.get(name)
        if name in ("room_id", "job_id", "reply_id"):
            if type(value) is not str or not 1 <= len(value) <= 128:
                return None
        elif value is None:
            continue
        elif name == "shoot_script_sequence_no":
            if type(value) is str and value.isascii() and value.isdigit() and len(value) <= 18:
                value = int(value)  # as the vendor sends it: "2"
            elif not _int64(value):
                return None
        elif type(value) is not str:
            return None
        stored[name] = value
    for name, value in data.items():  # the extra fields; a stream key is a secret, never kept
        if name not in stored and name not in fields and name != "stream_key":
            if type(value) is not str and not _int64(value):
                return None
            stored[name] = value
    return stored


def _malformed(exc: ValidationError) -> CallbackMalformed:
    first = exc.errors(include_url=False, include_input=False)[0]
    if first["type"] == "json_invalid":
        return CallbackMalformed(f"message is not a JSON document: {first['msg']}")
    location = ".".join(str(p) for p in first["loc"])
    return CallbackMalformed(f"message.{location}: {first['msg']}")
