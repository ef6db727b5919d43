"""The request middleware: request id, JSON errors, bounded body reading -- in one layer.

For every request, in this order:

* **request id**: a sane ``X-Request-Id`` is accepted, otherwise one is made (random, not secret); the
  log context starts empty for each request (keep-alive requests share a task, so a previous request's
  ``room_id`` must not leak into this one's lines) and gets the id; the id is echoed on every response,
  errors included;
* **bounded body**: the whole body is read up front, under the size limit (413) and within the read
  timeout (408), so a slow or oversized client cannot hold a handler; handlers then read it from memory;
* **JSON errors**: every exception becomes the JSON error body of :mod:`.errors`; a bug becomes a logged
  traceback and a bare 500 -- never a traceback sent to the client.

One middleware rather than three: each aiohttp middleware layer costs a few microseconds per request, and
the callback receiver's throughput budget is counted in them.
"""

from __future__ import annotations

import asyncio
import re
from random import getrandbits

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from aiohttp.web_request import BaseRequest

from orchestrator.web.errors import ApiError, code_for_status, default_message, error_response

REQUEST_ID_HEADER = "X-Request-Id"
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

REQUEST_ID = web.RequestKey("request_id", str)
#: Set by a handler whose request is recorded elsewhere (an accepted callback): the access log skips it.
NO_ACCESS_LINE = web.RequestKey("no_access_line", bool)

log = structlog.get_logger(__name__)


def request_id_of(request: BaseRequest) -> str | None:
    return request.get(REQUEST_ID)


def request_middleware(max_body_bytes: int, read_timeout_s: float) -> Middleware:
    """The middleware, with the body limit and read timeout of the server settings."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        offered = request.headers.get(REQUEST_ID_HEADER, "")
        request_id = offered if offered and _REQUEST_ID_RE.fullmatch(offered) else new_request_id()
        request[REQUEST_ID] = request_id
        # Not reset on the way out: the access line is written after this returns and should carry the
        # request's context (request id, room, job); the next request on the connection starts afresh.
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        try:
            if request.body_exists:
                await read_body(request, max_body_bytes, read_timeout_s)
            response = await handler(request)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            response = error_response_for(request, exc)
        if not response.prepared:
            response.headers[REQUEST_ID_HEADER] = request_id
        return response

    return middleware


def new_request_id() -> str:
    """A fresh request id (random, not secret)."""
    return f"{getrandbits(128):032x}"


def error_response_for(request: BaseRequest, exc: Exception) -> web.StreamResponse:
    """The JSON error response for an exception a handler raised (ApiError, aiohttp's HTTP errors, or a bug:
    logged with its traceback, answered with a bare 500)."""
    request_id = request_id_of(request)
    if isinstance(exc, ApiError):
        response = error_response(
            exc.status, exc.error_code, exc.error_msg, request_id, headers=exc.headers, errors=exc.errors
        )
        if exc.close_connection:
            response.force_close()
        return response
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            return exc  # redirects and the like are responses, not errors
        headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
        # aiohttp's default texts are "404: Not Found"; a handler's explicit reason is kept.
        message = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else None
        return error_response(
            exc.status,
            code_for_status(exc.status),
            message or default_message(exc.status),
            request_id,
            headers=headers,
        )
    log.error("unhandled error", method=request.method, path=request.path, exc_info=exc)
    return error_response(500, code_for_status(500), "internal error", request_id)


async def read_body(request: BaseRequest, max_body_bytes: int, read_timeout_s: float) -> None:
    """Read the whole body into the request (handlers' read()/json() reuse it), under the size limit and
    within the read timeout.

    Raises ApiError: 413 (too large), 408 (too slow); both close the connection.
    """
    length = request.content_length
    if length is not None and length > max_body_bytes:
        raise ApiError(
            413,
            "PAYLOAD_TOO_LARGE",
            f"body of {length} bytes exceeds the limit of {max_body_bytes} bytes",
            close_connection=True,
        )
    try:
        if request.content.is_eof():  # all of it has arrived already: no timer needed
            await request.read()  # cached on the request: handlers' read()/json() reuse it
        else:
            async with asyncio.timeout(read_timeout_s):
                await request.read()
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
