"""The one error body every HTTP error carries: ``{"error_code", "error_msg", "request_id"}``.

Handlers raise :class:`ApiError` (or let aiohttp raise its ``HTTPException``s); the error middleware turns
either into :func:`error_response`. Nothing else builds error bodies, so clients see one shape for a 400
from a handler, a 404 from the router, a 413 from the body limit, a 500 from a bug, and a 400 from a request
so malformed that it never reached the application.
"""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus

from aiohttp import web

#: Stable codes for the statuses aiohttp and our middlewares produce; others become ``HTTP_<status>``.
STATUS_CODES: Mapping[int, str] = {
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    408: "REQUEST_TIMEOUT",
    411: "LENGTH_REQUIRED",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    422: "UNPROCESSABLE_ENTITY",
    429: "TOO_MANY_REQUESTS",
    431: "HEADERS_TOO_LARGE",
    500: "INTERNAL_ERROR",
    503: "SERVICE_UNAVAILABLE",
}


class ApiError(Exception):
    """An error a handler reports to the client, with its HTTP status and a stable ``error_code``."""

    def __init__(
        self,
        status: int,
        error_code: str,
        error_msg: str,
        *,
        headers: Mapping[str, str] | None = None,
        close_connection: bool = False,
        errors: list[dict[str, str]] | None = None,
    ) -> None:
        super().__init__(f"{status} {error_code}: {error_msg}")
        self.close_connection = close_connection
        self.errors = errors
        self.status = status
        self.error_code = error_code
        self.error_msg = error_msg
        self.headers = dict(headers or {})


def invalid_fields(error_code: str, problems: list[tuple[str, str]]) -> ApiError:
    """422 naming every invalid field: ``error_msg`` lists them, ``errors`` holds one ``{"field",
    "message"}`` each."""
    return ApiError(
        422,
        error_code,
        "; ".join(f"{field}: {message}" for field, message in problems),
        errors=[{"field": field, "message": message} for field, message in problems],
    )


def code_for_status(status: int) -> str:
    return STATUS_CODES.get(status, f"HTTP_{status}")


def default_message(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "error"


def error_response(
    status: int,
    error_code: str,
    error_msg: str,
    request_id: str | None,
    *,
    headers: Mapping[str, str] | None = None,
    errors: list[dict[str, str]] | None = None,
) -> web.Response:
    body: dict[str, object] = {"error_code": error_code, "error_msg": error_msg, "request_id": request_id}
    if errors:
        body["errors"] = errors  # field-level problems: [{"field", "message"}]
    return web.json_response(body, status=status, headers=headers)
