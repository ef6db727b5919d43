"""Audience events from platform bridges, normalised to MetaStudio's LiveEvent types. Pure.

A bridge sends ``{"type", "timestamp"?, "user"?, "text"?, "gift"?, "viewers"?}`` with ``type`` one of
``comment`` (1), ``join`` (2), ``like`` (3), ``gift`` (4), ``follow`` (5), ``viewers`` (6) -- or the number
itself. The result is what the live-event report carries (004 §6.2.7): ``{"timestamp" (ms), "type",
"content"}``, ``content`` holding ``user {userId, name, level, badge, badgeLevel}``, the comment text as
``content``, ``gift {giftName, giftNum, giftValue, totalValue}``, or ``numberOfViewers``. Type 5
("Subscription/Following", documented "not used currently" within the type's range 0-100) is accepted for
our own reactions (a thanks for a follow) and reported like the others: MetaStudio ignores it.

Bridges are easy to write: ``user`` may be left out of a like (anonymous) and a viewer count; a
``message_id`` (the platform's, at most 128 characters) makes a resent event a duplicate, taken once; and
fields we do not know (``platform``, ``room_url``...) are kept under ``extra`` (with an ``extra`` object
sent as such), at most :data:`MAX_EXTRA_BYTES` of JSON, instead of refusing the event. ``extra`` stays in
the room's ingest stream; it never goes to the vendor.
"""

from __future__ import annotations

from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from orchestrator import clock

TYPES = {"comment": 1, "join": 2, "like": 3, "gift": 4, "follow": 5, "viewers": 6}
#: The kinds a reply can be decided for (a comment's answer, a reaction): all but viewer counts.
ANSWERABLE = frozenset({1, 2, 3, 4, 5})
NAMES = {number: name for name, number in TYPES.items()}
MAX_BATCH = 1000
MAX_EXTRA_BYTES = 2048


class BridgeUser(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    user_id: str = Field(..., min_length=1, max_length=128, alias="userId")
    name: str = Field("", max_length=256)
    level: int = Field(0, ge=0)
    badge: str = Field("", max_length=256)
    badge_level: int = Field(0, ge=0, alias="badgeLevel")


class BridgeGift(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    gift_name: str = Field(..., min_length=1, max_length=256, alias="giftName")
    gift_num: int = Field(1, ge=1, alias="giftNum")
    gift_value: int = Field(0, ge=0, alias="giftValue")
    total_value: int | None = Field(None, ge=0, alias="totalValue")


class BridgeEvent(BaseModel):
    model_config = ConfigDict(extra="allow")  # unknown fields: kept under extra

    type: int
    timestamp: int | None = Field(None, ge=0, le=4_102_415_999_000, description="ms; now when absent")
    user: BridgeUser | None = None
    text: str | None = Field(None, max_length=1024)
    gift: BridgeGift | None = None
    viewers: int | None = Field(None, ge=0)
    message_id: str | None = Field(
        None, min_length=1, max_length=128, description="the platform's, for dedup"
    )
    extra: dict[str, Any] | None = None

    def extras(self) -> dict[str, Any]:
        """``extra`` and every unknown field, together (empty for most events: asked for each)."""
        unknown = self.__pydantic_extra__
        if not self.extra and not unknown:
            return {}
        return {**(self.extra or {}), **(unknown or {})}

    @field_validator("type", mode="before")
    @classmethod
    def _type(cls, value: Any) -> int:
        number = TYPES.get(value) if isinstance(value, str) else value
        if isinstance(number, bool) or not isinstance(number, int) or number not in NAMES:
            raise ValueError("type must be comment, join, like, gift, follow or viewers (1-6)")
        return int(number)


class Rejected(BaseModel):
    index: int
    error_code: Literal["EVENT_INVALID"] = "EVENT_INVALID"
    error_msg: str


def _requirement(event: BridgeEvent) -> str | None:
    extras = event.extras()
    if extras and len(orjson.dumps(extras)) > MAX_EXTRA_BYTES:
        return f"extra: at most {MAX_EXTRA_BYTES} bytes of JSON (unknown fields count)"
    if event.type in (1, 2, 4, 5) and event.user is None:
        return "user is required for comment, join, gift and follow events"
    if event.type == 1 and not (event.text or "").strip():
        return "text is required for a comment"
    if event.type == 4 and event.gift is None:
        return "gift is required for a gift event"
    if event.type == 6 and event.viewers is None:
        return "viewers is required for a viewers event"
    return None


def to_live_event(event: BridgeEvent, now_ms: int) -> dict[str, Any]:
    content: dict[str, Any] = {}
    user = event.user
    if user is not None:  # built by hand: model_dump costs more than the rest of the event
        content["user"] = {
            "userId": user.user_id,
            "name": user.name,
            "level": user.level,
            "badge": user.badge,
            "badgeLevel": user.badge_level,
        }
    if event.type == 1:
        content["content"] = event.text
    gift = event.gift
    if event.type == 4 and gift is not None:
        content["gift"] = {
            "giftName": gift.gift_name,
            "giftNum": gift.gift_num,
            "giftValue": gift.gift_value,
            "totalValue": gift.total_value
            if gift.total_value is not None
            else gift.gift_num * gift.gift_value,
        }
    if event.type == 6:
        content["numberOfViewers"] = event.viewers
    live: dict[str, Any] = {
        "timestamp": event.timestamp if event.timestamp is not None else now_ms,
        "type": event.type,
        "content": content,
    }
    if event.message_id is not None:
        live["message_id"] = event.message_id
    extras = event.extras()
    if extras:
        live["extra"] = extras
    return live


def normalise_batch(
    items: list[Any], now_ms: int | None = None
) -> tuple[list[dict[str, Any]], list[Rejected]]:
    """Valid events as LiveEvents, and one rejection per invalid one (its index in the batch).

    Each event is first tried by :func:`live_event_fast`, which takes the shapes bridges send in their
    plain form; anything it declines is validated by the models, which also word the errors."""
    now_ms = now_ms if now_ms is not None else clock.time_ms()
    accepted: list[dict[str, Any]] = []
    rejected: list[Rejected] = []
    for index, item in enumerate(items):
        live = live_event_fast(item, now_ms) or by_the_models(item, now_ms)
        if isinstance(live, str):
            rejected.append(Rejected(index=index, error_msg=live))
        else:
            accepted.append(live)
    return accepted, rejected


def by_the_models(item: Any, now_ms: int) -> dict[str, Any] | str:
    """One event's LiveEvent by validating it through :class:`BridgeEvent`, or what is wrong with it."""
    try:
        event = BridgeEvent.model_validate(item)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "event"
        return f"{where}: {first['msg']}"
    return _requirement(event) or to_live_event(event, now_ms)


# --- the plain shapes, without the models ---------------------------------------------------------------
#
# Validating an event through the models cost ~11 % of the daemon's CPU per ingested event (issue 18,
# py-spy, 2026-12-07); a batch of the pipeline benchmark's events took 12.8 us an event to parse and
# normalise on the slow machine of 2026-12-08, 4.3 us with these checks (2.3 us for the checks alone).
# They take what bridges send in the plain form the contract shows (exact
# ``int`` and ``str`` values, the documented keys, camelCase inside ``user`` and ``gift``) and
# answer None for anything else: a coerced value ("5" for 5, 5.0, True), a snake_case alias, a string past
# its bound, any invalid or incomplete event. The models then decide, so the result is theirs either way
# (tests/interaction/test_ingest.py proves the two agree on generated events).

_MAX_TIMESTAMP = 4_102_415_999_000
_EVENT_FIELDS = frozenset({"type", "timestamp", "user", "text", "gift", "viewers", "message_id", "extra"})
_USER_ALIASES = frozenset({"user_id", "badge_level"})  # field names the model also takes: its business
_GIFT_ALIASES = frozenset({"gift_name", "gift_num", "gift_value", "total_value"})
_NEEDS_USER = frozenset({1, 2, 4, 5})


def _plain_str(value: Any, low: int, high: int) -> bool:
    return type(value) is str and low <= len(value) <= high


def _plain_count(value: Any, low: int = 0) -> bool:
    return type(value) is int and low <= value < 1 << 63


def _fast_user(user: Any) -> dict[str, Any] | None:
    if type(user) is not dict or not _USER_ALIASES.isdisjoint(user):
        return None
    user_id = user.get("userId")
    name = user.get("name", "")
    level = user.get("level", 0)
    badge = user.get("badge", "")
    badge_level = user.get("badgeLevel", 0)
    if (  # inline, not _plain_str / _plain_count: a call each costs as much as its check
        type(user_id) is not str
        or not 1 <= len(user_id) <= 128
        or type(name) is not str
        or len(name) > 256
        or type(level) is not int
        or not 0 <= level < 1 << 63
        or type(badge) is not str
        or len(badge) > 256
        or type(badge_level) is not int
        or not 0 <= badge_level < 1 << 63
    ):
        return None
    return {"userId": user_id, "name": name, "level": level, "badge": badge, "badgeLevel": badge_level}


def _fast_gift(gift: Any) -> dict[str, Any] | None:
    if type(gift) is not dict or not _GIFT_ALIASES.isdisjoint(gift):
        return None
    name = gift.get("giftName")
    number = gift.get("giftNum", 1)
    value = gift.get("giftValue", 0)
    total = gift.get("totalValue")
    if not (
        _plain_str(name, 1, 256)
        and _plain_count(number, 1)
        and _plain_count(value)
        and (total is None or _plain_count(total))
    ):
        return None
    return {
        "giftName": name,
        "giftNum": number,
        "giftValue": value,
        "totalValue": total if total is not None else number * value,
    }


def live_event_fast(item: Any, now_ms: int) -> dict[str, Any] | None:
    """The LiveEvent of a valid event in its plain form, as :func:`to_live_event` would build it from the
    validated model; None when the event is not in that form or not valid (the models decide then)."""
    if type(item) is not dict:
        return None
    kind = item.get("type")
    kind = TYPES.get(kind) if type(kind) is str else kind
    if type(kind) is not int or kind not in NAMES:
        return None
    timestamp = item.get("timestamp")
    if timestamp is None:
        timestamp = now_ms
    elif type(timestamp) is not int or not 0 <= timestamp <= _MAX_TIMESTAMP:
        return None
    content: dict[str, Any] = {}
    user = item.get("user")
    if user is not None:
        if (wire_user := _fast_user(user)) is None:
            return None
        content["user"] = wire_user
    elif kind in _NEEDS_USER:
        return None
    text = item.get("text")
    if text is not None and (type(text) is not str or len(text) > 1024):
        return None
    if kind == 1:
        if text is None or not text.strip():
            return None
        content["content"] = text
    gift = item.get("gift")
    if gift is not None:
        if (wire_gift := _fast_gift(gift)) is None:
            return None
        if kind == 4:
            content["gift"] = wire_gift
    elif kind == 4:
        return None
    viewers = item.get("viewers")
    if viewers is not None and not _plain_count(viewers):
        return None
    if kind == 6:
        if viewers is None:
            return None
        content["numberOfViewers"] = viewers
    live: dict[str, Any] = {"timestamp": timestamp, "type": kind, "content": content}
    message_id = item.get("message_id")
    if message_id is not None:
        if not _plain_str(message_id, 1, 128):
            return None
        live["message_id"] = message_id
    extra = item.get("extra")
    if extra is not None and type(extra) is not dict:
        return None
    if extra or not _EVENT_FIELDS.issuperset(item):
        extras = {**(extra or {}), **{k: v for k, v in item.items() if k not in _EVENT_FIELDS}}
        if extras:
            return None if not all(type(k) is str for k in extras) else _with_extras(live, extras)
    return live


def _with_extras(live: dict[str, Any], extras: dict[str, Any]) -> dict[str, Any] | None:
    try:
        size = len(orjson.dumps(extras))
    except TypeError:  # not JSON: the models word it
        return None
    if size > MAX_EXTRA_BYTES:
        return None
    live["extra"] = extras
    return live


def count_of(value: Any) -> int:
    """A count from outside (``giftNum`` ...): a non-negative int, or 0 for anything else. ``"²"`` is a
    digit to ``str.isdigit`` and not a number to ``int``: only ASCII digits count, and at most 9 of them."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return value if 0 <= value < 1_000_000_000 else 0
    text = str(value).strip()
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 9 else 0
