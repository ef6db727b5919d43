"""The composition root: builds the aiohttp application and owns every long-lived resource.

Each resource has one ``cleanup_ctx`` generator (set up before ``yield``, torn down after) that stores it
under a typed key of :mod:`orchestrator.appkeys`. aiohttp runs the teardowns in reverse order after the
in-flight requests have finished, so Redis closes last.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial

import structlog
from aiohttp import web

from orchestrator.appkeys import LIFECYCLE, READINESS_CHECKS, REDACTOR, REDIS, SETTINGS, Lifecycle
from orchestrator.logging import Redactor
from orchestrator.settings import Settings, redacted_url
from orchestrator.store.redis import create_redis, redis_ready
from orchestrator.web import health
from orchestrator.web.middlewares import body_middleware, error_middleware, request_id_middleware

log = structlog.get_logger(__name__)


def create_app(settings: Settings, redactor: Redactor | None = None) -> web.Application:
    """The daemon's HTTP application, not yet started (aiohttp starts it, then the resources)."""
    app = web.Application(
        client_max_size=settings.server.max_body_bytes,
        middlewares=[
            request_id_middleware,
            error_middleware,
            body_middleware(settings.server.max_body_bytes, settings.server.read_timeout_s),
        ],
    )
    app[SETTINGS] = settings
    app[REDACTOR] = redactor or Redactor()
    app[LIFECYCLE] = Lifecycle()
    app[READINESS_CHECKS] = {}
    app.cleanup_ctx.append(redis_ctx)
    app.on_shutdown.append(_start_draining)
    app.add_routes(health.routes)
    return app


async def redis_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS].redis
    client = create_redis(settings)
    app[REDIS] = client
    app[READINESS_CHECKS]["redis"] = partial(redis_ready, client, settings.readiness_timeout_s)
    ok, detail = await redis_ready(client, settings.readiness_timeout_s)
    # Not fatal: the daemon starts without Redis, reports not-ready, and recovers when Redis returns.
    log.info(
        "redis client ready" if ok else "redis unreachable at start",
        url=redacted_url(settings.url.get_secret_value()),
        reachable=ok,
        detail=detail,
    )
    yield
    await client.aclose()
    log.info("redis client closed")


async def _start_draining(app: web.Application) -> None:
    app[LIFECYCLE].draining = True
