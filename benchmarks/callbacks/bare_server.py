"""Baseline (a): a bare aiohttp handler that answers 200 -- nothing verified, parsed or stored."""

from __future__ import annotations

import sys

from aiohttp import web


async def ok(request: web.Request) -> web.Response:
    await request.read()
    return web.json_response({"result": "ok"})


def main() -> None:
    app = web.Application()
    app.router.add_post("/callbacks/metastudio/live-events", ok)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)


if __name__ == "__main__":
    main()
