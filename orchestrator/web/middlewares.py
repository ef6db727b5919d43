"""Request middlewares, outermost first: request id, JSON errors, bounded body reading.

* :func:`request_id_middleware` accepts a sane ``X-Request-Id`` or makes one, binds it to the log context
  for the request's lifetime and echoes it on every response, errors included.
* :func:`error_middleware` turns every exception into the JSON error body of :mod:`.errors`; a bug becomes
  a logged traceback and a bare 500 -- never a traceback sent to the client.
* :func:`body_middleware` reads the whole body up front, under the size limit (413) and within the read
  timeout (408), so a slow or oversized client cannot hold a handler; handlers then read it from memory.
"""

from __future__ import annotations

import asyncio
import re
import uuid

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from orchestrator.web.errors import ApiError, code_for_status, default_message, error_response

REQUEST_ID_HEADER = "X-Request-Id"
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

REQUEST_ID = web.RequestKey("request_id", str)

log = structlog.get_logger(__name__)


def request_id_of(request: web.Request) -> str | None:
    return request.get(REQUEST_ID)


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    offered = request.headers.get(REQUEST_ID_HEADER, "")
    request_id = offered if _REQUEST_ID_RE.fullmatch(offered) else uuid.uuid4().hex
    request[REQUEST_ID] = request_id
    with structlog.contextvars.bound_contextvars(request_id=request_id):
        response = await handler(request)
    if not response.prepared:
        response.headers[REQUEST_ID_HEADER] = request_id
    return response


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        response = error_response(
            exc.status, exc.error_code, exc.error_msg, request_id_of(request), headers=exc.headers
        )
        if exc.close_connection:
            response.force_close()
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
        # aiohttp's default texts are "404: Not Found"; a handler's explicit reason is kept.
        message = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else None
        return error_response(
            exc.status,
            code_for_status(exc.status),
            message or default_message(exc.status),
            request_id_of(request),
            headers=headers,
        )
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unhandled error", method=request.method, path=request.path)
        return error_response(500, code_for_status(500), "internal error", request_id_of(request))


def body_middleware(max_body_bytes: int, read_timeout_s: float) -> Middleware:
    """Read the body (≤ ``max_body_bytes``, within ``read_timeout_s``) before the handler runs."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.body_exists:
            await _read_body(request, max_body_bytes, read_timeout_s)
        return await handler(request)

    return middleware


async def _read_body(request: web.Request, max_body_bytes: int, read_timeout_s: float) -> None:
    length = request.content_length
    if length is not None and length > max_body_bytes:
        raise ApiError(
            413,
            "PAYLOAD_TOO_LARGE",
            f"body of {length} bytes exceeds the limit of {max_body_bytes} bytes",
            close_connection=True,
        )
    try:
        async with asyncio.timeout(read_timeout_s):
            await request.read()  # cached on the request: handlers' read()/json() reuse it
    except TimeoutError:
        # The connection is mid-body and cannot be reused: answer, then close it.
        raise ApiError(
            408,
            "REQUEST_TIMEOUT",
            f"request body not received within {read_timeout_s:g}s",
            close_connection=True,
        ) from None
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(
            413,
            "PAYLOAD_TOO_LARGE",
            f"body exceeds the limit of {max_body_bytes} bytes",
            close_connection=True,
        ) from None
