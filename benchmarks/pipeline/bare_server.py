"""Baseline for the pipeline benchmark: a bare aiohttp handler that takes the same ingest request -- reads
and parses the JSON body, counts the events -- and answers 200, with no validation, no Redis, no reporting.

    python benchmarks/pipeline/bare_server.py PORT
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

from aiohttp import web

from orchestrator.cli import loop_factory


async def ingest(request: web.Request) -> web.Response:
    body = json.loads(await request.read())
    events = body["events"] if isinstance(body, dict) else body
    return web.json_response({"accepted": len(events), "rejected": []})


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def main() -> None:
    app = web.Application(client_max_size=8 * 1024 * 1024)
    app.router.add_post("/api/rooms/{room_id}/events", ingest)
    app.router.add_get("/healthz", health)
    # The same event loop as the daemon under test (ORCH_SERVER__EVENT_LOOP, as `orchestrator run` reads it).
    factory = loop_factory(os.environ.get("ORCH_SERVER__EVENT_LOOP", "uvloop"))
    loop = factory() if factory is not None else asyncio.new_event_loop()
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None, loop=loop)


if __name__ == "__main__":
    main()
