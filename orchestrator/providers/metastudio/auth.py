"""Huawei Cloud API authentication: AK/SK request signing (SDK-HMAC-SHA256) and token auth.

The signature is byte-identical to the official signer (``huaweicloudsdkcore/signer/signer.py``)::

    canonical request = METHOD \\n canonical URI \\n canonical query \\n canonical headers \\n
                        signed header names \\n hex(sha256(body))
    string to sign    = "SDK-HMAC-SHA256" \\n X-Sdk-Date \\n hex(sha256(canonical request))
    Authorization     = "SDK-HMAC-SHA256 Access=AK, SignedHeaders=a;b, Signature=hex(hmac_sha256(SK, sts))"

with: each path segment percent-encoded (only ``A-Za-z0-9_.-~`` left bare) and the URI always ending in
``/``; query pairs sorted, then encoded the same way; every request header whose name has no ``_`` signed,
lower-cased and sorted, values stripped; an empty body hashed as the empty string; a body whose
Content-Type is neither JSON nor BSON sent as ``UNSIGNED-PAYLOAD``.

The functions are pure (the time is a parameter) so the MetaStudio sandbox verifies requests with the same
canonicalisation, and tests compare them with the official signer.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote, unquote

ALGORITHM = "SDK-HMAC-SHA256"
DATE_FORMAT = "%Y%m%dT%H%M%SZ"
HEADER_DATE = "X-Sdk-Date"
HEADER_CONTENT_SHA256 = "X-Sdk-Content-Sha256"
HEADER_PROJECT = "X-Project-Id"
HEADER_SECURITY_TOKEN = "X-Security-Token"  # noqa: S105 -- a header name
HEADER_AUTH_TOKEN = "X-Auth-Token"  # noqa: S105 -- a header name
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
EMPTY_BODY_SHA256 = hashlib.sha256(b"").hexdigest()


def _encode(text: str) -> str:
    return quote(text, safe="~")


def canonical_uri(path: str) -> str:
    """The path with each segment percent-encoded, always ending in ``/``."""
    encoded = "/".join(_encode(segment) for segment in unquote(path).split("/"))
    return encoded if encoded.endswith("/") else encoded + "/"


def canonical_query(pairs: Iterable[tuple[str, str]]) -> str:
    """Query pairs (decoded) sorted by name then value, each side percent-encoded."""
    return "&".join(f"{_encode(k)}={_encode(v)}" for k, v in sorted(pairs))


def signed_header_names(headers: Mapping[str, str]) -> list[str]:
    """Every header name without ``_``, lower-cased and sorted: what the official signer signs."""
    return sorted(name.lower() for name in headers if "_" not in name)


def canonical_headers(headers: Mapping[str, str], names: Iterable[str]) -> str:
    lowered = {k.lower(): str(v).strip() for k, v in headers.items()}
    return "".join(f"{name}:{lowered[name]}\n" for name in names)


def payload_hash(body: bytes, headers: Mapping[str, str]) -> str:
    if not body:
        return EMPTY_BODY_SHA256
    declared = next((v for k, v in headers.items() if k.lower() == HEADER_CONTENT_SHA256.lower()), None)
    return declared or hashlib.sha256(body).hexdigest()


def canonical_request(
    method: str,
    path: str,
    query: Iterable[tuple[str, str]],
    headers: Mapping[str, str],
    names: list[str],
    body: bytes,
) -> str:
    return "\n".join(
        (
            method.upper(),
            canonical_uri(path),
            canonical_query(query),
            canonical_headers(headers, names),
            ";".join(names),
            payload_hash(body, headers),
        )
    )


def string_to_sign(canonical: str, sdk_date: str) -> str:
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    return f"{ALGORITHM}\n{sdk_date}\n{digest}"


def signature(sk: str, to_sign: str) -> str:
    return hmac.new(sk.encode(), to_sign.encode(), hashlib.sha256).hexdigest()


def format_sdk_date(now: datetime) -> str:
    return now.astimezone(UTC).strftime(DATE_FORMAT)


def sign_headers(
    *,
    method: str,
    host: str,
    path: str,
    query: Iterable[tuple[str, str]],
    headers: Mapping[str, str],
    body: bytes,
    ak: str,
    sk: str,
    now: datetime,
) -> dict[str, str]:
    """``headers`` plus Host, X-Sdk-Date (and X-Sdk-Content-Sha256 when due) and Authorization.

    ``path`` and ``query`` are what goes on the wire (the path may be percent-encoded; query pairs decoded).
    """
    signed = dict(headers)
    # Exactly as the official signer (``_process_content_header``): it reads ``Content-Type`` by that exact
    # name, so a ``content-type`` header never makes the payload UNSIGNED -- and neither does it here.
    content_type = signed.get("Content-Type", "")
    if content_type and not content_type.startswith(("application/json", "application/bson")):
        signed[HEADER_CONTENT_SHA256] = UNSIGNED_PAYLOAD
    if not any(k.lower() == HEADER_DATE.lower() for k in signed):
        signed[HEADER_DATE] = format_sdk_date(now)
    if not any(k.lower() == "host" for k in signed):
        signed["Host"] = host
    sdk_date = next(v for k, v in signed.items() if k.lower() == HEADER_DATE.lower())
    names = signed_header_names(signed)
    canonical = canonical_request(method, path, query, signed, names, body)
    sig = signature(sk, string_to_sign(canonical, sdk_date))
    signed["Authorization"] = f"{ALGORITHM} Access={ak}, SignedHeaders={';'.join(names)}, Signature={sig}"
    return signed


@dataclass(frozen=True)
class ParsedAuthorization:
    access_key: str
    signed_headers: list[str]
    signature: str


class MalformedAuthorization(ValueError):
    """An Authorization header not of the form ``SDK-HMAC-SHA256 Access=, SignedHeaders=, Signature=``."""


def parse_authorization(value: str) -> ParsedAuthorization:
    """Split an SDK-HMAC-SHA256 Authorization header.

    Raises MalformedAuthorization.
    """
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm != ALGORITHM:
        raise MalformedAuthorization(f"algorithm must be {ALGORITHM}")
    fields: dict[str, str] = {}
    for part in rest.split(","):
        name, sep, field_value = part.strip().partition("=")
        if sep:
            fields[name] = field_value
    try:
        return ParsedAuthorization(
            access_key=fields["Access"],
            signed_headers=[h for h in fields["SignedHeaders"].split(";") if h],
            signature=fields["Signature"],
        )
    except KeyError as exc:
        raise MalformedAuthorization(f"missing {exc.args[0]}") from None


def parse_sdk_date(value: str) -> datetime:
    """Raises ValueError for anything but ``YYYYMMDDTHHMMSSZ``."""
    return datetime.strptime(value, DATE_FORMAT).replace(tzinfo=UTC)
