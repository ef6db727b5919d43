"""Serve the real application through the daemon's own runner on a free loopback port."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

from orchestrator.settings import Settings
from orchestrator.web.server import make_runner


@asynccontextmanager
async def serving(
    app: web.Application, settings: Settings, *, port: int = 0, **runner_kwargs: Any
) -> AsyncIterator[str]:
    """Yield the base URL (``http://127.0.0.1:PORT``) while ``app`` is served; shut down gracefully after."""
    runner = make_runner(app, settings, **runner_kwargs)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", port)
        await site.start()
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def serving_plain(app: web.Application) -> AsyncIterator[str]:
    """Serve a small test application (a fake peer: webhook receiver, slow vendor) on a free port."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)  # a held request is not waited for
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()
