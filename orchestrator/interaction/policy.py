"""The reply policy: which audience comments get a spoken answer, and which answer. Pure.

Given the policy configuration, the room's recent reply history and one audience event, :func:`decide`
returns a :class:`Decision` -- a reply text and its priority, or the reason for silence -- and records what
it decided in the history it was given (so the caller owns all state; nothing here does I/O):

0. **blocked users** (per room and global, :mod:`orchestrator.interaction.blocklists`): silence for
   every kind of event;
1. **forbidden words** in the incoming text: silence (no echo of abuse);
2. **reactions** to the other event kinds (:func:`react`): a welcome on join, thanks on like and follow
   (priority ``reaction``), thanks on a gift by its value's tier (priority ``gift``) -- each kind with its
   own switch, per-user interval and per-room rate, a random variant of its templates (never the same one
   twice in a row);
3. **keyword/regex rules** -- the vendor's HitCondition/TriggerProcess semantics: the smallest
   ``priority`` among matching rules wins; its ``time_window_s`` suppresses repeats (-1 once per live,
   0 never, n seconds);
4. **FAQ** entries matched fuzzily (containment, or a similarity ratio ≥ ``faq_threshold`` over
   normalised text -- characters, so it works for Chinese);
5. templates fill ``{user}`` (masked per ``mask_user``: ``partial`` says 张三丰 as 张**) and ``{product}``
   (the current paragraph's product, from SHOOT_SCRIPT_SWITCH);
6. **rate limits**: one reply per user per ``per_user_interval_s``; per room, ``per_room_per_minute`` on
   average and at most ``per_room_burst`` at once (a token bucket: a busy room speaks steadily instead of
   answering a burst and then falling silent for a minute -- its reply queue would drop most of a burst);
7. **deduplication**: the same question (normalised) answered once per ``dedup_window_s``;
8. **forbidden words** in our own reply: silence (the vendor would say it aloud).

Every silence carries a :class:`Skip` code (``Decision.code``) besides its sentence: what the room's
event stream and the ``orch_audience_unanswered_total`` metric count it by.

The history keeps per-user and per-question times only as long as they matter: beyond
:data:`PRUNE_AT` entries, those older than their window are forgotten (a 24/7 room meets millions of
viewers).
"""

from __future__ import annotations

import functools
import random
import re
import unicodedata
from dataclasses import dataclass, field
from difflib import SequenceMatcher
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from orchestrator.domain import PRIORITIES, Priority
from orchestrator.scheduling.schedules import CronExpression

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


class Reaction(_Model):
    """The reaction to one kind of audience event (a welcome, a thanks)."""

    enabled: bool = True
    templates: list[str] = Field(..., min_length=1, description="Variants, one chosen at random.")
    per_user_interval_s: float = Field(600.0, ge=0, description="One reaction per viewer per this long.")
    per_room_per_minute: float = Field(4.0, gt=0, le=600, description="Reactions of this kind, on average.")
    per_room_burst: int = Field(1, ge=1, le=100, description="... and at most this many at once.")

    @field_validator("templates")
    @classmethod
    def _filled(cls, templates: list[str]) -> list[str]:
        if any(not t.strip() for t in templates):
            raise ValueError("a template must not be empty")
        return templates


class GiftTier(_Model):
    min_value: int = Field(0, ge=0, description="Gifts worth at least this (total value) get this tier.")
    templates: list[str] = Field(..., min_length=1)


class GiftThanks(_Model):
    """Thanks for gifts: the highest tier whose ``min_value`` the gift's total value reaches."""

    enabled: bool = True
    tiers: list[GiftTier] = Field(..., min_length=1)
    per_user_interval_s: float = Field(0.0, ge=0)
    per_room_per_minute: float = Field(12.0, gt=0, le=600)
    per_room_burst: int = Field(3, ge=1, le=100)

    @field_validator("tiers")
    @classmethod
    def _ascending(cls, tiers: list[GiftTier]) -> list[GiftTier]:
        values = [t.min_value for t in tiers]
        if values != sorted(set(values)):
            raise ValueError("tiers must be in ascending order of min_value, each value once")
        return tiers


class Reactions(_Model):
    """Reactions by event kind; a kind left out gets none."""

    join: Reaction | None = None
    like: Reaction | None = None
    follow: Reaction | None = None
    gift: GiftThanks | None = None


class TimedMessage(_Model):
    """Lines said on a timetable while the room is live: at every match of ``cron`` (the room's local
    time), or every ``every_min`` minutes give or take ``jitter_s``; its lines in turn."""

    name: str = Field(..., min_length=1, max_length=64)
    lines: list[str] = Field(..., min_length=1)
    cron: CronExpression | None = Field(None, description="5-field cron, in the room's time zone")
    every_min: float | None = Field(None, gt=0, le=1440)
    jitter_s: float = Field(0.0, ge=0, description="each interval drawn within +/- this")

    @model_validator(mode="after")
    def _one_timetable(self) -> TimedMessage:
        if (self.cron is None) == (self.every_min is None):
            raise ValueError("give exactly one of cron or every_min")
        if self.cron is not None and self.jitter_s:
            raise ValueError("jitter_s goes with every_min")
        if self.every_min is not None and self.jitter_s * 2 >= self.every_min * 60:
            raise ValueError("jitter_s must be under half of every_min")
        return self


class IdleLines(_Model):
    """Lines said when nothing has been said for a while: after a random ``after_s`` to ``max_after_s``
    seconds without a reply, and only while at most ``max_waiting`` replies wait in the queue."""

    lines: list[str] = Field(..., min_length=1)
    after_s: float = Field(60.0, gt=0)
    max_after_s: float | None = Field(None, gt=0, description="none: exactly after_s")
    max_waiting: int = Field(0, ge=0, le=100)

    @model_validator(mode="after")
    def _range(self) -> IdleLines:
        if self.max_after_s is not None and self.max_after_s < self.after_s:
            raise ValueError("max_after_s must not be below after_s")
        return self


#: The audience event kinds a reaction answers, by LiveEvent type.
REACTION_KINDS: dict[int, str] = {2: "join", 3: "like", 4: "gift", 5: "follow"}

MaskMode = Literal["none", "partial", "hidden"]


class PolicyConfig(_Model):
    rules: list[KeywordRule] = Field(default_factory=list)
    faq: list[FaqEntry] = Field(default_factory=list)
    faq_threshold: float = Field(0.6, gt=0, le=1)
    #: The one-line gift thanks of earlier policies: a single tier (``reactions.gift`` replaces it).
    gift_thanks: str | None = "谢谢{user}送的{gift}！"
    reactions: Reactions = Field(default_factory=Reactions)
    mask_user: MaskMode = Field("none", description="{user} as given, 'partial' (张**) or 'hidden' (朋友).")
    timed: list[TimedMessage] = Field(default_factory=list)
    idle: IdleLines | None = Field(None, description="none: interaction.idle_after_s / idle_lines")

    @field_validator("timed")
    @classmethod
    def _names(cls, timed: list[TimedMessage]) -> list[TimedMessage]:
        names = [t.name for t in timed]
        if len(names) != len(set(names)):
            raise ValueError("timed messages need distinct names")
        return timed

    @model_validator(mode="after")
    def _no_forbidden_lines(self) -> PolicyConfig:
        """Our own fixed lines never hold a word the policy forbids (they would never be said)."""
        lines = [(f"timed.{i}.lines", line) for i, t in enumerate(self.timed) for line in t.lines]
        lines += [("idle.lines", line) for line in (self.idle.lines if self.idle else [])]
        for where, line in lines:
            if forbidden_in(line, self.forbidden_words):
                raise ValueError(f"{where}: {line!r} holds a forbidden word")
        return self

    per_user_interval_s: float = Field(30.0, ge=0)
    per_room_per_minute: int = Field(6, ge=1)
    per_room_burst: int = Field(3, ge=1)
    dedup_window_s: float = Field(60.0, ge=0)
    forbidden_words: list[str] = Field(default_factory=list)

    @property
    def gift_reaction(self) -> GiftThanks | None:
        """``reactions.gift``, else the one-line ``gift_thanks`` as a single tier."""
        if self.reactions.gift is not None or not self.gift_thanks:
            return self.reactions.gift
        return _one_line_gift_thanks(self.gift_thanks, self.per_user_interval_s)

    def reaction(self, kind: str) -> Reaction | GiftThanks | None:
        """The reaction to ``kind`` (join, like, follow, gift) when it is on; None when off or absent."""
        found = self.gift_reaction if kind == "gift" else getattr(self.reactions, kind)
        return found if found is not None and found.enabled else None


@functools.lru_cache(maxsize=256)
def _one_line_gift_thanks(template: str, per_user_interval_s: float) -> GiftThanks:
    """The earlier policies' ``gift_thanks`` as a gift reaction (built once per line: asked per gift)."""
    return GiftThanks(tiers=[GiftTier(templates=[template])], per_user_interval_s=per_user_interval_s)


class Skip(StrEnum):
    """Why an audience event got no reply (``Decision.code``)."""

    NO_RULE = "no_rule"
    BLOCKED_USER = "blocked_user"
    FORBIDDEN_WORD = "forbidden_word"
    RATE_LIMITED = "rate_limited"
    DUPLICATE = "duplicate"
    QUEUE_FULL = "queue_full"
    DISABLED = "disabled"
    TOO_OLD = "too_old"
    REJECTED = "rejected"  # a reviewer rejected it, or it expired in review
    NOT_ANSWERED = "not_answered"  # an event kind nothing answers (viewer counts)


#: Beyond this many remembered viewers or questions, those older than their window are forgotten.
PRUNE_AT = 4096


@dataclass
class Bucket:
    """A token bucket: ``burst`` at most, refilled at ``per_minute``."""

    tokens: float | None = None  # None: full
    at: float = 0.0

    def level(self, now: float, per_minute: float, burst: int) -> float:
        if self.tokens is None:
            return float(burst)
        return min(float(burst), self.tokens + max(0.0, now - self.at) * per_minute / 60)

    def take(self, now: float, per_minute: float, burst: int) -> bool:
        level = self.level(now, per_minute, burst)
        if level < 1:
            return False
        self.tokens, self.at = level - 1, now
        return True


@dataclass
class History:
    """One room's reply history: what the policy needs to remember between events (the caller keeps it)."""

    rule_fired: dict[str, float] = field(default_factory=dict)
    user_replied: dict[str, float] = field(default_factory=dict)
    room_budget: Bucket = field(default_factory=Bucket)  # the room's answers (token bucket)
    questions: dict[str, float] = field(default_factory=dict)
    reply_cursor: dict[str, int] = field(default_factory=dict)
    #: Per reaction kind: when each viewer last got one, the kind's budget, the variant said last.
    reacted: dict[str, dict[str, float]] = field(default_factory=dict)
    reaction_buckets: dict[str, Bucket] = field(default_factory=dict)
    last_variant: dict[str, str] = field(default_factory=dict)
    rng: random.Random = field(default_factory=random.Random)


def remember(times: dict[str, float], key: str, at: float, keep_s: float) -> None:
    """``times[key] = at``, forgetting entries older than ``keep_s`` once there are :data:`PRUNE_AT`."""
    times[key] = at
    if len(times) > PRUNE_AT:
        for old in [k for k, t in times.items() if at - t >= keep_s]:
            del times[old]


@dataclass(slots=True)  # not frozen: built for every audience event, and frozen fields cost ~2x to set
class Event:
    """An audience event, normalised: 1 comment, 2 join, 3 like, 4 gift, 5 follow, 6 viewer count."""

    type: int
    user_id: str
    user_name: str
    text: str = ""
    gift_name: str = ""
    gift_num: int = 0
    at: float = 0.0  # seconds
    gift_value: int = 0  # the gift's total value (the platform's unit)


@dataclass(slots=True)  # as Event: one per audience event; treat as immutable
class Decision:
    reply: str | None
    reason: str
    priority: Priority = "question"
    rule: str | None = None
    code: Skip | None = None  # why not, when it does not speak

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


def mask(name: str, mode: MaskMode) -> str:
    """A viewer's name as said aloud: as given, ``partial`` (the first character and ``**``: the length
    is not told either) or ``hidden``; an empty name is 朋友 ("friend") in every mode."""
    name = name.strip()
    if not name or mode == "hidden":
        return "朋友"
    if mode == "partial":
        return name[0] + "**" if len(name) > 1 else "*"
    return name


def _fill(template: str, user: str, product: str, gift: str = "", mode: MaskMode = "none") -> str:
    values = {"user": mask(user, mode), "product": product or "这款商品", "gift": gift}
    return re.sub(r"\{(user|product|gift)\}", lambda m: values[m.group(1)], template)


def forbidden_in(text: str, words: list[str]) -> bool:
    """Whether ``text`` holds one of ``words`` (compared normalised)."""
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
    if event.type in REACTION_KINDS:
        return react(config, history, event, product=product)
    if event.type != 1 or not event.text.strip():
        return Decision(None, "not a comment", code=Skip.NOT_ANSWERED)
    if _room_limit_reached(config, history, event.at):  # before any matching: the busy room's fast path
        return Decision(None, ROOM_LIMIT, code=Skip.RATE_LIMITED)
    if forbidden_in(event.text, config.forbidden_words):
        return Decision(None, "forbidden word in the comment", code=Skip.FORBIDDEN_WORD)
    question = normalise(event.text)
    asked = history.questions.get(question)
    if asked is not None and event.at - asked < config.dedup_window_s:
        return Decision(None, "same question answered recently", code=Skip.DUPLICATE)
    matching = [r for r in config.rules if _rule_matches(r, event.text)]
    for rule in sorted(matching, key=lambda r: r.priority):
        if _suppressed(rule.time_window_s, history.rule_fired.get(rule.name), event.at):
            continue
        cursor = history.reply_cursor.get(rule.name, 0)
        template = rule.replies[cursor % len(rule.replies)]
        text = _fill(template, event.user_name, product, mode=config.mask_user)
        decision = _speak(config, history, event, text, "question", rule.name, question)
        if decision.speaks:
            history.rule_fired[rule.name] = event.at
            history.reply_cursor[rule.name] = cursor + 1
        return decision
    if matching:
        return Decision(None, "matching rules are in their suppression window", code=Skip.RATE_LIMITED)
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
            _fill(best[1].answer, event.user_name, product, mode=config.mask_user),
            "question",
            f"faq:{best[1].question}",
            question,
        )
    return Decision(None, NOTHING_TO_ANSWER, code=Skip.NO_RULE)


def react(config: PolicyConfig, history: History, event: Event, *, product: str = "") -> Decision:
    """The reaction to a join, like, follow or gift (or why none), recorded in ``history``."""
    kind = REACTION_KINDS[event.type]
    reaction = config.reaction(kind)
    priority: Priority = "gift" if kind == "gift" else "reaction"
    if reaction is None:
        return Decision(None, f"no {kind} reaction", priority, kind, Skip.DISABLED)
    if isinstance(reaction, GiftThanks):
        tier = next((t for t in reversed(reaction.tiers) if event.gift_value >= t.min_value), None)
        if tier is None:
            return Decision(None, "the gift is below every tier", priority, kind, Skip.NO_RULE)
        templates, rule = tier.templates, f"gift:{tier.min_value}"
    else:
        templates, rule = reaction.templates, kind
    reacted = history.reacted.setdefault(kind, {})
    last = reacted.get(event.user_id)
    if last is not None and event.at - last < reaction.per_user_interval_s:
        recently = f"this viewer got a {kind} reaction recently"
        return Decision(None, recently, priority, rule, Skip.RATE_LIMITED)
    bucket = history.reaction_buckets.setdefault(kind, Bucket())
    if bucket.level(event.at, reaction.per_room_per_minute, reaction.per_room_burst) < 1:
        return Decision(None, f"room {kind} reaction rate limit reached", priority, rule, Skip.RATE_LIMITED)
    text = _fill(
        _variant(history, rule, templates), event.user_name, product, event.gift_name, config.mask_user
    )
    if forbidden_in(text, config.forbidden_words):
        return Decision(None, "forbidden word in our own reply", priority, rule, Skip.FORBIDDEN_WORD)
    bucket.take(event.at, reaction.per_room_per_minute, reaction.per_room_burst)
    remember(reacted, event.user_id, event.at, reaction.per_user_interval_s)
    return Decision(text, "answered", priority, rule)


def _variant(history: History, key: str, templates: list[str]) -> str:
    """A template chosen at random, never the one said last for ``key`` (when there is another)."""
    choices = [t for t in templates if t != history.last_variant.get(key)] or templates
    chosen = history.rng.choice(choices)
    history.last_variant[key] = chosen
    return chosen


def speak(config: PolicyConfig, history: History, event: Event, text: str, *, rule: str) -> Decision:
    """An answer found elsewhere (an LLM) for a comment :func:`decide` had none for, put through the same
    rate limits, deduplication and forbidden-word check of our own reply."""
    question = normalise(event.text)
    asked = history.questions.get(question)
    if asked is not None and event.at - asked < config.dedup_window_s:
        return Decision(None, "same question answered recently", code=Skip.DUPLICATE)
    return _speak(config, history, event, text, "question", rule, question)


def looks_like_question(text: str) -> bool:
    """Worth asking an LLM about: a question mark or a common Chinese question word."""
    return bool(_QUESTION.search(text))


_QUESTION = re.compile(r"[?？]|吗|呢|什么|怎么|多少|几|哪|为什么|如何|能不能|可不可以|有没有")


def _room_limit_reached(config: PolicyConfig, history: History, now: float) -> bool:
    """Whether the room's answer budget (``per_room_burst`` at most, refilled at ``per_room_per_minute``)
    is spent."""
    return history.room_budget.level(now, config.per_room_per_minute, config.per_room_burst) < 1


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
        return Decision(None, "this user was answered recently", priority, rule, Skip.RATE_LIMITED)
    if _room_limit_reached(config, history, event.at):
        return Decision(None, ROOM_LIMIT, priority, rule, Skip.RATE_LIMITED)
    if forbidden_in(text, config.forbidden_words):
        return Decision(None, "forbidden word in our own reply", priority, rule, Skip.FORBIDDEN_WORD)
    remember(history.user_replied, event.user_id, event.at, config.per_user_interval_s)
    history.room_budget.take(event.at, config.per_room_per_minute, config.per_room_burst)
    if question is not None:
        remember(history.questions, question, event.at, config.dedup_window_s)
    return Decision(text, "answered", priority, rule)
