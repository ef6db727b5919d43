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
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

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


_BATCH = TypeAdapter(list[BridgeEvent])


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
    """Valid events as LiveEvents, and one rejection per invalid one (its index in the batch)."""
    now_ms = now_ms if now_ms is not None else clock.time_ms()
    accepted: list[dict[str, Any]] = []
    rejected: list[Rejected] = []
    try:  # the common case, a valid batch, in one validation call
        events = _BATCH.validate_python(items)
    except ValidationError:
        pass
    else:
        for index, event in enumerate(events):
            problem = _requirement(event)
            if problem is None:
                accepted.append(to_live_event(event, now_ms))
            else:
                rejected.append(Rejected(index=index, error_msg=problem))
        return accepted, rejected
    for index, item in enumerate(items):
        try:
            event = BridgeEvent.model_validate(item)
        except ValidationError as exc:
            first = exc.errors(include_url=False, include_input=False)[0]
            where = ".".join(str(p) for p in first["loc"]) or "event"
            rejected.append(Rejected(index=index, error_msg=f"{where}: {first['msg']}"))
            continue
        problem = _requirement(event)
        if problem is not None:
            rejected.append(Rejected(index=index, error_msg=problem))
            continue
        accepted.append(to_live_event(event, now_ms))
    return accepted, rejected


def count_of(value: Any) -> int:
    """A count from outside (``giftNum`` ...): a non-negative int, or 0 for anything else. ``"²"`` is a
    digit to ``str.isdigit`` and not a number to ``int``: only ASCII digits count, and at most 9 of them."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return value if 0 <= value < 1_000_000_000 else 0
    text = str(value).strip()
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 9 else 0
