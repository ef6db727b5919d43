"""Running the application: listener, JSON errors below the application, graceful shutdown.

Shutdown order (aiohttp's ``AppRunner.cleanup``): stop listening → ``on_shutdown`` (readiness turns
false) → wait up to ``shutdown_timeout_s`` for in-flight requests → run the cleanup contexts (Redis
closes last). Signals are not handled here: the entry point sets ``stop`` on SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import structlog
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from orchestrator.logging import access_line
from orchestrator.settings import Settings
from orchestrator.web.errors import code_for_status, default_message, error_response
from orchestrator.web.middlewares import NO_ACCESS_LINE, REQUEST_ID
from orchestrator.web.public import PublicRoutes

log = structlog.get_logger(__name__)


class AccessLogger(AbstractAccessLogger):
    """One structured line per request; the query is logged as fields, so the redactor sees names.

    aiohttp's default format prints ``%r`` (the raw request line), which would carry ``hwSecret``.
    """

    def log(self, request: BaseRequest, response: web.StreamResponse, time: float) -> None:
        if request.get(NO_ACCESS_LINE):
            return
        access_line(
            {
                "method": request.method,
                "path": request.path,
                "query": dict(request.query) or None,
                "status": response.status,
                "bytes": response.body_length,
                "duration_ms": round(time * 1000, 2),
                "remote": request.remote,
                "request_id": request.get(REQUEST_ID),
            }
        )


class _JsonErrorRequestHandler(RequestHandler):
    """Protocol handler whose errors for unparseable requests are JSON, like every other error.

    A request line or header aiohttp cannot parse never reaches the application or its middlewares;
    aiohttp answers it from ``handle_error`` with a text page. This keeps its logging and connection
    handling and replaces only the body.
    """

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        super().handle_error(request, status, exc, message)  # logs, and refuses if already sent
        detail = message if status != 500 and message else default_message(status)
        response = error_response(status, code_for_status(status), detail, None)
        response.force_close()
        return response


class _JsonErrorServer(web.Server):
    def __call__(self) -> RequestHandler:
        return _JsonErrorRequestHandler(self, loop=self._loop, **self._kwargs)


class OrchestratorRunner(web.AppRunner):
    """An ``AppRunner`` whose low-level server answers parse errors with JSON bodies."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # Same object and layout; only the protocol factory differs (see _JsonErrorServer).
        server.__class__ = _JsonErrorServer
        return server


def make_runner(app: web.Application, settings: Settings, **kwargs: Any) -> OrchestratorRunner:
    return OrchestratorRunner(
        app,
        access_log_class=AccessLogger,
        access_log=logging.getLogger("aiohttp.access") if settings.logging.access_log else None,
        shutdown_timeout=settings.server.shutdown_timeout_s,
        keepalive_timeout=settings.server.keepalive_timeout_s,
        **kwargs,
    )


async def serve(app: web.Application, settings: Settings, stop: asyncio.Event) -> None:
    """Serve ``app`` on the configured address until ``stop`` is set, then shut down gracefully."""
    runner = make_runner(app, settings)
    await runner.setup()
    public: web.ServerRunner | None = None
    try:
        site = web.TCPSite(runner, settings.server.host, settings.server.port, reuse_address=True)
        await site.start()
        log.info("listening", host=settings.server.host, port=settings.server.port)
        if settings.server.public_port is not None:
            public = await start_public(app, settings)
        await stop.wait()
        log.info("shutting down", grace_s=settings.server.shutdown_timeout_s)
    finally:
        if public is not None:
            await public.cleanup()  # vendors first: their in-flight callbacks finish while Redis is open
        await runner.cleanup()
    log.info("stopped")


async def start_public(app: web.Application, settings: Settings) -> web.ServerRunner:
    """Start the public listener (:mod:`orchestrator.web.public`) on ``server.public_port`` beside the
    started ``app``; the caller cleans the returned runner up before ``app``'s."""
    public_port = settings.server.public_port
    server = _JsonErrorServer(
        PublicRoutes(app, settings),
        access_log_class=AccessLogger,
        access_log=logging.getLogger("aiohttp.access") if settings.logging.access_log else None,
        keepalive_timeout=settings.server.keepalive_timeout_s,
    )
    runner = web.ServerRunner(server, shutdown_timeout=settings.server.shutdown_timeout_s)
    await runner.setup()
    try:
        await web.TCPSite(runner, settings.server.host, public_port, reuse_address=True).start()
    except OSError:
        await runner.cleanup()
        raise
    log.info("listening (public routes)", host=settings.server.host, port=public_port)
    return runner
