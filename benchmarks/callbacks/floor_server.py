"""Floor (c): the daemon's own application -- same middleware, runner and JSON access log as ``orchestrator
run`` -- with a trivial handler that reads the body and answers 200. Whatever (b) costs beyond this is the
receiver's work; what this costs beyond (a) is the price of the HTTP plumbing every route shares."""

from __future__ import annotations

import os
import sys

from aiohttp import web
from serving import run, serve_forever

from orchestrator.app import create_app
from orchestrator.logging import Redactor, configure_logging
from orchestrator.settings import load_settings
from orchestrator.web.server import make_runner


async def ok(request: web.Request) -> web.Response:
    await request.read()
    return web.json_response({"result": "ok"})


async def main(port: int) -> None:
    settings = load_settings(None, redis={"url": os.environ["ORCH_REDIS__URL"]}, logging={"format": "json"})
    configure_logging(settings.logging, Redactor(), stream=sys.stderr)
    app = create_app(settings)
    app.router.add_post("/floor", ok)
    runner = make_runner(app, settings)
    await serve_forever(runner, port)


if __name__ == "__main__":
    run(main(int(sys.argv[1])))
