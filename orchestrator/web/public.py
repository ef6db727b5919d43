"""The public listener: the vendor-facing routes alone, on their own port (``server.public_port``).

Vendors must reach their routes from the internet (MetaStudio: the live-event callbacks, the interaction
CALLBACK endpoint and the LLM endpoint). With ``server.public_port`` set, a second listener serves just
those -- each provider's :class:`PublicRoute` list, which the composition root installs under
:data:`PUBLIC_ROUTES` -- plus ``/healthz`` for a load balancer, so the admin API, metrics and readiness
can stay on a private address.
The main port keeps serving them too: a single-port setup, and a vendor still configured with the old URL,
keep working.

The listener is aiohttp's low-level server (``web.Server``) with the small fixed route table below, not a
second ``web.Application``: the live-event callback is the daemon's hottest path, and the application's
per-request machinery -- router, request factory, the request middleware and the two wrapper layers
aiohttp adds around it -- costs about as much as verifying, parsing and storing the callback
(``benchmarks/callbacks``). The handlers are the same functions the main application's routes call, given
the main application (for its state: receiver, Redis, metrics) and the path parameters. What the middleware
gives a vendor is kept: the body is read under the size limit, read timeout and body budget (by the
handler, after it authenticated the request), every error is the same
JSON body with a request id (made on error only: a vendor sends none and a success needs none), unknown
paths get a JSON 404 and known ones with another method a JSON 405 with ``Allow``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from aiohttp import web
from aiohttp.web_request import BaseRequest

from orchestrator.web.errors import ApiError
from orchestrator.web.middlewares import (
    REQUEST_ID,
    REQUEST_ID_HEADER,
    error_response_for,
    new_request_id,
)

PublicHandler = Callable[[web.Application, BaseRequest, Mapping[str, str]], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class PublicRoute:
    """A vendor-facing POST route: ``path`` exactly, or -- with ``param`` -- ``path`` followed by one
    non-empty path segment, handed to the handler as that parameter (what aiohttp's ``{name}`` matches)."""

    path: str
    handler: PublicHandler
    param: str | None = None


PUBLIC_ROUTES = web.AppKey("public_routes", list[PublicRoute])


async def _healthz(app: web.Application, request: BaseRequest, params: Mapping[str, str]) -> web.Response:
    # Not health.healthz: that one names our version, which the internet need not learn.
    return web.json_response({"status": "ok"})


class PublicRoutes:
    """Request handler of the public listener: routes a request, maps errors to JSON (each handler reads
    its own body, once it has authenticated the request)."""

    def __init__(self, app: web.Application) -> None:
        self._app = app
        self._routes = app.get(PUBLIC_ROUTES, [])

    async def __call__(self, request: BaseRequest) -> web.StreamResponse:
        try:
            handler, params = route(request.method, request.path, self._routes)
            # Every handler here authenticates from the URL or headers, then reads the body itself
            # (middlewares.bounded_body: size limit, read timeout, the shared body budget).
            return await handler(self._app, request, params)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            request[REQUEST_ID] = request_id = new_request_id()
            response = error_response_for(request, exc)
            response.headers[REQUEST_ID_HEADER] = request_id
            return response


def route(method: str, path: str, routes: Sequence[PublicRoute]) -> tuple[PublicHandler, dict[str, str]]:
    """The handler and path parameters for a request to the public listener.

    Raises ApiError: 404 for a path it does not serve, 405 (with ``Allow``) for another method.
    """
    allowed = "POST"
    found = _match(path, routes)
    if found is not None:
        handler, params = found
    elif path == "/healthz":
        handler, params, allowed = _healthz, {}, "GET"
    else:
        raise ApiError(404, "NOT_FOUND", "no such route on the public listener")
    if method != allowed and not (allowed == "GET" and method == "HEAD"):
        raise ApiError(
            405,
            "METHOD_NOT_ALLOWED",
            f"{method} is not allowed here; use {allowed}",
            headers={"Allow": allowed},
        )
    return handler, params


def _match(path: str, routes: Sequence[PublicRoute]) -> tuple[PublicHandler, dict[str, str]] | None:
    for candidate in routes:
        if candidate.param is None:
            if path == candidate.path:
                return candidate.handler, {}
        elif path.startswith(candidate.path) and _segment(path, len(candidate.path)):
            return candidate.handler, {candidate.param: path[len(candidate.path) :]}
    return None


def _segment(path: str, start: int) -> bool:
    """Whether ``path[start:]`` is one non-empty path segment (what aiohttp's ``{name}`` matches)."""
    return start < len(path) and "/" not in path[start:]
