"""MetaStudio interaction-rule semantics (004 §6.1, HitCondition / HitConditionTag / TriggerProcess), pure.

A rule fires for an event when it is enabled, its ``event_type`` equals the event's ``type``, the current
scene is among its ``enabled_scenes`` (when given) and its hit condition holds:

* each tag names a field of the event's content (``content``, ``level``, ``giftNum`` ...; looked up at the
  top level, then inside ``user`` and ``gift``), optionally aggregated over the report batch
  (``COUNT``, ``SUM``, ``AVG``; ``NONE`` takes the event's own value), and compares it with ``value`` by
  ``EQUAL``, ``REGEX`` (search), or numerically (``MATH_GT`` ...);
* ``AND`` needs every tag, ``OR`` one; ``RESERVED`` (the general reply) needs none.

Of the rules that hold, the one with the smallest ``priority`` wins (ties: first listed). Its trigger's
``time_window`` then suppresses repeats: ``-1`` once per live, ``0`` never suppressed, ``n`` once per n s.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from orchestrator.providers.metastudio.models import HitCondition, HitConditionTag, InteractionRule

_NUMERIC = {
    "MATH_GT": lambda a, b: a > b,
    "MATH_GE": lambda a, b: a >= b,
    "MATH_LT": lambda a, b: a < b,
    "MATH_LE": lambda a, b: a <= b,
    "MATH_EQ": lambda a, b: a == b,
}


def parse_content(content: Any) -> dict[str, Any]:
    """An event's ``content`` (a JSON string, or already an object) as a dict; {} when unreadable."""
    if isinstance(content, Mapping):
        return dict(content)
    if isinstance(content, str):
        try:
            value = json.loads(content)
        except ValueError:
            return {"content": content}
        return dict(value) if isinstance(value, Mapping) else {"content": value}
    return {}


def field_value(content: Mapping[str, Any], tag: str) -> Any:
    """The value ``tag`` names: top level first, then inside ``user`` and ``gift``; None if absent."""
    if tag in content and not isinstance(content[tag], Mapping):
        return content[tag]
    for nested in ("user", "gift"):
        inner = content.get(nested)
        if isinstance(inner, Mapping) and tag in inner:
            return inner[tag]
    return content.get(tag)


def _as_number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _tag_value(tag: HitConditionTag, content: Mapping[str, Any], batch: Sequence[Mapping[str, Any]]) -> Any:
    operation = tag.operation or "NONE"
    if operation == "NONE":
        return field_value(content, tag.tag)
    if operation == "COUNT":
        return len(batch)
    numbers = [n for n in (_as_number(field_value(c, tag.tag)) for c in batch) if n is not None]
    if operation == "SUM":
        return sum(numbers)
    return sum(numbers) / len(numbers) if numbers else None


def tag_matches(
    tag: HitConditionTag, content: Mapping[str, Any], batch: Sequence[Mapping[str, Any]] = ()
) -> bool:
    if tag.match is None:  # optional in 004; a tag that names no comparison cannot hold
        return False
    value = _tag_value(tag, content, batch or [content])
    if value is None:
        return False
    if tag.match == "EQUAL":
        return str(value) == tag.value
    if tag.match == "REGEX":
        try:
            return re.search(tag.value, str(value)) is not None
        except re.error:
            return False
    left, right = _as_number(value), _as_number(tag.value)
    return left is not None and right is not None and _NUMERIC[tag.match](left, right)


def condition_holds(
    condition: HitCondition, content: Mapping[str, Any], batch: Sequence[Mapping[str, Any]] = ()
) -> bool:
    if condition.relation == "RESERVED":
        return True
    results = [tag_matches(tag, content, batch) for tag in condition.tags]
    if not results:
        return False
    return any(results) if condition.relation == "OR" else all(results)


def best_rule(
    rules: Sequence[InteractionRule],
    event_type: int,
    content: Mapping[str, Any],
    *,
    scene: str | None = None,
    batch: Sequence[Mapping[str, Any]] = (),
) -> InteractionRule | None:
    """The matching rule with the smallest priority (first listed on ties), or None."""
    candidates = [
        rule
        for rule in rules
        if rule.enabled
        and rule.event_type == event_type
        and (not rule.enabled_scenes or scene in rule.enabled_scenes)
        and condition_holds(rule.hit_condition, content, batch)
    ]
    return min(candidates, key=lambda rule: rule.hit_condition.priority, default=None)


def suppressed(time_window: int | None, last_fired_s: float | None, now_s: float) -> bool:
    """Whether TriggerProcess.time_window suppresses firing at ``now_s`` (seconds on any one clock)."""
    if last_fired_s is None or not time_window:
        return False
    if time_window == -1:
        return True
    return now_s - last_fired_s < time_window
