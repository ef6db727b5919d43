"""The reply policy: which audience comments get a spoken answer, and which answer. Pure.

Given the policy configuration, the room's recent reply history and one audience event, :func:`decide`
returns a :class:`Decision` -- a reply text and its priority, or the reason for silence -- and records what
it decided in the history it was given (so the caller owns all state; nothing here does I/O):

1. **forbidden words** in the incoming text: silence (no echo of abuse);
2. **gift thanks** for gifts (priority ``gift``), from a template;
3. **keyword/regex rules** -- the vendor's HitCondition/TriggerProcess semantics: the smallest
   ``priority`` among matching rules wins; its ``time_window_s`` suppresses repeats (-1 once per live,
   0 never, n seconds);
4. **FAQ** entries matched fuzzily (containment, or a similarity ratio ≥ ``faq_threshold`` over
   normalised text -- characters, so it works for Chinese);
5. templates fill ``{user}`` and ``{product}`` (the current paragraph's product, from SHOOT_SCRIPT_SWITCH);
6. **rate limits**: one reply per user per ``per_user_interval_s``; per room, ``per_room_per_minute`` on
   average and at most ``per_room_burst`` at once (a token bucket: a busy room speaks steadily instead of
   answering a burst and then falling silent for a minute -- its reply queue would drop most of a burst);
7. **deduplication**: the same question (normalised) answered once per ``dedup_window_s``;
8. **forbidden words** in our own reply: silence (the vendor would say it aloud).
"""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass, field
from difflib import SequenceMatcher
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from orchestrator.domain import PRIORITIES, Priority

PRIORITY_ORDER: dict[str, int] = {p: i for i, p in enumerate(PRIORITIES)}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KeywordRule(_Model):
    name: str
    match: Literal["keyword", "regex"] = "keyword"
    patterns: list[str] = Field(..., min_length=1)
    priority: int = Field(500, ge=0, le=999)
    time_window_s: int = Field(0, ge=-1, le=7200)
    replies: list[str] = Field(..., min_length=1)

    @field_validator("patterns")
    @classmethod
    def _compile(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"pattern {pattern!r} is not a valid regular expression: {exc}") from None
        return patterns


class FaqEntry(_Model):
    question: str = Field(..., min_length=1)
    aliases: list[str] = Field(default_factory=list)
    answer: str = Field(..., min_length=1)


class PolicyConfig(_Model):
    rules: list[KeywordRule] = Field(default_factory=list)
    faq: list[FaqEntry] = Field(default_factory=list)
    faq_threshold: float = Field(0.6, gt=0, le=1)
    gift_thanks: str | None = "谢谢{user}送的{gift}！"
    per_user_interval_s: float = Field(30.0, ge=0)
    per_room_per_minute: int = Field(6, ge=1)
    per_room_burst: int = Field(3, ge=1)
    dedup_window_s: float = Field(60.0, ge=0)
    forbidden_words: list[str] = Field(default_factory=list)


@dataclass
class History:
    """One room's reply history: what the policy needs to remember between events (the caller keeps it)."""

    rule_fired: dict[str, float] = field(default_factory=dict)
    user_replied: dict[str, float] = field(default_factory=dict)
    room_tokens: float | None = None  # the room's reply budget (token bucket); None: full
    room_tokens_at: float = 0.0
    questions: dict[str, float] = field(default_factory=dict)
    reply_cursor: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Event:
    """An audience event, normalised: 1 comment, 2 join, 3 like, 4 gift, 6 viewer count."""

    type: int
    user_id: str
    user_name: str
    text: str = ""
    gift_name: str = ""
    gift_num: int = 0
    at: float = 0.0  # seconds


@dataclass(frozen=True)
class Decision:
    reply: str | None
    reason: str
    priority: Priority = "question"
    rule: str | None = None

    @property
    def speaks(self) -> bool:
        return self.reply is not None


_PUNCTUATION = re.compile(r"[\W_]+", re.UNICODE)
NOTHING_TO_ANSWER = "nothing to answer"
ROOM_LIMIT = "room reply rate limit reached"


@functools.lru_cache(maxsize=8192)  # FAQ questions, patterns and the audience's common lines recur
def normalise(text: str) -> str:
    """Lower-case, width-folded (NFKC), without punctuation or spaces: how questions are compared."""
    return _PUNCTUATION.sub("", unicodedata.normalize("NFKC", text).lower())


def similarity(a: str, b: str) -> float:
    """1.0 when one normalised text contains the other, else difflib's ratio (pure)."""
    na, nb = normalise(a), normalise(b)
    if not na or not nb:
        return 0.0
    if na in nb or nb in na:
        return 1.0
    return SequenceMatcher(None, na, nb).ratio()


def _fill(template: str, user: str, product: str, gift: str = "") -> str:
    values = {"user": user, "product": product or "这款商品", "gift": gift}
    return re.sub(r"\{(user|product|gift)\}", lambda m: values[m.group(1)], template)


def _forbidden(text: str, words: list[str]) -> bool:
    folded = normalise(text)
    return any(normalise(w) and normalise(w) in folded for w in words)


def _rule_matches(rule: KeywordRule, text: str) -> bool:
    if rule.match == "regex":
        return any(re.search(p, text) for p in rule.patterns)
    folded = normalise(text)
    return any(normalise(p) in folded for p in rule.patterns)


def _suppressed(window: int, last: float | None, now: float) -> bool:
    if last is None or window == 0:
        return False
    return window == -1 or now - last < window


def decide(
    config: PolicyConfig, history: History, event: Event, *, product: str = "", faq: bool = True
) -> Decision:
    """The reply to ``event`` (or why none), recording it in ``history``. With ``faq=False`` the FAQ is
    not consulted (the caller asks an LLM first, see :func:`speak`), and "nothing to answer" means: ask."""
    if event.type == 4:
        if not config.gift_thanks:
            return Decision(None, "gift thanks disabled", "gift")
        return _speak(
            config,
            history,
            event,
            _fill(config.gift_thanks, event.user_name, product, event.gift_name),
            "gift",
            None,
            question=None,
        )
    if event.type != 1 or not event.text.strip():
        return Decision(None, "not a comment")
    if _room_limit_reached(config, history, event.at):  # before any matching: the busy room's fast path
        return Decision(None, ROOM_LIMIT)
    if _forbidden(event.text, config.forbidden_words):
        return Decision(None, "forbidden word in the comment")
    question = normalise(event.text)
    asked = history.questions.get(question)
    if asked is not None and event.at - asked < config.dedup_window_s:
        return Decision(None, "same question answered recently")
    matching = [r for r in config.rules if _rule_matches(r, event.text)]
    for rule in sorted(matching, key=lambda r: r.priority):
        if _suppressed(rule.time_window_s, history.rule_fired.get(rule.name), event.at):
            continue
        cursor = history.reply_cursor.get(rule.name, 0)
        text = _fill(rule.replies[cursor % len(rule.replies)], event.user_name, product)
        decision = _speak(config, history, event, text, "question", rule.name, question)
        if decision.speaks:
            history.rule_fired[rule.name] = event.at
            history.reply_cursor[rule.name] = cursor + 1
        return decision
    if matching:
        return Decision(None, "matching rules are in their suppression window")
    best = max(
        ((max(similarity(event.text, q) for q in (faq.question, *faq.aliases)), faq) for faq in config.faq),
        key=lambda pair: pair[0],
        default=(0.0, None),
    )
    if faq and best[1] is not None and best[0] >= config.faq_threshold:
        return _speak(
            config,
            history,
            event,
            _fill(best[1].answer, event.user_name, product),
            "question",
            f"faq:{best[1].question}",
            question,
        )
    return Decision(None, NOTHING_TO_ANSWER)


def speak(config: PolicyConfig, history: History, event: Event, text: str, *, rule: str) -> Decision:
    """An answer found elsewhere (an LLM) for a comment :func:`decide` had none for, put through the same
    rate limits, deduplication and forbidden-word check of our own reply."""
    question = normalise(event.text)
    asked = history.questions.get(question)
    if asked is not None and event.at - asked < config.dedup_window_s:
        return Decision(None, "same question answered recently")
    return _speak(config, history, event, text, "question", rule, question)


def looks_like_question(text: str) -> bool:
    """Worth asking an LLM about: a question mark or a common Chinese question word."""
    return bool(_QUESTION.search(text))


_QUESTION = re.compile(r"[?？]|吗|呢|什么|怎么|多少|几|哪|为什么|如何|能不能|可不可以|有没有")


def _room_tokens(config: PolicyConfig, history: History, now: float) -> float:
    """The room's reply budget now: ``per_room_burst`` at most, refilled at ``per_room_per_minute``."""
    if history.room_tokens is None:
        return float(config.per_room_burst)
    refill = max(0.0, now - history.room_tokens_at) * config.per_room_per_minute / 60
    return min(float(config.per_room_burst), history.room_tokens + refill)


def _room_limit_reached(config: PolicyConfig, history: History, now: float) -> bool:
    return _room_tokens(config, history, now) < 1


def _speak(
    config: PolicyConfig,
    history: History,
    event: Event,
    text: str,
    priority: Priority,
    rule: str | None,
    question: str | None,
) -> Decision:
    last = history.user_replied.get(event.user_id)
    if last is not None and event.at - last < config.per_user_interval_s:
        return Decision(None, "this user was answered recently", priority, rule)
    if _room_limit_reached(config, history, event.at):
        return Decision(None, ROOM_LIMIT, priority, rule)
    if _forbidden(text, config.forbidden_words):
        return Decision(None, "forbidden word in our own reply", priority, rule)
    history.user_replied[event.user_id] = event.at
    history.room_tokens = _room_tokens(config, history, event.at) - 1
    history.room_tokens_at = event.at
    if question is not None:
        history.questions[question] = event.at
    return Decision(text, "answered", priority, rule)
