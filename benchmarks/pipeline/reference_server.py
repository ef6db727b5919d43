"""The reference pipeline: the daemon's audience path built from the same parts with nothing else -- the
same-run limit the daemon's sustained ingest-with-reporting is measured against (issue 18, point 1).

* an aiohttp handler (same event loop) that parses the batch, turns each event into the vendor's form with
  the daemon's own ``normalise_batch`` (the vendor refuses anything else), and XADDs them all to the room's
  stream with one Lua call;
* one reader that XREADGROUPs every room's stream and POSTs batches of up to 1,000 events to the same
  sandbox endpoint the daemon reports to (the room's job's live-event report URL, read from the daemon's
  Redis), then XACKs and XDELs them.

No policy, no reply decisions, no leases, no retries, no metrics, no access log, no request middleware.

    python benchmarks/pipeline/reference_server.py PORT REDIS_URL ROOM...
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from typing import Any

import aiohttp
import orjson
import redis.asyncio as aioredis
from aiohttp import web

from orchestrator.cli import loop_factory
from orchestrator.interaction.ingest import normalise_batch
from orchestrator.store import keys

XADD_ALL = """
for i = 1, #ARGV do redis.call('XADD', KEYS[1], '*', 'e', ARGV[i]) end
return #ARGV
"""
GROUP = "ref"
BATCH = 1000

REDIS = web.AppKey("redis", aioredis.Redis)
SCRIPT = web.AppKey("script", Any)


def stream(room: str) -> str:
    return f"ref:{{{room}}}:ingest"


async def ingest(request: web.Request) -> web.Response:
    body = orjson.loads(await request.read())
    items = body["events"] if isinstance(body, dict) else body
    accepted, rejected = normalise_batch(items)
    args = [orjson.dumps({**e, "content": orjson.dumps(e["content"]).decode()}) for e in accepted]
    await request.app[SCRIPT](keys=[stream(request.match_info["room_id"])], args=args)
    return web.json_response({"accepted": len(accepted), "rejected": len(rejected)})


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def reader(redis: aioredis.Redis, rooms: list[str]) -> None:
    urls = {}
    for room in rooms:
        url = await redis.hget(keys.room_state(room), "report_url")
        assert url, f"room {room} has no report URL: is it live?"
        urls[stream(room)] = url.decode()
        with contextlib.suppress(aioredis.ResponseError):  # it exists
            await redis.xgroup_create(stream(room), GROUP, id="0", mkstream=True)
    streams = {s: ">" for s in urls}
    async with aiohttp.ClientSession() as http:
        while True:
            answer = await redis.xreadgroup(GROUP, "r", streams, count=BATCH, block=50)  # type: ignore[arg-type]
            for name, entries in answer or []:
                key = name.decode()
                events = b",".join(fields[b"e"] for _, fields in entries)
                body = b'{"total":%d,"events":[%s]}' % (len(entries), events)
                for _ in range(3):
                    async with http.post(
                        urls[key], data=body, headers={"Content-Type": "application/json"}
                    ) as resp:
                        if resp.status == 200:
                            break
                    # The report URL expired (the vendor gives a new one as it nears expiry; the daemon keeps it).
                    room = key[len("ref:{") : -len("}:ingest")]
                    urls[key] = (await redis.hget(keys.room_state(room), "report_url") or b"").decode()
                else:
                    raise RuntimeError(f"the sandbox refused a report: {resp.status}")
                ids = [entry_id for entry_id, _ in entries]
                pipe = redis.pipeline(transaction=False)
                pipe.xack(key, GROUP, *ids)
                pipe.xdel(key, *ids)
                await pipe.execute()


async def main(port: int, redis_url: str, rooms: list[str]) -> None:
    redis = aioredis.Redis.from_url(redis_url)
    app = web.Application(client_max_size=8 * 1024 * 1024)
    app[REDIS] = redis
    app[SCRIPT] = redis.register_script(XADD_ALL)
    app.router.add_post("/api/rooms/{room_id}/events", ingest)
    app.router.add_get("/healthz", health)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await reader(redis, rooms)


if __name__ == "__main__":
    with asyncio.Runner(
        loop_factory=loop_factory(os.environ.get("ORCH_SERVER__EVENT_LOOP", "uvloop"))
    ) as run:
        run.run(main(int(sys.argv[1]), sys.argv[2], sys.argv[3:]))
