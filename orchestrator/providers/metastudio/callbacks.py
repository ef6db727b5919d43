"""MetaStudio live-event callbacks: how MSS_A / MSS_A_HEAD signatures are computed.

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
from urllib.parse import urlencode

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
    return hmac.new(key.encode(), (uri + signed_time).encode(), hashlib.sha256).hexdigest()


def mss_a_url(callback_url: str, key: str, timestamp_ms: int) -> str:
    """The URL MetaStudio calls for MSS_A: the configured URL plus ``hwSecret`` and ``hwTime``."""
    time_hex = hw_time(timestamp_ms)
    query = urlencode({QUERY_SECRET: mss_a_signature(key, callback_url, time_hex), QUERY_TIME: time_hex})
    return f"{callback_url}{'&' if '?' in callback_url else '?'}{query}"


def mss_a_head_headers(callback_url: str, key: str, timestamp_ms: int) -> dict[str, str]:
    """The headers MetaStudio adds for MSS_A_HEAD."""
    time_hex = hw_time(timestamp_ms)
    return {HEADER_SECRET: mss_a_signature(key, callback_url, time_hex), HEADER_TIME: time_hex}
