"""MSS_A / MSS_A_HEAD verification and callback parsing: tables, the document's worked example, properties."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.providers.metastudio.callbacks import (
    CallbackMalformed,
    CallbackRejected,
    RejectReason,
    RtmpStreamStateChange,
    ShootScriptSwitch,
    VerifyPolicy,
    hw_time,
    mss_a_signature,
    mss_a_url,
    parse_callback,
    parse_hw_time,
    verify_signature,
)
from orchestrator.providers.metastudio.provider import decode_by_models, decode_plain

URL = "https://live.example.com/callbacks/metastudio/live-events?tenant=a"
KEY = "k3y-0123456789abcdef0123456789ab"
NOW_MS = 1_763_700_000_000
POLICY = VerifyPolicy(max_skew_s=300)


def _verify(
    secret: str | None,
    time_text: str | None,
    *,
    keys: list[str] | None = None,
    url: str = URL,
    now_ms: int = NOW_MS,
    policy: VerifyPolicy = POLICY,
) -> Any:
    return verify_signature(
        url=url, keys=keys or [KEY], secret=secret, time_text=time_text, now_ms=now_ms, policy=policy
    )


def _sign(time_ms: int = NOW_MS, key: str = KEY, url: str = URL) -> tuple[str, str]:
    t = hw_time(time_ms)
    return mss_a_signature(key, url, t), t


def test_worked_example_of_004_section_7_1() -> None:
    # appKey "huawei_metaStudio", URL as printed (the PDF's "l1m" is an OCR slip for "llm"), 1744612873350 ms.
    url, key, ms = "https://metastudio-llm/digital-human/chat", "huawei_metaStudio", 1744612873350
    assert hw_time(ms) == "1963307d486"
    assert (
        mss_a_signature(key, url, str(ms))
        == "a02fc32111795dc6f760e6bd15bb0cbc9a35921dc5dc86e57eea56ae644d793e"
    )
    # The same construction, sent as MSS_A, passes verification through the decimal-milliseconds reading ...
    lenient = verify_signature(
        url=url,
        keys=[key],
        secret="A02FC32111795DC6F760E6BD15BB0CBC9A35921DC5DC86E57EEA56AE644D793E",
        time_text="1963307d486",
        now_ms=ms + 1000,
        policy=VerifyPolicy(),
    )
    assert lenient.reading == "decimal" and lenient.event_ms == ms
    # ... and not in strict mode.
    with pytest.raises(CallbackRejected) as info:
        verify_signature(
            url=url,
            keys=[key],
            secret="a02fc32111795dc6f760e6bd15bb0cbc9a35921dc5dc86e57eea56ae644d793e",
            time_text="1963307d486",
            now_ms=ms,
            policy=VerifyPolicy(strict=True),
        )
    assert info.value.reason is RejectReason.BAD_SIGNATURE


def test_hex_reading_is_primary_and_case_insensitive() -> None:
    secret, t = _sign()
    assert _verify(secret, t).reading == "hex"
    assert _verify(secret.upper(), t).signature == secret
    assert _verify(secret, t, policy=VerifyPolicy(strict=True)).event_ms == NOW_MS


def test_two_keys_during_rotation() -> None:
    old_secret, t = _sign(key="old-key")
    assert _verify(old_secret, t, keys=[KEY, "old-key"]).signature == old_secret
    with pytest.raises(CallbackRejected):
        _verify(old_secret, t, keys=[KEY])


@pytest.mark.parametrize(
    ("secret", "time_text", "now_ms", "reason"),
    [
        (None, hw_time(NOW_MS), NOW_MS, RejectReason.MISSING),
        ("abc", None, NOW_MS, RejectReason.MISSING),
        ("", "", NOW_MS, RejectReason.MISSING),
        ("abc", "xyz", NOW_MS, RejectReason.MALFORMED_TIME),
        ("abc", "0x18c", NOW_MS, RejectReason.MALFORMED_TIME),
        ("abc", "1" * 17, NOW_MS, RejectReason.MALFORMED_TIME),
        ("abc", hw_time(NOW_MS - 301_000), NOW_MS, RejectReason.TOO_OLD),
        ("abc", hw_time(NOW_MS + 301_000), NOW_MS, RejectReason.IN_FUTURE),
        ("0" * 64, hw_time(NOW_MS), NOW_MS, RejectReason.BAD_SIGNATURE),
        ("ü" * 64, hw_time(NOW_MS), NOW_MS, RejectReason.BAD_SIGNATURE),  # non-ASCII never raises TypeError
    ],
)
def test_rejections_name_the_check(
    secret: str | None, time_text: str | None, now_ms: int, reason: RejectReason
) -> None:
    with pytest.raises(CallbackRejected) as info:
        _verify(secret, time_text, now_ms=now_ms)
    assert info.value.reason is reason
    assert info.value.status == 401 and info.value.error_code == f"CALLBACK_{reason.value.upper()}"
    expected, _ = _sign()
    assert expected not in str(info.value)  # the message never carries the expected value


def test_skew_within_bounds_both_ways_and_seconds_by_magnitude() -> None:
    for offset in (-299_000, 299_000):
        secret, t = _sign(NOW_MS + offset)
        assert _verify(secret, t).event_ms == NOW_MS + offset
    seconds = NOW_MS // 1000
    t = format(seconds, "x")
    assert parse_hw_time(t) == seconds * 1000
    assert _verify(mss_a_signature(KEY, URL, t), t).event_ms == seconds * 1000


def test_signed_uri_is_the_configured_url_not_the_request_url() -> None:
    signed = mss_a_url(URL, KEY, NOW_MS)
    assert signed.startswith(URL + "&hwSecret=")
    secret, t = _sign()
    with pytest.raises(CallbackRejected):  # behind a proxy the request URL differs: it must not be used
        _verify(secret, t, url="http://10.0.0.5:8080/callbacks/metastudio/live-events?tenant=a")


@settings(max_examples=300)
@given(data=st.data())
def test_any_single_character_change_is_rejected(data: st.DataObject) -> None:
    secret, t = _sign()
    field = data.draw(st.sampled_from(["url", "time", "secret"]))
    original = {"url": URL, "time": t, "secret": secret}[field]
    index = data.draw(st.integers(0, len(original) - 1))
    replacement = data.draw(
        st.characters(codec="utf-8").filter(lambda c: c.lower() != original[index].lower())
    )
    changed = original[:index] + replacement + original[index + 1 :]
    kwargs = {"url": URL, "time_text": t, "secret": secret}
    kwargs[{"url": "url", "time": "time_text", "secret": "secret"}[field]] = changed
    with pytest.raises(CallbackRejected):
        verify_signature(keys=[KEY], now_ms=NOW_MS, policy=POLICY, **kwargs)  # type: ignore[arg-type]


# --- parsing -----------------------------------------------------------------------------------------------------


def _body(event_type: str, message: Any, *, as_string: bool = True) -> bytes:
    return json.dumps(
        {"event_type": event_type, "message": json.dumps(message) if as_string else message}
    ).encode()


SWITCH = {
    "room_id": "r1",
    "job_id": "j1",
    "scene_script_name": "Product 1",
    "shoot_script_sequence_no": "2",
    "shoot_script_title": "Paragraph 2",
}


@pytest.mark.parametrize("as_string", [True, False])
def test_message_as_string_or_object_and_numbers_coerced(as_string: bool) -> None:
    parsed = parse_callback(_body("SHOOT_SCRIPT_SWITCH", SWITCH, as_string=as_string))
    assert isinstance(parsed.message, ShootScriptSwitch)
    assert parsed.message.shoot_script_sequence_no == 2 and parsed.room_id == "r1" and parsed.known


def test_documented_examples_parse() -> None:
    rtmp = parse_callback(
        b'{"event_type": "RTMP_STREAM_STATE_CHANGE", "message": "{\\"room_id\\":\\"26f0\\",\\"job_id\\":\\"e871\\",\\"output_url\\":\\"rtmp://xxx/xx/xx\\",\\"stream_key\\":\\"xxxxx\\",\\"state\\":\\"CONNECTED\\"}"}'
    )
    assert isinstance(rtmp.message, RtmpStreamStateChange) and rtmp.message.state == "CONNECTED"
    assert "stream_key" not in rtmp.stored_message() and "xxxxx" not in repr(rtmp.message)
    finish = parse_callback(_body("REPLY_COMMAND_FINISH", {"room_id": "r", "job_id": "j", "reply_id": "x1"}))
    assert finish.message.reply_id == "x1"  # type: ignore[attr-defined]


def test_unknown_event_type_is_parsed_not_rejected() -> None:
    parsed = parse_callback(_body("LIVE_NEW_THING", {"room_id": "r", "job_id": "j", "whatever": 1}))
    assert not parsed.known and parsed.stored_message()["whatever"] == 1


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"not json", "not JSON"),
        (b"[]", "JSON object"),
        (b'{"message": "{}"}', "event_type"),
        (b'{"event_type": "SHOOT_SCRIPT_SWITCH", "message": "{broken"}', "message is not"),
        (b'{"event_type": "SHOOT_SCRIPT_SWITCH", "message": 5}', "message must be"),
        (_body("SHOOT_SCRIPT_SWITCH", {"job_id": "j"}), "room_id"),
        (
            _body(
                "RTMP_STREAM_STATE_CHANGE",
                {"room_id": "r", "job_id": "j", "output_url": "u", "state": "BROKEN"},
            ),
            "state",
        ),
        (
            _body("SHOOT_SCRIPT_SWITCH", {**SWITCH, "shoot_script_sequence_no": "two"}),
            "shoot_script_sequence_no",
        ),
        (b"\xff\xfe", "not"),
    ],
)
def test_malformed_bodies(raw: bytes, fragment: str) -> None:
    with pytest.raises(CallbackMalformed, match=fragment):
        parse_callback(raw)


# --- the plain path agrees with the models ---------------------------------------------------------------

_PLAIN_BASES = [
    ("SHOOT_SCRIPT_SWITCH", dict(SWITCH)),
    ("SHOOT_SCRIPT_SWITCH", {"room_id": "r", "job_id": "j"}),
    ("REPLY_COMMAND_FINISH", {"room_id": "r", "job_id": "j", "reply_id": "x1"}),
    ("RTMP_STREAM_STATE_CHANGE", {"room_id": "r", "job_id": "j", "output_url": "rtmp://a/b", "state": "END"}),
]
_ID_VALUES: list[Any] = ["", "a", "a" * 128, "a" * 129, 5, None, True, ["a"]]
_TEXT_VALUES: list[Any] = ["", "x", None, 5, 1.5, True, {"a": 1}]
_SEQ_VALUES: list[Any] = [0, 3, -1, "3", "03", "0", " 3", "3 ", "+3", "-3", "3.0", "1_0", "٣", "x", "", 3.0, 3.5,
                          True, None, 2**63 - 1, 2**63, "9" * 18, "9" * 19]  # fmt: skip
_PLAIN_VALUES: dict[str, list[Any]] = {
    "room_id": _ID_VALUES,
    "job_id": _ID_VALUES,
    "reply_id": _ID_VALUES,
    "scene_script_name": _TEXT_VALUES,
    "shoot_script_sequence_no": _SEQ_VALUES,
    "shoot_script_title": _TEXT_VALUES,
    "product_id": _TEXT_VALUES,
    "product_title": _TEXT_VALUES,
    "extra_field": ["x", 7, None, True, 1.5, [1], {"a": None}, 2**63],
    "stream_key": ["k"],
}


def _decoded_both_ways(event_type: str, message: Any, *, as_string: bool = True) -> tuple[Any, Any]:
    raw = _body(event_type, message, as_string=as_string)
    try:
        slow: Any = decode_by_models(raw)
    except CallbackMalformed as exc:
        slow = f"malformed: {exc}"
    return decode_plain(raw), slow


def test_the_plain_path_agrees_with_the_models_at_every_bound() -> None:
    """Every kind with each field, in turn, at each of its bounds and of each other kind: the plain
    checks agree with the models (and take the valid paragraph switches and reply finishes)."""
    taken = 0
    for event_type, base in _PLAIN_BASES:
        for name, values in _PLAIN_VALUES.items():
            for value in values:
                fast, slow = _decoded_both_ways(event_type, {**base, name: value})
                assert fast is None or fast == slow, (event_type, name, value, fast, slow)
                taken += fast is not None
    assert taken > 40
    # Only a message sent as a JSON string, as the vendor sends it, takes the plain path.
    assert _decoded_both_ways("SHOOT_SCRIPT_SWITCH", SWITCH, as_string=False)[0] is None


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_property_the_plain_path_agrees_with_the_models(data: st.DataObject) -> None:
    event_type, base = data.draw(st.sampled_from(_PLAIN_BASES))
    message = dict(base)
    for name in data.draw(st.lists(st.sampled_from(sorted(_PLAIN_VALUES)), max_size=3)):
        message[name] = data.draw(st.sampled_from(_PLAIN_VALUES[name]))
    fast, slow = _decoded_both_ways(event_type, message)
    assert fast is None or fast == slow
