"""What the benchmark's own servers share: listening on loopback until killed, on the daemon's event loop."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any

from aiohttp import web

from orchestrator.cli import loop_factory


async def serve_forever(runner: web.BaseRunner, port: int) -> None:
    """Set ``runner`` up and serve it on 127.0.0.1:``port`` until the process is killed."""
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


def run(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` on the event loop the daemon under test uses (``ORCH_SERVER__EVENT_LOOP``, as
    ``orchestrator run`` reads it)."""
    with asyncio.Runner(
        loop_factory=loop_factory(os.environ.get("ORCH_SERVER__EVENT_LOOP", "uvloop"))
    ) as runner:
        runner.run(main)
