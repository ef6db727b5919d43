"""The reply desk: where every reply is decided, whoever asks.

A reply can be asked for by four sources; each comes here:

* the room's owner, for comments and gifts as they reach its ingest endpoint (:meth:`RoomDesk.consider`,
  before the write -- the policy's per-user interval and deduplication catch a retried request);
* the room's worker, for comments and gifts it reads from the ingest stream that nobody decided yet
  (written elsewhere, or by a bridge): :meth:`RoomDesk.consider` too -- never for entries reclaimed from
  a predecessor, which may have answered them;
* the vendor, when one of its rules hands a comment to the daemon (MetaStudio's CALLBACK-mode rules):
  :meth:`ReplyDesk.answer_vendor_rule` -- the rule chose it, so when the policy has no answer, the chat
  backend's or the fallback line is said;
* the vendor, asking the daemon as its avatar's brain (MetaStudio's third-party LLM callback):
  :meth:`ReplyDesk.answer_question`.

The policy (:mod:`orchestrator.interaction.policy`) decides; a question no rule answers goes to the room's
answer backend -- the vendor's own where the room has one (a SoftSugar room's Q&A database), else the
optional chat backend -- at most :data:`CHAT_CONCURRENCY` at once per room; the FAQ on failure, on timeout
or when busy. Each room keeps its own history (rate limits, deduplication) and its current product -- the
paragraph's product, as the room's state has it when the paragraph changes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any
from zoneinfo import ZoneInfo

import structlog

from orchestrator import clock
from orchestrator.domain import AnswerUnavailable
from orchestrator.interaction.blocklists import BlockBook
from orchestrator.interaction.chat import ChatBackend, ChatUnavailable
from orchestrator.interaction.ingest import count_of
from orchestrator.interaction.policies import PolicyBook
from orchestrator.interaction.policy import (
    NOTHING_TO_ANSWER,
    REACTION_KINDS,
    Decision,
    Event,
    History,
    PolicyConfig,
    Skip,
    decide,
    looks_like_question,
    speak,
)
from orchestrator.providers.base import Answerer
from orchestrator.scheduling.schedules import zone
from orchestrator.settings import InteractionSettings

log = structlog.get_logger(__name__)

CHAT_CONCURRENCY = 4
#: Why a reaction kind got nothing: off in the room, or not in its policy.
_OFF = {
    kind: Decision(None, f"no {kind} reactions in this room", code=Skip.DISABLED)
    for kind in REACTION_KINDS.values()
}

#: Where a room's decisions go: (when the event arrived, s; the event; the decision -- a reply or why none).
HandOver = Callable[[float, Event, Decision], None]


class ReplyDesk:
    """The replica's desk: the policies (the default one swapped on reload, the rooms' named ones kept
    current from Redis), the chat backend, the settings."""

    def __init__(
        self,
        book: PolicyBook,
        settings: InteractionSettings,
        chat: ChatBackend | None = None,
        *,
        blocks: BlockBook,
    ) -> None:
        self.book = book
        self.settings = settings
        self.chat = chat
        self.blocks = blocks

    async def answer_vendor_rule(
        self, history: History, event: Event, product: str, *, policy: PolicyConfig
    ) -> Decision:
        """A comment a vendor's rule chose for an answer: the room's policy's, else the chat backend's, else
        the fallback line (its rate limits and deduplication still apply: a comment answered from the
        audience stream is not answered twice)."""
        decision = decide(policy, history, event, product=product)
        if decision.reason == NOTHING_TO_ANSWER:
            text = self.settings.llm_fallback
            if self.chat is not None:
                with contextlib.suppress(ChatUnavailable):
                    text = await self.chat.answer(event.text, product=product)
            decision = speak(policy, history, event, text, rule="vendor_rule")
        return decision

    def answer_question(self, question: str, *, user: str, policy: PolicyConfig | None = None) -> str:
        """The vendor asks as its avatar's brain: the room's policy's answer (the default policy's when the
        room is not known), else the fallback line."""
        event = Event(type=1, user_id=user, user_name="", text=question, at=clock.time())
        decision = decide(policy or self.book.default, History(), event)
        return decision.reply or self.settings.llm_fallback


class RoomDesk:
    """One room's replies being decided: its history, its product, its questions out to its answer backend."""

    def __init__(
        self,
        desk: ReplyDesk,
        room_id: str,
        hand_over: HandOver,
        *,
        product: str = "",
        policy: str | None = None,
    ) -> None:
        self.desk = desk
        self.room_id = room_id
        #: The name of the policy the room answers by (None: the default one).
        self.policy_name = policy
        #: Reaction kinds switched off for this room (its state's ``muted``), whatever its policy says.
        self.muted: frozenset[str] = frozenset()
        #: The room's time zone (its schedule's): when its timed messages' cron expressions match.
        self.timezone = "UTC"
        #: Review mode: automatic replies wait this long for a human's approval (0: said at once).
        self.review_s = 0.0
        self.history = History()
        self.product = product
        #: The vendor's answer backend for this room's job (its Q&A database), set when the worker starts.
        self.own_answers: Answerer | None = None
        self._hand_over = hand_over
        self._chats = asyncio.Semaphore(CHAT_CONCURRENCY)
        self._chat_tasks: set[asyncio.Task[None]] = set()

    def consider(
        self, event_type: int, timestamp_ms: int, content: dict[str, Any], *, since_s: float
    ) -> None:
        """The policy on one audience event (pure CPU, nothing awaited: a room's replies never hold up the
        reading of every room's stream); the decision -- a reply, or why none -- is handed over, a question
        for the chat backend asked in the background."""
        desk = self.desk
        at_s = timestamp_ms / 1000
        kind = REACTION_KINDS.get(event_type)
        if kind is not None and (kind in self.muted or self.policy.reaction(kind) is None):
            # Off here, or not in the room's policy: no reply, whoever it is from (the common case of likes
            # in a busy room -- decided without reading the event).
            self._hand_over(since_s, Event(event_type, "", "", at=at_s), _OFF[kind])
            return
        try:
            user = content.get("user") or {}
            event = Event(
                type=event_type,
                user_id=str(user.get("userId", "")),
                user_name=str(user.get("name", "")),
                text=str(content.get("content") or ""),
                at=at_s,
            )
            if event_type == 4:
                gift = content.get("gift") or {}
                event.gift_name = str(gift.get("giftName", ""))
                event.gift_num = count_of(gift.get("giftNum"))
                total = gift.get("totalValue")
                event.gift_value = (
                    count_of(total) if total is not None else event.gift_num * count_of(gift.get("giftValue"))
                )
        except (AttributeError, TypeError, ValueError):
            return
        if desk.blocks.blocked(self.room_id, event.user_id):
            self._hand_over(since_s, event, Decision(None, "the viewer is blocked", code=Skip.BLOCKED_USER))
            return
        if clock.time() - at_s > desk.settings.reply_max_age_s:
            self._hand_over(since_s, event, Decision(None, "too old to answer", code=Skip.TOO_OLD))
            return
        chat = self.answers
        policy = self.policy
        decision = decide(policy, self.history, event, product=self.product, faq=chat is None)
        if decision.reason == NOTHING_TO_ANSWER and chat is not None:
            if looks_like_question(event.text) and not self._chats.locked():
                task = asyncio.create_task(self._ask_chat(chat, since_s, event), name=f"chat:{self.room_id}")
                self._chat_tasks.add(task)
                task.add_done_callback(self._chat_tasks.discard)
                return
            decision = decide(policy, self.history, event, product=self.product)
        self._hand_over(since_s, event, decision)

    @property
    def policy(self) -> PolicyConfig:
        """The policy the room answers by, as this replica holds it now."""
        return self.desk.book.policy_for(self.policy_name)

    def follow(self, policy: str | None, muted: frozenset[str], timezone: str, review_s: float) -> None:
        """What the room's state says now (the supervisor's every pass): in force at once."""
        self.policy_name, self.muted, self.timezone, self.review_s = policy, muted, timezone, review_s

    def zone(self) -> ZoneInfo:
        try:
            return zone(self.timezone)
        except ValueError:  # checked where the room was saved; never let a bad one stop the room
            return ZoneInfo("UTC")

    @property
    def answers(self) -> Answerer | None:
        """Who answers this room's questions the policy does not: the vendor's backend, else the chat's."""
        return self.own_answers or self.desk.chat

    async def _ask_chat(self, chat: Answerer, since_s: float, event: Event) -> None:
        rule = "chat" if chat is self.desk.chat else "vendor_qa"
        async with self._chats:
            try:
                answer = await chat.answer(event.text, user=event.user_id, product=self.product)
                decision = speak(self.policy, self.history, event, answer, rule=rule)
            except AnswerUnavailable as exc:
                log.info(
                    "answer backend unavailable; answering from the FAQ",
                    room_id=self.room_id,
                    backend=rule,
                    error=str(exc),
                )
                decision = decide(self.policy, self.history, event, product=self.product)
        self._hand_over(since_s, event, decision)

    def chat_tasks(self) -> list[asyncio.Task[None]]:
        return list(self._chat_tasks)
