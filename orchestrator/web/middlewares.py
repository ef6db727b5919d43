"""The request middleware: request id, JSON errors, bounded body reading -- in one layer.

For every request, in this order:

* **request id**: a sane ``X-Request-Id`` is accepted, otherwise one is made (random, not secret); the
  log context starts empty for each request (keep-alive requests share a task, so a previous request's
  ``room_id`` must not leak into this one's lines) and gets the id; the id is echoed on every response,
  errors included;
* **bounded body**: the whole body is read up front, under the size limit (413) and within the read
  timeout (408), so a slow or oversized client cannot hold a handler; handlers then read it from memory.
  Credentials are checked *before* a body is read: ``/api`` requests need the admin token (a bridge's own
  token, for posting events to its rooms) first, and the
  vendor routes (callbacks, interaction CALLBACK, LLM), whose credentials are in the URL or headers, read
  their own body after authenticating (:func:`bounded_body`). All bodies being read at once share one
  byte budget (``server.body_bytes_in_flight``): a body that does not fit waits, then gets 503;
* **JSON errors**: every exception becomes the JSON error body of :mod:`.errors`; a bug becomes a logged
  traceback and a bare 500 -- never a traceback sent to the client.

One middleware rather than three: each aiohttp middleware layer costs a few microseconds per request, and
the callback receiver's throughput budget is counted in them.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import re
from collections.abc import AsyncIterator
from random import getrandbits

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from aiohttp.web_request import BaseRequest
from redis.exceptions import RedisError

from orchestrator.metrics import Metrics
from orchestrator.store.redis import NotReplicated
from orchestrator.web.errors import ApiError, code_for_status, default_message, error_response

REQUEST_ID_HEADER = "X-Request-Id"
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

REQUEST_ID = web.RequestKey("request_id", str)
#: Set by a handler whose request is recorded elsewhere (an accepted callback): the access log skips it.
NO_ACCESS_LINE = web.RequestKey("no_access_line", bool)

log = structlog.get_logger(__name__)


def request_id_of(request: BaseRequest) -> str | None:
    return request.get(REQUEST_ID)


#: Routes whose handlers authenticate from the URL or headers and then read the body themselves.
SELF_READING_PREFIXES = ("/callbacks/", "/llm/")
#: Routes a console session cookie may authenticate.
SESSION_PREFIXES = ("/api/", "/console/", "/openapi.json")


class BodyBudget:
    """Bytes of request bodies being read at once, across every connection of the process.

    A body reserves its declared length (or the largest allowed, when chunked) before a byte of it is
    read; when the budget is spent it waits for others to finish (first come, first served), up to the
    read timeout, then gets 503. Two hundred 1 MiB bodies sent at once cannot take 200 MiB of memory. The
    common case -- room in the budget, nobody waiting -- costs two integer updates (the callback path).
    """

    def __init__(
        self, limit_bytes: int, *, max_body_bytes: int = 1024 * 1024, read_timeout_s: float = 15.0
    ) -> None:
        self._limit = limit_bytes
        #: The per-body limits of the server settings, for :func:`bounded_body`.
        self.max_body_bytes = max_body_bytes
        self.read_timeout_s = read_timeout_s
        self._used = 0
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    @property
    def used(self) -> int:
        return self._used

    async def acquire(self, size: int, timeout_s: float) -> int:
        """Hold ``size`` bytes (at most the whole budget); returns what is held, for :meth:`release`.

        Raises ApiError 503 when none frees up in time.
        """
        size = min(size, self._limit)
        if self._waiters or self._used + size > self._limit:
            waiter = asyncio.get_running_loop().create_future()
            entry = (size, waiter)
            self._waiters.append(entry)
            try:
                async with asyncio.timeout(timeout_s):
                    await waiter  # granted: _wake added our size to _used
            except TimeoutError:
                if entry in self._waiters:
                    self._waiters.remove(entry)
                else:  # granted just as the time ran out: give it back
                    self.release(size)
                raise ApiError(
                    503,
                    "SERVER_BUSY",
                    "too many request bodies are being received; retry shortly",
                    headers={"Retry-After": "1"},
                    close_connection=True,
                ) from None
            except BaseException:
                if entry in self._waiters:
                    self._waiters.remove(entry)
                elif waiter.done() and not waiter.cancelled():
                    self.release(size)  # granted as we were cancelled
                raise
            return size
        self._used += size
        return size

    def release(self, size: int) -> None:
        self._used -= size
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self._used + self._waiters[0][0] <= self._limit:
            size, waiter = self._waiters.popleft()
            if not waiter.done():
                self._used += size
                waiter.set_result(None)

    @contextlib.asynccontextmanager
    async def reserve(self, size: int, timeout_s: float) -> AsyncIterator[None]:
        """:meth:`acquire` and :meth:`release` around a block."""
        held = await self.acquire(size, timeout_s)
        try:
            yield
        finally:
            self.release(held)


def request_middleware(
    max_body_bytes: int,
    read_timeout_s: float,
    budget: BodyBudget | None = None,
    metrics: Metrics | None = None,
) -> Middleware:
    """The middleware, with the body limit, read timeout and body budget of the server settings; it counts
    every request in ``metrics`` (``orch_http_requests_total``)."""
    from orchestrator.web.api import require_credentials  # the API's checks; imported late (cycle)
    from orchestrator.web.console import COOKIE, authenticate

    budget = budget or BodyBudget(32 * 1024 * 1024)
    metrics = metrics or Metrics()

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
            if (
                request.path.startswith(SESSION_PREFIXES)
                and COOKIE in request.cookies
                and "Authorization" not in request.headers
            ):
                await authenticate(request)  # a console session: who, and its CSRF token checked
            if request.body_exists and not request.path.startswith(SELF_READING_PREFIXES):
                if request.path.startswith("/api/"):
                    require_credentials(request)  # before a byte of the body is read
                await read_body(request, max_body_bytes, read_timeout_s, budget)
            response = await handler(request)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            response = error_response_for(request, exc)
        if not response.prepared:
            response.headers[REQUEST_ID_HEADER] = request_id
        resource = request.match_info.route.resource
        metrics.http_request(
            resource.canonical if resource is not None else "unmatched", request.method, response.status
        )
        return response

    return middleware


def new_request_id() -> str:
    """A fresh request id (random, not secret)."""
    return f"{getrandbits(128):032x}"


def error_response_for(request: BaseRequest, exc: Exception) -> web.StreamResponse:
    """The JSON error response for an exception a handler raised (ApiError, aiohttp's HTTP errors, or a bug:
    logged with its traceback, answered with a bare 500). A request refused before its body was read
    gets its connection closed: the unread body must not be taken for the next request."""
    response = _error_response_for(request, exc)
    if request.body_exists and not request.content.is_eof():
        response.force_close()
    return response


def _error_response_for(request: BaseRequest, exc: Exception) -> web.StreamResponse:
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
    if isinstance(exc, NotReplicated):
        log.warning(
            "redis replicas behind for a request", method=request.method, path=request.path, error=str(exc)
        )
        return error_response(
            503,
            "NOT_REPLICATED",
            "taken by the state store's master but not yet confirmed by its replicas (redis.wait_replicas); "
            "send it again (events with a message_id are taken once)",
            request_id,
            headers={"Retry-After": "1"},
        )
    if isinstance(exc, RedisError):
        # Redis restarting, loading its data, or gone for a moment (the soak found each): nothing was
        # accepted; the caller may retry. One line, not a traceback per request.
        log.warning(
            "redis unavailable for a request",
            method=request.method,
            path=request.path,
            error=str(exc) or type(exc).__name__,
        )
        return error_response(
            503,
            "REDIS_UNAVAILABLE",
            "the state store is unavailable; nothing was accepted, retry shortly",
            request_id,
            headers={"Retry-After": "1"},
        )
    log.error("unhandled error", method=request.method, path=request.path, exc_info=exc)
    return error_response(500, code_for_status(500), "internal error", request_id)


BODY_BUDGET = web.AppKey("body_budget", BodyBudget)


async def bounded_body(app: web.Application, request: BaseRequest) -> bytes:
    """The request's body, read under the server's size limit, read timeout and body budget -- for the
    handlers that authenticate a request before reading it (:data:`SELF_READING_PREFIXES`).

    Raises ApiError (413, 408, 503).
    """
    if request.body_exists:
        budget = app[BODY_BUDGET]
        await read_body(request, budget.max_body_bytes, budget.read_timeout_s, budget)
    return await request.read()


async def read_body(
    request: BaseRequest, max_body_bytes: int, read_timeout_s: float, budget: BodyBudget | None = None
) -> None:
    """Read the whole body into the request (handlers' read()/json() reuse it), under the size limit,
    within the read timeout and, given a budget, once its bytes are reserved.

    Raises ApiError: 413 (too large), 408 (too slow), 503 (budget spent); all close the connection.
    """
    if budget is None:
        await _read_body(request, max_body_bytes, read_timeout_s)
        return
    declared = request.content_length
    held = await budget.acquire(declared if declared is not None else max_body_bytes, read_timeout_s)
    try:
        await _read_body(request, max_body_bytes, read_timeout_s)
    finally:
        budget.release(held)


async def _read_body(request: BaseRequest, max_body_bytes: int, read_timeout_s: float) -> None:
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
