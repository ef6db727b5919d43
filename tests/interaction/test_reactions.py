"""Reactions to every audience event kind (issue 16, point 2) and the reasons of every silence (point 4's
record): welcomes, thanks for likes, follows and gifts by value, their own limits and switches, random
variants, masked names -- as tables over the pure policy, then end to end through a daemon."""

from __future__ import annotations

import itertools
import random
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from orchestrator.appkeys import AUDIENCE
from orchestrator.interaction.policy import (
    PRUNE_AT,
    Event,
    History,
    PolicyConfig,
    Skip,
    decide,
    mask,
)
from tests.interaction.test_room_policies import _comment, _said
from tests.scheduling.conftest import until
from tests.softsugar.test_e2e import _true, softsugar_daemon, softsugar_room

WELCOMES = ["欢迎{user}！", "{user}来啦～", "欢迎{user}进入直播间"]
POLICY = PolicyConfig.model_validate(
    {
        "reactions": {
            "join": {
                "templates": WELCOMES,
                "per_user_interval_s": 600,
                "per_room_per_minute": 6,
                "per_room_burst": 2,
            },
            "like": {"templates": ["谢谢{user}的赞"], "per_user_interval_s": 60, "per_room_per_minute": 1},
            "follow": {"templates": ["感谢{user}的关注！"], "enabled": False},
            "gift": {
                "tiers": [
                    {"min_value": 1, "templates": ["谢谢{user}的{gift}"]},
                    {"min_value": 100, "templates": ["哇！{user}送了{gift}，太破费啦！"]},
                ],
                "per_room_per_minute": 60,
                "per_room_burst": 10,
            },
        },
        "mask_user": "partial",
        "forbidden_words": ["傻瓜"],
    }
)


def event(kind: int, at: float, user: str = "u1", name: str = "张三丰", **more: Any) -> Event:
    return Event(type=kind, user_id=user, user_name=name, at=at, **more)


def seeded() -> History:
    return History(rng=random.Random(7))


@pytest.mark.parametrize(
    ("name", "mode", "said"),
    [
        ("张三丰", "none", "张三丰"),
        ("张三丰", "partial", "张**"),
        ("张三", "partial", "张**"),  # the length is not told
        ("张", "partial", "*"),
        ("Alice", "partial", "A**"),
        ("张三丰", "hidden", "朋友"),
        ("", "none", "朋友"),
        ("   ", "partial", "朋友"),
    ],
)
def test_masking(name: str, mode: Any, said: str) -> None:
    assert mask(name, mode) == said


def test_welcome_variants_are_random_never_twice_in_a_row_and_masked() -> None:
    history = seeded()
    said = []
    for i in range(40):  # distinct viewers, a minute apart: the room's budget refills
        decision = decide(POLICY, history, event(2, i * 60.0, user=f"v{i}"))
        assert decision.speaks and decision.priority == "reaction" and decision.rule == "join"
        said.append(decision.reply)
    assert all(a != b for a, b in itertools.pairwise(said))  # never the same twice in a row
    assert {s for s in said} == {t.replace("{user}", "张**") for t in WELCOMES}  # every variant, masked


def test_each_kind_has_its_own_per_user_interval_and_room_rate() -> None:
    history = seeded()
    # Joins: a burst of 2, then 6 a minute; the same viewer once per 600 s.
    assert decide(POLICY, history, event(2, 0, user="a")).speaks
    again = decide(POLICY, history, event(2, 1, user="a"))
    assert (again.speaks, again.code) == (False, Skip.RATE_LIMITED)
    assert decide(POLICY, history, event(2, 1, user="b")).speaks
    busy = decide(POLICY, history, event(2, 2, user="c"))
    assert (busy.speaks, busy.code, busy.reason) == (
        False,
        Skip.RATE_LIMITED,
        "room join reaction rate limit reached",
    )
    assert decide(POLICY, history, event(2, 12, user="c")).speaks  # 10 s later: one more token
    # Likes have their own budget: the joins spent none of it.
    assert decide(POLICY, history, event(3, 12, user="a")).speaks
    assert decide(POLICY, history, event(3, 13, user="b")).code == Skip.RATE_LIMITED  # 1 a minute
    assert decide(POLICY, history, event(3, 73, user="b")).speaks
    # A follow: switched off in this policy.
    off = decide(POLICY, history, event(5, 80))
    assert (off.speaks, off.code) == (False, Skip.DISABLED)
    # Not configured at all: the default policy reacts to no join.
    assert decide(PolicyConfig(), History(), event(2, 0)).code == Skip.DISABLED


@pytest.mark.parametrize(
    ("value", "reply", "code"),
    [
        (0, None, Skip.NO_RULE),  # below every tier
        (1, "谢谢张**的小心心", None),
        (99, "谢谢张**的小心心", None),
        (100, "哇！张**送了小心心，太破费啦！", None),
        (5000, "哇！张**送了小心心，太破费啦！", None),
    ],
)
def test_gift_thanks_by_value_tier(value: int, reply: str | None, code: Skip | None) -> None:
    decision = decide(POLICY, seeded(), event(4, 0, gift_name="小心心", gift_num=1, gift_value=value))
    assert (decision.reply, decision.code) == (reply, code)
    if reply:
        assert decision.priority == "gift"


def test_the_one_line_gift_thanks_of_earlier_policies_still_thanks() -> None:
    legacy = PolicyConfig.model_validate({"gift_thanks": "谢谢{user}送的{gift}！"})
    decision = decide(legacy, History(), event(4, 0, name="老王", gift_name="小星星", gift_num=3))
    assert (decision.reply, decision.priority) == ("谢谢老王送的小星星！", "gift")
    silent = PolicyConfig.model_validate({"gift_thanks": None})
    assert decide(silent, History(), event(4, 0)).code == Skip.DISABLED


def test_forbidden_words_are_checked_in_a_reaction_too() -> None:
    rude = POLICY.model_validate({**POLICY.model_dump(), "mask_user": "none"})
    decision = decide(rude, seeded(), event(2, 0, name="大傻瓜"))
    assert (decision.speaks, decision.code) == (False, Skip.FORBIDDEN_WORD)


@pytest.mark.parametrize(
    ("document", "field"),
    [
        ({"reactions": {"join": {"templates": []}}}, "reactions.join.templates"),
        ({"reactions": {"join": {"templates": [" "]}}}, "reactions.join.templates"),
        ({"reactions": {"like": {"templates": ["x"], "per_room_per_minute": 0}}}, "per_room_per_minute"),
        (
            {
                "reactions": {
                    "gift": {
                        "tiers": [{"min_value": 10, "templates": ["a"]}, {"min_value": 1, "templates": ["b"]}]
                    }
                }
            },
            "tiers",
        ),
        ({"reactions": {"wave": {"templates": ["x"]}}}, "wave"),
        ({"mask_user": "half"}, "mask_user"),
    ],
)
def test_invalid_reactions_are_refused_naming_the_field(document: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError, match=field.split(".")[-1]):
        PolicyConfig.model_validate(document)


def test_skip_codes_of_comments() -> None:
    config = PolicyConfig.model_validate(
        {
            "rules": [{"name": "p", "patterns": ["多少钱"], "replies": ["看购物车"]}],
            "forbidden_words": ["傻瓜"],
        }
    )
    history = History()
    comment = lambda text, at, user="u": Event(type=1, user_id=user, user_name="x", text=text, at=at)  # noqa: E731
    assert decide(config, history, comment("你好", 0)).code == Skip.NO_RULE
    assert decide(config, history, comment("傻瓜多少钱", 0)).code == Skip.FORBIDDEN_WORD
    assert decide(config, history, comment("多少钱", 0)).speaks
    assert decide(config, history, comment("多少钱", 1, "v")).code == Skip.DUPLICATE
    assert decide(config, history, comment("多少钱啊", 2)).code == Skip.RATE_LIMITED  # this user, 30 s


def test_the_history_forgets_viewers_once_their_window_has_passed() -> None:
    """A 24/7 room meets millions of viewers: what the policy remembers of them stays bounded."""
    history = seeded()
    config = PolicyConfig.model_validate(
        {
            "reactions": {
                "join": {
                    "templates": ["欢迎"],
                    "per_user_interval_s": 10,
                    "per_room_per_minute": 600,
                    "per_room_burst": 100,
                }
            }
        }
    )
    for i in range(PRUNE_AT * 3):
        decide(config, history, event(2, i * 0.1, user=f"v{i}"))
    assert len(history.reacted["join"]) <= PRUNE_AT + 1
    assert "v0" not in history.reacted["join"] and f"v{PRUNE_AT * 3 - 1}" in history.reacted["join"]


async def test_reactions_end_to_end_switched_per_room_and_every_silence_recorded(
    make_settings: Any, tmp_path: Path
) -> None:
    """A room's policy welcomes joins and thanks likes and gifts; the room's switch turns welcomes off
    within seconds; a comment nobody answers leaves a ``comment_skipped`` entry with its reason, the rest a
    count, and the metric counts both by reason."""
    policy = {
        "rules": [{"name": "price", "patterns": ["多少钱"], "replies": ["看购物车"]}],
        "reactions": {
            "join": {"templates": ["欢迎{user}！"], "per_room_per_minute": 600, "per_room_burst": 50},
            "gift": {
                "tiers": [
                    {"min_value": 0, "templates": ["谢谢{user}的{gift}"]},
                    {"min_value": 520, "templates": ["{user}的{gift}太贵重啦"]},
                ]
            },
        },
        "mask_user": "partial",
        "per_user_interval_s": 0,
        "dedup_window_s": 0,
    }
    async with softsugar_daemon(make_settings, tmp_path) as (daemon, box):
        assert (await daemon.api("PUT", "/api/policies/brand", policy))[0] == 200
        await daemon.configs.put(softsugar_room([{"kind": "always"}], room_id="r1", policy="brand"))
        workers = daemon.app[AUDIENCE].workers
        await until(lambda: _true("r1" in workers), 20)

        async def post(*events: dict[str, Any]) -> None:
            status, body = await daemon.api("POST", "/api/rooms/r1/events", {"events": list(events)})
            assert status == 200, body

        await post({"type": "join", "user": {"userId": "a", "name": "王小明"}})
        await post(
            {
                "type": "gift",
                "user": {"userId": "b", "name": "李雷"},
                "gift": {"giftName": "火箭", "giftNum": 1, "giftValue": 1000},
            }
        )

        async def said(text: str) -> bool:
            return any(text in line for line in await _said(daemon, box, "r1"))

        await until(lambda: said("欢迎王**！"), 10)
        await until(lambda: said("李**的火箭太贵重啦"), 10)

        # The room's own switch: no more welcomes here, whatever the policy says.
        status, body = await daemon.api("PUT", "/api/rooms/r1/reactions", {"join": False})
        assert (status, body["reactions"]) == (
            200,
            {"join": False, "like": True, "follow": True, "gift": True},
        )
        status, bad = await daemon.api("PUT", "/api/rooms/r1/reactions", {"join": "maybe"})
        assert (status, bad["error_code"]) == (422, "REACTIONS_INVALID") and "join" in bad["error_msg"]
        await until(lambda: _true(workers["r1"].desk.muted == {"join"}), 10)
        await post({"type": "join", "user": {"userId": "c", "name": "韩梅梅"}})
        await _comment(daemon, "r1", "今天天气真好", "viewer-1")  # no rule answers it

        async def recorded() -> bool:
            events = await daemon.store.events("r1", limit=500)
            return any(e["kind"] == "comment_skipped" for e in events) and any(
                e["kind"] == "unanswered" for e in events
            )

        await until(recorded, 10)
        events = await daemon.store.events("r1", limit=500)
        skipped = [e for e in events if e["kind"] == "comment_skipped"]
        assert [(e["reason"], e["text"], e["user_id"]) for e in skipped] == [
            ("no_rule", "今天天气真好", "viewer-1")
        ]
        counted = [e for e in events if e["kind"] == "unanswered"]
        assert counted[0]["message"]["join"] == {"disabled": 1}
        assert not await said("韩**")
        metrics = daemon.app[AUDIENCE].metrics
        assert metrics.unanswered.labels("no_rule")._value.get() == 1
        assert metrics.unanswered.labels("disabled")._value.get() == 1
