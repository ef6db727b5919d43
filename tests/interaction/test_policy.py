"""The reply policy as tables: rules, FAQ, templates, rate limits, dedup, forbidden words."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from orchestrator.interaction.policy import (
    Event,
    FaqEntry,
    History,
    KeywordRule,
    PolicyConfig,
    decide,
    normalise,
    similarity,
)

CONFIG = PolicyConfig(
    rules=[
        KeywordRule(
            name="price",
            patterns=["多少钱", "价格"],
            priority=100,
            time_window_s=10,
            replies=["{user}，{product}今天特价，看购物车！", "价格在购物车里哦"],
        ),
        KeywordRule(
            name="ship", match="regex", patterns=[r"发货|快递"], priority=200, replies=["48小时内发货"]
        ),
        KeywordRule(
            name="once", patterns=["主播好"], priority=300, time_window_s=-1, replies=["你好呀{user}"]
        ),
    ],
    faq=[FaqEntry(question="保温杯能保温多久", aliases=["保温时间"], answer="{product}能保温十二小时")],
    per_user_interval_s=5,
    per_room_per_minute=4,
    dedup_window_s=30,
    forbidden_words=["傻瓜", "最便宜"],
)


def comment(text: str, at: float, user: str = "u1", name: str = "小明") -> Event:
    return Event(type=1, user_id=user, user_name=name, text=text, at=at)


@pytest.mark.parametrize(
    ("text", "reply", "rule"),
    [
        ("这个多少钱？", "小明，保温杯今天特价，看购物车！", "price"),
        ("什么时候发货", "48小时内发货", "ship"),
        ("主播好", "你好呀小明", "once"),
        ("保温杯能保温多久啊", "保温杯能保温十二小时", "faq:保温杯能保温多久"),  # containment
        ("保温时间", "保温杯能保温十二小时", "faq:保温杯能保温多久"),  # an alias
        ("保温杯保温多久", "保温杯能保温十二小时", "faq:保温杯能保温多久"),  # fuzzy: ratio ≥ 0.6
        ("今天天气不错", None, None),
        ("你这个傻瓜多少钱", None, None),  # forbidden in the comment: silence
        ("   ", None, None),
    ],
)
def test_first_answers(text: str, reply: str | None, rule: str | None) -> None:
    decision = decide(CONFIG, History(), comment(text, 0), product="保温杯")
    assert (decision.reply, decision.rule if decision.speaks else None) == (reply, rule), decision.reason


def test_rule_priority_and_suppression_window_and_rotation() -> None:
    history = History()
    first = decide(CONFIG, history, comment("多少钱 发货吗", 0, "a"), product="杯子")
    assert first.rule == "price"  # priority 100 beats 200
    second = decide(CONFIG, history, comment("价格?", 3, "b"))
    assert second.rule == "ship" or not second.speaks  # price suppressed 10 s; ship doesn't match "价格"
    assert not second.speaks and second.reason == "matching rules are in their suppression window"
    third = decide(CONFIG, history, comment("价格呢", 11, "c"))
    assert third.reply == "价格在购物车里哦"  # the window passed; replies rotate in order
    assert decide(CONFIG, history, comment("主播好", 12, "d")).speaks
    assert decide(CONFIG, history, comment("主播好呀", 500, "e")).reason.endswith(
        "suppression window"
    )  # -1: once


def test_rate_limits_and_dedup() -> None:
    history = History()
    assert decide(CONFIG, history, comment("什么时候发货", 0, "u1")).speaks
    assert decide(CONFIG, history, comment("快递是哪家", 1, "u1")).reason == "this user was answered recently"
    assert (
        decide(CONFIG, history, comment("什么时候发货！", 2, "u2")).reason
        == "same question answered recently"
    )
    assert decide(CONFIG, history, comment("什么时候发货", 31, "u3")).speaks  # dedup window over
    for i, at in enumerate((32, 33)):
        assert decide(CONFIG, history, comment(f"快递{i}", at, f"v{i}")).speaks
    assert decide(CONFIG, history, comment("快递9", 34, "w")).reason == "room reply rate limit reached"
    assert decide(CONFIG, history, comment("快递10", 61, "x")).speaks  # a minute after the first reply


def test_forbidden_word_in_our_reply_is_dropped() -> None:
    config = CONFIG.model_copy(
        update={"rules": [KeywordRule(name="r", patterns=["比价"], replies=["全网最便宜！"])]}
    )
    decision = decide(config, History(), comment("比价一下", 0))
    assert not decision.speaks and decision.reason == "forbidden word in our own reply"


def test_gift_thanks_and_other_event_types() -> None:
    gift = Event(type=4, user_id="g", user_name="老王", gift_name="小星星", gift_num=3, at=0)
    decision = decide(CONFIG, History(), gift)
    assert (decision.reply, decision.priority) == ("谢谢老王送的小星星！", "gift")
    assert not decide(CONFIG, History(), Event(type=2, user_id="j", user_name="x", at=0)).speaks
    silent = CONFIG.model_copy(update={"gift_thanks": None})
    assert not decide(silent, History(), gift).speaks


def test_template_values_are_not_reinterpreted() -> None:
    decision = decide(CONFIG, History(), comment("多少钱", 0, name="{product}{user}"), product="杯")
    assert decision.reply == "{product}{user}，杯今天特价，看购物车！"


def test_config_validation() -> None:
    with pytest.raises(ValidationError, match="regular expression"):
        KeywordRule(name="bad", match="regex", patterns=["(unclosed"], replies=["x"])
    with pytest.raises(ValidationError):
        KeywordRule(name="empty", patterns=[], replies=["x"])


@pytest.mark.parametrize(
    ("a", "b", "at_least"),
    [
        ("保温杯能保温多久", "保温杯能保温多久？", 1.0),
        ("HELLO, World", "hello world", 1.0),
        ("ａｂｃ", "abc", 1.0),
    ],
)
def test_normalise_and_similarity(a: str, b: str, at_least: float) -> None:
    assert similarity(a, b) >= at_least


@given(text=st.text(max_size=40), at=st.floats(0, 1e6))
def test_property_decide_never_raises_and_a_reply_is_clean(text: str, at: float) -> None:
    decision = decide(CONFIG, History(), comment(text, at))
    if decision.speaks:
        assert decision.reply and not any(
            normalise(w) in normalise(decision.reply) for w in CONFIG.forbidden_words
        )


def test_example_policy_file_is_valid() -> None:
    from pathlib import Path

    import yaml

    path = Path(__file__).resolve().parents[2] / "config" / "policy.example.yaml"
    config = PolicyConfig.model_validate(yaml.safe_load(path.read_text()))
    assert [r.name for r in config.rules] == ["price", "shipping"] and config.faq


def test_room_budget_is_a_token_bucket() -> None:
    """A busy room answers a burst of at most per_room_burst, then steadily per_room_per_minute -- not the
    whole minute's worth at once followed by silence."""
    config = CONFIG.model_copy(
        update={"per_room_per_minute": 60, "per_room_burst": 3, "per_user_interval_s": 0}
    )
    history = History()
    spoke = [decide(config, history, comment(f"快递{i}", 100.0, f"u{i}")).speaks for i in range(10)]
    assert spoke == [True] * 3 + [False] * 7
    assert decide(config, history, comment("快递a", 100.5, "a")).reason == "room reply rate limit reached"
    assert decide(config, history, comment("快递b", 101.0, "b")).speaks  # one a second after that
    assert not decide(config, history, comment("快递c", 101.2, "c")).speaks
    steady = [decide(config, history, comment(f"快递s{i}", 102.0 + i, f"s{i}")).speaks for i in range(30)]
    assert all(steady)
