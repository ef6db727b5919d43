"""MetaStudio interaction-rule semantics as pure functions: a table per decision."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.providers.metastudio.models import HitCondition, HitConditionTag, InteractionRule
from orchestrator.providers.metastudio.rules import (
    best_rule,
    condition_holds,
    field_value,
    parse_content,
    suppressed,
    tag_matches,
)

COMMENT = {"user": {"userId": "u1", "name": "Ann", "level": 17}, "content": "这个多少钱？"}
GIFT = {
    "user": {"userId": "u2", "level": 3},
    "gift": {"giftName": "Star", "giftNum": 10, "giftValue": 3, "totalValue": 30},
}


def tag(tag: str, match: str, value: str, operation: str | None = None) -> HitConditionTag:
    return HitConditionTag(tag=tag, match=match, value=value, operation=operation)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("content", "name", "expected"),
    [
        (COMMENT, "content", "这个多少钱？"),
        (COMMENT, "level", 17),
        (COMMENT, "userId", "u1"),
        (GIFT, "giftNum", 10),
        (GIFT, "missing", None),
    ],
)
def test_field_lookup(content: dict[str, Any], name: str, expected: Any) -> None:
    assert field_value(content, name) == expected


@pytest.mark.parametrize(
    ("t", "content", "expected"),
    [
        (tag("content", "EQUAL", "这个多少钱？"), COMMENT, True),
        (tag("content", "EQUAL", "多少钱"), COMMENT, False),
        (tag("content", "REGEX", "多少钱|价格"), COMMENT, True),
        (tag("content", "REGEX", "^价格"), COMMENT, False),
        (tag("content", "REGEX", "([unclosed"), COMMENT, False),  # a bad pattern never matches, never raises
        (tag("level", "MATH_GT", "16"), COMMENT, True),
        (tag("level", "MATH_GE", "17"), COMMENT, True),
        (tag("level", "MATH_LT", "17"), COMMENT, False),
        (tag("level", "MATH_LE", "17"), COMMENT, True),
        (tag("level", "MATH_EQ", "17.0"), COMMENT, True),
        (tag("content", "MATH_GT", "1"), COMMENT, False),  # not a number
        (tag("giftNum", "MATH_GE", "10"), GIFT, True),
        (tag("absent", "EQUAL", ""), COMMENT, False),
    ],
)
def test_tag_matches(t: HitConditionTag, content: dict[str, Any], expected: bool) -> None:
    assert tag_matches(t, content) is expected


def test_aggregating_operations_use_the_batch() -> None:
    batch = [{"gift": {"giftNum": n}} for n in (1, 2, 3)]
    assert tag_matches(tag("giftNum", "MATH_EQ", "6", "SUM"), batch[0], batch)
    assert tag_matches(tag("giftNum", "MATH_EQ", "2", "AVG"), batch[0], batch)
    assert tag_matches(tag("giftNum", "MATH_GE", "3", "COUNT"), batch[0], batch)


@pytest.mark.parametrize(
    ("relation", "tags", "expected"),
    [
        ("AND", [tag("level", "MATH_GT", "10"), tag("content", "REGEX", "钱")], True),
        ("AND", [tag("level", "MATH_GT", "20"), tag("content", "REGEX", "钱")], False),
        ("OR", [tag("level", "MATH_GT", "20"), tag("content", "REGEX", "钱")], True),
        ("OR", [tag("level", "MATH_GT", "20"), tag("content", "REGEX", "nope")], False),
        ("RESERVED", [], True),
        ("AND", [], False),
    ],
)
def test_condition_relations(relation: str, tags: list[HitConditionTag], expected: bool) -> None:
    assert condition_holds(HitCondition(relation=relation, tags=tags), COMMENT) is expected  # type: ignore[arg-type]


def _rule(
    index: str, priority: int, event_type: int = 1, scenes: list[str] | None = None, enabled: bool = True
) -> InteractionRule:
    return InteractionRule(
        rule_index=index,
        event_type=event_type,
        enabled=enabled,
        enabled_scenes=scenes,
        hit_condition=HitCondition(relation="OR", priority=priority, tags=[tag("content", "REGEX", "钱")]),
    )


def test_best_rule_by_priority_type_scene_and_enabled() -> None:
    rules = [
        _rule("low", 500),
        _rule("high", 100),
        _rule("gift", 1, event_type=4),
        _rule("off", 0, enabled=False),
        _rule("scene", 50, scenes=["Products"]),
    ]
    assert best_rule(rules, 1, COMMENT, scene="Opening").rule_index == "high"  # type: ignore[union-attr]
    assert best_rule(rules, 1, COMMENT, scene="Products").rule_index == "scene"  # type: ignore[union-attr]
    assert best_rule(rules, 2, COMMENT) is None
    assert best_rule([_rule("a", 100), _rule("b", 100)], 1, COMMENT).rule_index == "a"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("window", "last", "now", "expected"),
    [
        (0, 10.0, 10.5, False),
        (None, 10.0, 10.5, False),
        (-1, 10.0, 9999.0, True),
        (-1, None, 1.0, False),
        (10, 10.0, 19.9, True),
        (10, 10.0, 20.0, False),
        (10, None, 0.0, False),
    ],
)
def test_time_window_suppression(window: int | None, last: float | None, now: float, expected: bool) -> None:
    assert suppressed(window, last, now) is expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ('{"content": "hi"}', {"content": "hi"}),
        ({"content": "hi"}, {"content": "hi"}),
        ("plain text", {"content": "plain text"}),
        ("[1, 2]", {"content": [1, 2]}),
        (None, {}),
    ],
)
def test_parse_content(raw: Any, expected: dict[str, Any]) -> None:
    assert parse_content(raw) == expected
