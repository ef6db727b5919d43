"""Baseline (a): a bare aiohttp handler that answers 200 -- nothing verified, parsed or stored."""

from __future__ import annotations

import asyncio
import os
import sys

from aiohttp import web

from orchestrator.cli import loop_factory


async def ok(request: web.Request) -> web.Response:
    await request.read()
    return web.json_response({"result": "ok"})


def main() -> None:
    app = web.Application()
    app.router.add_post("/callbacks/metastudio/live-events", ok)
    # The same event loop as the daemon under test (ORCH_SERVER__EVENT_LOOP, as `orchestrator run` reads it).
    factory = loop_factory(os.environ.get("ORCH_SERVER__EVENT_LOOP", "uvloop"))
    loop = factory() if factory is not None else asyncio.new_event_loop()
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None, loop=loop)


if __name__ == "__main__":
    main()
