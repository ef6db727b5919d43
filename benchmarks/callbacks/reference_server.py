"""Reference receiver (d): the callback path built from the same parts with nothing else -- the limit the
daemon's receiver is measured against besides the bare handler (issue 18, point 1).

A bare aiohttp application (no middleware, no access log) whose one handler does what acknowledging a
MetaStudio callback cannot do without: the MSS_A check (HMAC-SHA256 of the configured URL and ``hwTime``,
compared in constant time, the time within the skew), the JSON body and its ``message`` parsed, the body's
digest, and the durable write -- the daemon's own apply script through the daemon's own group commit
(``callback_batcher``), so that an acknowledgement means the same "in Redis" as the daemon's. What it
leaves out is what the daemon adds: profiles and key rotation, the provider codec and its validation of
every field, per-kind decoding, outcome handling (audit, journal fallback), metrics, logging, limits.

    python benchmarks/callbacks/reference_server.py PORT PUBLIC_URL KEY    (ORCH_REDIS__URL: the Redis)
"""

from __future__ import annotations

import hashlib
import hmac
import os
import sys
import time

import orjson
from aiohttp import web
from serving import run, serve_forever

from orchestrator.providers.metastudio.callbacks import QUERY_SECRET, QUERY_TIME, mss_a_signature
from orchestrator.settings import RedisSettings
from orchestrator.store.redis import create_redis
from orchestrator.store.rooms import CallbackWrite, callback_batcher

SKEW_MS = 3600 * 1000  # as the benchmark gives the daemon (callbacks.max_skew_s)
MAXLEN, SEEN_TTL_S = 10_000, 600


async def main(port: int, public_url: str, key: str) -> None:
    redis = create_redis(RedisSettings.model_validate({"url": os.environ["ORCH_REDIS__URL"]}))
    batcher = callback_batcher(redis, timeout_s=1.0)

    async def receive(request: web.Request) -> web.Response:
        query = dict(part.partition("=")[::2] for part in request.query_string.split("&"))  # hex: no escapes
        secret, signed_time = query.get(QUERY_SECRET, ""), query.get(QUERY_TIME, "")
        now_ms = int(time.time() * 1000)
        try:
            event_ms = int(signed_time, 16)
        except ValueError:
            return web.Response(status=401)
        expected = mss_a_signature(key, public_url, signed_time)
        if not hmac.compare_digest(secret, expected) or abs(now_ms - event_ms) > SKEW_MS:
            return web.Response(status=401)
        raw = await request.read()
        body = orjson.loads(raw)
        message = orjson.loads(body["message"])
        write = CallbackWrite(
            room_id=message["room_id"],
            callback_id=secret,
            event_type=body["event_type"],
            job_id=message["job_id"],
            event_ms=event_ms,
            received_ms=now_ms,
            message_json=body["message"],
            digest=hashlib.sha256(raw).hexdigest(),
            fields=(
                message.get("scene_script_name", ""),
                message.get("shoot_script_sequence_no", ""),
                message.get("shoot_script_title", ""),
                "",
                "",
            ),
            kind="paragraph",
            counter=body["event_type"],
        )
        outcome = await batcher.call(write.keys(), write.args(MAXLEN, SEEN_TTL_S))
        return web.Response(body=b'{"result":"%s"}' % outcome, content_type="application/json")

    app = web.Application()
    app.router.add_post(public_url.split("://", 1)[1].partition("/")[2].join(("/", "")), receive)
    runner = web.AppRunner(app, access_log=None)
    await serve_forever(runner, port)


if __name__ == "__main__":
    run(main(int(sys.argv[1]), sys.argv[2], sys.argv[3]))
