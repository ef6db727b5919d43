"""Replies waiting for a human's review (a room in review mode): ``orch:{room}:review`` (review id → the
reply, where it came from, when it was submitted and when it expires) and ``orch:{room}:review:exp`` (the
ids by expiry).

An item leaves the review once -- approved, rejected or expired -- whoever asks first: :meth:`Reviews.take`
is one atomic step (``HDEL`` answers 1 to one caller only), so two operators approving the same reply on
two replicas say it once. A room holds at most :data:`MAX_WAITING` items; beyond, the oldest leaves
(expired early).
"""

from __future__ import annotations

import itertools
import secrets
from dataclasses import dataclass
from typing import Any, cast

import orjson
import redis.asyncio as aioredis

from orchestrator import clock
from orchestrator.store import keys
from orchestrator.store.redis import text
from orchestrator.store.replies import Reply

MAX_WAITING = 100
_SEQUENCE = itertools.count()


def _new_id(now_ms: int) -> str:
    """A review id that sorts in submission order (on one replica; by the millisecond across them)."""
    return f"{now_ms:012x}{next(_SEQUENCE) % 0x1000000:06x}{secrets.token_hex(3)}"


@dataclass(frozen=True)
class Review:
    review_id: str
    reply: Reply
    source: str
    submitted_ms: int
    expires_ms: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "review_id": self.review_id,
            "text": self.reply.text,
            "priority": self.reply.priority,
            "source": self.source,
            "submitted_ms": self.submitted_ms,
            "expires_ms": self.expires_ms,
        }


def _encode(review: Review) -> bytes:
    return orjson.dumps(
        {
            "reply": orjson.loads(review.reply.to_json()),
            "source": review.source,
            "submitted_ms": review.submitted_ms,
            "expires_ms": review.expires_ms,
        }
    )


def _decode(review_id: str, raw: Any) -> Review:
    data = orjson.loads(raw)
    reply = Reply.from_json("", orjson.dumps(data["reply"]))
    return Review(review_id, reply, str(data["source"]), int(data["submitted_ms"]), int(data["expires_ms"]))


class Reviews:
    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis

    async def submit(self, room_id: str, items: list[tuple[Reply, str]], expire_s: float) -> list[Review]:
        """Put replies (with their sources) up for review, one round trip; the oldest beyond
        :data:`MAX_WAITING` are dropped (returned by the next :meth:`expire`: their expiry is now)."""
        now_ms = clock.time_ms()
        made = [
            Review(_new_id(now_ms), reply, source, now_ms, now_ms + max(1, int(expire_s * 1000)))
            for reply, source in items
        ]
        async with self._redis.pipeline(transaction=False) as pipe:
            for review in made:
                pipe.hset(keys.room_review(room_id), review.review_id, _encode(review))
                pipe.zadd(keys.room_review_expiry(room_id), {review.review_id: review.expires_ms})
            pipe.zrange(keys.room_review_expiry(room_id), 0, -MAX_WAITING - 1)
            *_, overflow = await pipe.execute()
        if overflow:  # the oldest leave first: due now
            await self._redis.zadd(keys.room_review_expiry(room_id), {text(i): 0 for i in overflow})
        return made

    async def waiting(self, room_id: str) -> list[Review]:
        """What waits for review and has not expired, oldest first."""
        now_ms = clock.time_ms()
        raw = await self._redis.hgetall(keys.room_review(room_id))
        found = [_decode(text(k), v) for k, v in raw.items()]
        return sorted(
            (r for r in found if r.expires_ms > now_ms), key=lambda r: (r.submitted_ms, r.review_id)
        )

    async def take(self, room_id: str, review_id: str) -> Review | None:
        """Take one item out of review (to approve or reject it); None if it is gone (decided, or expired
        and swept)."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hget(keys.room_review(room_id), review_id)
            pipe.hdel(keys.room_review(room_id), review_id)
            pipe.zrem(keys.room_review_expiry(room_id), review_id)
            raw, removed, _ = await pipe.execute()
        if not removed or raw is None:
            return None
        return _decode(review_id, raw)  # the caller looks whether its time was up

    async def expire(self, room_id: str) -> list[Review]:
        """Remove the items whose time is up; those removed here (once, whoever asks)."""
        due = cast(
            list[bytes],
            await self._redis.zrangebyscore(keys.room_review_expiry(room_id), "-inf", clock.time_ms()),
        )
        gone = [await self.take(room_id, text(raw_id)) for raw_id in due]
        return [review for review in gone if review is not None]
