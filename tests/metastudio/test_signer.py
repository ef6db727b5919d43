"""Our AK/SK signer against the official one (huaweicloudsdkcore): byte-identical Authorization headers."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from huaweicloudsdkcore.sdk_request import SdkRequest
from huaweicloudsdkcore.signer.signer import Signer
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.providers.metastudio import auth

AK = "HPUAEXAMPLEAK0000001"
SK = "sk/with+reserved=chars&ünï"
NOW = datetime(2026, 11, 21, 8, 30, 5, tzinfo=UTC)
PATH = "/v1/70b76xxxxxx34253880af501cdxxxxxx/smart-live-rooms/24bad716-87b1/smart-live-jobs"


def official(
    method: str, host: str, path: str, query: list[tuple[str, Any]], headers: dict[str, str], body: bytes
) -> dict[str, str]:
    request = SdkRequest(
        method=method,
        schema="https",
        host=host,
        resource_path=path,
        query_params=list(query),
        header_params=dict(headers),
        body=body,
    )
    Signer(SimpleNamespace(ak=AK, sk=SK)).sign(request)
    return dict(request.header_params)


def ours(
    method: str, host: str, path: str, query: list[tuple[str, str]], headers: dict[str, str], body: bytes
) -> dict[str, str]:
    return auth.sign_headers(
        method=method, host=host, path=path, query=query, headers=headers, body=body, ak=AK, sk=SK, now=NOW
    )


BASE_HEADERS = {"Content-Type": "application/json", "X-Project-Id": "70b76xxxxxx34253880af501cdxxxxxx"}

CASES: list[tuple[str, str, str, list[tuple[str, str]], dict[str, str], bytes]] = [
    ("GET", "metastudio.cn-north-4.myhuaweicloud.com", PATH, [], BASE_HEADERS, b""),
    (
        "GET",
        "metastudio.cn-north-4.myhuaweicloud.com",
        PATH,
        [("limit", "10"), ("offset", "0")],
        BASE_HEADERS,
        b"",
    ),
    ("GET", "127.0.0.1:8090", PATH, [("state", "WAITING,PROCESSING"), ("limit", "100")], BASE_HEADERS, b""),
    ("GET", "h", PATH, [("b", "2"), ("a", "3"), ("a", "1"), ("a", "2")], BASE_HEADERS, b""),  # repeated
    ("GET", "h", PATH, [("room_name", "直播间 一号"), ("q", "ünïcødé")], BASE_HEADERS, b""),  # unicode
    ("GET", "h", PATH, [("r", "a b+c/d?e=f&g~h*i'j!k(l)m;n:o@p$q,r")], BASE_HEADERS, b""),  # reserved
    ("GET", "h", PATH, [("empty", ""), ("flag", "true")], BASE_HEADERS, b""),
    ("POST", "h", PATH, [], BASE_HEADERS, b'{"output_urls": ["rtmp://x/live"]}'),
    ("POST", "h", PATH + "/j1/command", [], BASE_HEADERS, '{"text": "你好，欢迎来到直播间"}'.encode()),
    ("POST", "h", PATH + "/j1/stop", [], BASE_HEADERS, b""),
    ("PUT", "h", "/v1/p/smart-live-rooms/r1", [], BASE_HEADERS, b"{}"),
    ("DELETE", "h", "/v1/p/smart-live-rooms/r1", [], BASE_HEADERS, b""),
    ("POST", "h", "/v1/p/x", [], {**BASE_HEADERS, "X-Security-Token": "tmp-token"}, b"{}"),
    ("POST", "h", "/v1/p/upload", [], {"Content-Type": "application/octet-stream"}, b"\x00\x01binary"),
    # the official signer reads "Content-Type" by that exact name: a lower-case one is signed, not UNSIGNED
    ("POST", "h", "/v1/p/upload", [], {"content-type": "application/octet-stream"}, b"\x00\x01binary"),
    ("POST", "h", "/v1/p/upload", [], {"CONTENT-TYPE": "text/plain"}, b"plain"),
    ("GET", "h", "/v1/p/path with space/ünï", [], BASE_HEADERS, b""),
    ("GET", "h", "/", [], {"Content-Type": "application/json", "X-Ignored_Underscore": "x"}, b""),
    (
        "POST",
        "h",
        PATH + "/j1/live-event-report",
        [("auth_key", "a1b2c3"), ("expires_time", "1700000000000")],
        BASE_HEADERS,
        b'{"total": 1, "events": [{"timestamp": 1, "type": 1, "content": "{}"}]}',
    ),
]


@pytest.mark.parametrize(("method", "host", "path", "query", "headers", "body"), CASES)
def test_identical_to_official_signer(
    method: str, host: str, path: str, query: list[tuple[str, str]], headers: dict[str, str], body: bytes
) -> None:
    expected = official(
        method, host, path, query, {**headers, auth.HEADER_DATE: auth.format_sdk_date(NOW)}, body
    )
    got = ours(method, host, path, query, headers, body)
    assert got["Authorization"] == expected["Authorization"]
    assert got[auth.HEADER_DATE] == expected[auth.HEADER_DATE]
    assert got.get(auth.HEADER_CONTENT_SHA256) == expected.get(auth.HEADER_CONTENT_SHA256)


@settings(max_examples=200)
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE"]),
    segments=st.lists(
        st.text(min_size=1, max_size=8).filter(lambda s: "/" not in s and "%" not in s), max_size=4
    ),
    query=st.lists(st.tuples(st.text(min_size=1, max_size=6), st.text(max_size=8)), max_size=5),
    body=st.binary(max_size=64),
)
def test_identical_to_official_signer_property(
    method: str, segments: list[str], query: list[tuple[str, str]], body: bytes
) -> None:
    path = "/v1/" + "/".join(segments)
    headers = {"Content-Type": "application/json;charset=UTF-8", "X-Project-Id": "p"}
    expected = official(
        method, "h:1", path, query, {**headers, auth.HEADER_DATE: auth.format_sdk_date(NOW)}, body
    )
    assert ours(method, "h:1", path, query, headers, body)["Authorization"] == expected["Authorization"]


_HEADER_NAMES = st.sampled_from(
    [
        "Content-Type",
        "content-type",
        "CONTENT-TYPE",
        "X-Project-Id",
        "x-project-id",
        "X-Custom_Under",
        "Accept",
    ]
)
_HEADER_VALUES = st.sampled_from(
    ["application/json", "application/json;charset=UTF-8", "application/bson", "text/plain", " padded ", ""]
)
_QUERY_TEXT = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=8
) | st.sampled_from(["", " ", "+", "%", "%2C", ",", "&", "=", "~", "a b", "直播"])


@settings(max_examples=3000, deadline=None)
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE"]),
    segments=st.lists(
        st.text(min_size=1, max_size=8).filter(lambda s: "/" not in s and "%" not in s), max_size=4
    ),
    query=st.lists(st.tuples(_QUERY_TEXT.filter(bool), _QUERY_TEXT), max_size=6).map(
        lambda pairs: pairs + pairs[:1]  # a repeated pair, whenever there is one
    ),
    headers=st.dictionaries(_HEADER_NAMES, _HEADER_VALUES, max_size=4),
    body=st.binary(max_size=64),
)
def test_identical_to_official_signer_on_any_input(
    method: str, segments: list[str], query: list[tuple[str, str]], headers: dict[str, str], body: bytes
) -> None:
    """Thousands of requests: unicode, reserved characters, repeated and empty values, headers in any
    case -- the same Authorization as the official signer, and the same query on the wire."""
    from yarl import URL

    from orchestrator.providers.metastudio.client import AkSkCredentials, canonical_url

    path = "/v1/" + "/".join(segments)
    dated = {**headers, auth.HEADER_DATE: auth.format_sdk_date(NOW)}
    request = SdkRequest(
        method=method,
        schema="https",
        host="h:1",
        resource_path=path,
        query_params=list(query),
        header_params=dict(dated),
        body=body,
    )
    Signer(SimpleNamespace(ak=AK, sk=SK)).sign(request)
    assert (
        ours(method, "h:1", path, query, headers, body)["Authorization"]
        == request.header_params["Authorization"]
    )
    # What our client sends: the canonical query of what it signs, the very string the SDK sends.
    sent = canonical_url(URL.build(scheme="https", host="h", port=1, path="/x", query=query))
    assert sent.raw_query_string == Signer.process_canonical_query_string(request)
    signed = AkSkCredentials(AK, SK, "p").sign(method, sent, dict(headers), body, NOW)
    with_project = {**headers, auth.HEADER_PROJECT: "p"}
    assert signed["Authorization"] == ours(method, "h:1", "/x", query, with_project, body)["Authorization"]


def test_canonical_pieces() -> None:
    assert auth.canonical_uri("/v1/a b/c") == "/v1/a%20b/c/"
    assert auth.canonical_uri("/v1/x/") == "/v1/x/"
    assert auth.canonical_query([("b", "1"), ("a", "x y"), ("a", "~")]) == "a=x%20y&a=~&b=1"
    assert auth.payload_hash(b"", {}) == hashlib.sha256(b"").hexdigest()


def test_parse_authorization_round_trip() -> None:
    headers = ours("GET", "h", PATH, [], BASE_HEADERS, b"")
    parsed = auth.parse_authorization(headers["Authorization"])
    assert parsed.access_key == AK
    assert parsed.signed_headers == ["content-type", "host", "x-project-id", "x-sdk-date"]
    with pytest.raises(auth.MalformedAuthorization):
        auth.parse_authorization("Basic abc")
    with pytest.raises(auth.MalformedAuthorization):
        auth.parse_authorization("SDK-HMAC-SHA256 Access=x")
