"""Running the application: listener, JSON errors below the application, graceful shutdown.

Shutdown order (aiohttp's ``AppRunner.cleanup``): stop listening → ``on_shutdown`` (readiness turns
false) → wait up to ``shutdown_timeout_s`` for in-flight requests → run the cleanup contexts (Redis
closes last). Signals are not handled here: the entry point sets ``stop`` on SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
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


class MalformedRequestLog:
    """At most ``per_minute`` WARNING lines a minute for requests from outside that cannot be parsed; the
    rest are counted and the count said with the next line that gets out. Never a traceback: a malformed
    request is the client's fault, and 100,000 of them must not become 100,000 tracebacks."""

    def __init__(self, per_minute: int = 30) -> None:
        self._per_minute = per_minute
        self._window_start = 0.0
        self._in_window = 0
        self.suppressed = 0

    def warn(self, reason: str, status: int, remote: str | None) -> None:
        now = time.monotonic()
        if now - self._window_start >= 60:
            self._window_start, self._in_window = now, 0
        if self._in_window >= self._per_minute:
            self.suppressed += 1
            return
        self._in_window += 1
        suppressed, self.suppressed = self.suppressed, 0
        log.warning(
            "malformed request refused",
            reason=reason,
            status=status,
            remote=remote,
            **({"suppressed_since_last": suppressed} if suppressed else {}),
        )


MALFORMED = MalformedRequestLog()


class _JsonErrorRequestHandler(RequestHandler):
    """Protocol handler whose errors for unparseable requests are JSON, like every other error.

    A request line or header aiohttp cannot parse never reaches the application or its middlewares;
    aiohttp answers it from ``handle_error`` with a text page and logs a traceback at ERROR. Here it is a
    rate-limited WARNING naming the reason (:data:`MALFORMED`), and the JSON error body says only what
    kind of problem it was: the parser's message can quote the offending bytes -- a header value, the
    admin token in it -- and nothing a request carried is echoed back.
    """

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:  # some of a response went out already: the connection is broken
            raise ConnectionError("response already started; cannot send the error")
        if status >= 500:
            log.error("unhandled error below the application", exc_info=exc)
        else:
            MALFORMED.warn(type(exc).__name__ if exc is not None else "unknown", status, request.remote)
        response = error_response(
            status, code_for_status(status), _PARSE_ERRORS.get(status, default_message(status)), None
        )
        response.force_close()
        return response


_PARSE_ERRORS = {
    400: "the request could not be parsed as HTTP/1.1",
    413: "the request line or a header is too long",
    431: "the request's headers are too large",
}


class ConnectionLimits:
    """Open connections of one listener: at most ``total``, at most ``per_client`` from one address; a
    connection over either is closed as soon as it is accepted. Each connection must send its first
    request's line and headers within ``header_timeout_s`` or it is closed (slow clients trickling a byte
    every few seconds held every file descriptor before; keep-alive connections that have sent a request are
    bounded by ``server.keepalive_timeout_s`` and the body read timeout instead)."""

    def __init__(self, total: int, per_client: int, header_timeout_s: float) -> None:
        self.total = total
        self.per_client = per_client
        self.header_timeout_s = header_timeout_s
        self.open = 0
        self.refused = 0
        self.timed_out = 0
        self._by_client: dict[str, int] = {}

    def admit(self, client: str) -> bool:
        if self.open >= self.total or self._by_client.get(client, 0) >= self.per_client:
            self.refused += 1
            return False
        self.open += 1
        self._by_client[client] = self._by_client.get(client, 0) + 1
        return True

    def release(self, client: str) -> None:
        self.open -= 1
        left = self._by_client.get(client, 1) - 1
        if left:
            self._by_client[client] = left
        else:
            self._by_client.pop(client, None)


def connection_limits(settings: Settings, listeners: int) -> ConnectionLimits:
    """Limits for one of ``listeners`` listeners, the total capped so that all of them together leave file
    descriptors for Redis (its pool), the vendor, the journal and logs, whatever ``max_connections`` says."""
    server = settings.server
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    reserve = (
        settings.redis.max_connections
        + settings.metastudio.max_concurrency
        + settings.softsugar.max_concurrency
        + 128
    )
    available = soft - reserve if soft != resource.RLIM_INFINITY else server.max_connections * listeners
    total = max(8, min(server.max_connections, available // listeners))
    return ConnectionLimits(total, min(server.max_connections_per_client, total), server.header_timeout_s)


class _LimitedRequestHandler(_JsonErrorRequestHandler):
    """A connection counted against its listener's :class:`ConnectionLimits`."""

    _limits: ConnectionLimits | None = None
    _client = ""
    _admitted = False
    _awaiting_headers = True
    _tail = b""
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        limits = self._limits
        if limits is not None:
            peer = transport.get_extra_info("peername")
            self._client = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
            if not limits.admit(self._client):
                transport.abort()  # type: ignore[attr-defined]
                return
            self._admitted = True
            loop = asyncio.get_running_loop()
            self._header_timer = loop.call_later(limits.header_timeout_s, self._headers_too_slow, transport)
        super().connection_made(transport)

    def _headers_too_slow(self, transport: asyncio.BaseTransport) -> None:
        if self._awaiting_headers and self._limits is not None:
            self._limits.timed_out += 1
            transport.abort()  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if self._awaiting_headers:
            seen = self._tail + data
            if b"\r\n\r\n" in seen:
                self._awaiting_headers = False
                if self._header_timer is not None:
                    self._header_timer.cancel()
            else:
                self._tail = seen[-3:]
        super().data_received(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        if self._limits is not None and not self._admitted:
            return  # refused in connection_made: aiohttp never saw this connection
        if self._limits is not None:
            self._admitted = False
            self._limits.release(self._client)
        super().connection_lost(exc)


class _JsonErrorServer(web.Server):
    limits: ConnectionLimits | None = None

    def __call__(self) -> RequestHandler:
        handler = _LimitedRequestHandler(self, loop=self._loop, **self._kwargs)
        handler._limits = self.limits
        return handler


class OrchestratorRunner(web.AppRunner):
    """An ``AppRunner`` whose low-level server answers parse errors with JSON bodies."""

    limits: ConnectionLimits | None = None

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # Same object and layout; only the protocol factory differs (see _JsonErrorServer).
        server.__class__ = _JsonErrorServer
        assert isinstance(server, _JsonErrorServer)
        server.limits = self.limits
        return server


def make_runner(app: web.Application, settings: Settings, **kwargs: Any) -> OrchestratorRunner:
    runner = OrchestratorRunner(
        app,
        access_log_class=AccessLogger,
        access_log=logging.getLogger("aiohttp.access") if settings.logging.access_log else None,
        shutdown_timeout=settings.server.shutdown_timeout_s,
        keepalive_timeout=settings.server.keepalive_timeout_s,
        **kwargs,
    )
    runner.limits = connection_limits(settings, listeners=2 if settings.server.public_port else 1)
    return runner


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
        PublicRoutes(app),
        access_log_class=AccessLogger,
        access_log=logging.getLogger("aiohttp.access") if settings.logging.access_log else None,
        keepalive_timeout=settings.server.keepalive_timeout_s,
    )
    server.limits = connection_limits(settings, listeners=2)
    runner = web.ServerRunner(server, shutdown_timeout=settings.server.shutdown_timeout_s)
    await runner.setup()
    try:
        await web.TCPSite(runner, settings.server.host, public_port, reuse_address=True).start()
    except OSError:
        await runner.cleanup()
        raise
    log.info("listening (public routes)", host=settings.server.host, port=public_port)
    return runner
