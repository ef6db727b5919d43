"""Errors of calls to a vendor API, one tree for every provider::

    ProviderError
    ├── ProviderConfigError       credentials or endpoint missing; nothing was sent
    ├── ProviderTransportError    no usable HTTP answer
    │   ├── ProviderConnectError  could not connect: the request never left (safe to retry anything)
    │   └── ProviderTimeout       sent, no answer in time: the vendor may or may not have acted
    ├── ProviderInvalidResponse   a success answer we cannot read (not JSON, or not the documented shape)
    └── ProviderStatusError       the vendor answered with an error status and body
        ├── ProviderBadRequest    400: our request is wrong; retrying cannot help
        ├── ProviderAuthError     401/403
        ├── ProviderNotFound      404, or a vendor code saying the job/room does not exist or has expired
        ├── ProviderJobNotRunning the job exists but is not running: commands and reports cannot reach it
        ├── ProviderConflict      the room already runs a job: a start was refused, nothing was started
        ├── ProviderRateLimited   429 (``retry_after_s`` from Retry-After)
        └── ProviderServerError   5xx

The class follows the HTTP status, except where the vendor documents an error code whose meaning
decides what the daemon does: MetaStudio answers "task not found / expired" with HTTP 500 (004 §11.2,
MSS.20010046 ...), which must read as gone, not as a transient failure to retry. Each vendor client
passes its table of such codes to :func:`status_error`.

``aiohttp``/``asyncio`` errors are translated into this tree in one place, the provider client's send
function, with ``raise ... from exc``.
"""

from __future__ import annotations

from collections.abc import Mapping


class ProviderError(Exception):
    """Base of every vendor API failure."""


class ProviderConfigError(ProviderError):
    """The client cannot sign or address a request (missing AK/SK, token or project id), or a room names
    something its provider's settings do not have (``field``: the room's field that names it)."""

    field: str | None = None


class ProviderTransportError(ProviderError):
    """The call produced no HTTP response we could read (reset, refused, timed out)."""

    #: True when the vendor may have received and acted on the request.
    ambiguous = True


class ProviderConnectError(ProviderTransportError):
    """The connection could not be opened: the vendor certainly did not see the request."""

    ambiguous = False


class ProviderTimeout(ProviderTransportError):
    """No complete response within the call's timeout."""


class ProviderInvalidResponse(ProviderError):
    """The vendor said yes in a form we cannot read: not JSON, or not the shape its documents give.

    Whether it acted is unknown (it said it did); retrying a read is harmless, anything else is not."""


class ProviderStatusError(ProviderError):
    """The vendor answered with an error: HTTP status, its error code, message and request id."""

    def __init__(
        self,
        status: int,
        error_code: str | None,
        error_msg: str | None,
        request_id: str | None = None,
        *,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(
            f"HTTP {status} {error_code or '-'}: {error_msg or ''} (request id {request_id or '-'})"
        )
        self.status = status
        self.error_code = error_code
        self.error_msg = error_msg
        self.request_id = request_id
        self.retry_after_s = retry_after_s


class ProviderBadRequest(ProviderStatusError):
    """400: the request is invalid (e.g. MSS.00000003 "Invalid parameter")."""


class ProviderAuthError(ProviderStatusError):
    """401/403: credentials wrong, expired or not allowed."""


class ProviderNotFound(ProviderStatusError):
    """No such room or job: 404, or a documented "does not exist or has expired" code (any status)."""


class ProviderJobNotRunning(ProviderStatusError):
    """The job exists but is not running (ended, or not started yet): a command or a report for it
    cannot succeed, so it is never retried."""


class ProviderConflict(ProviderStatusError):
    """The vendor refused to start a job because the room already has an ongoing one."""


class ProviderRateLimited(ProviderStatusError):
    """429: throttled; the request was not processed."""


class ProviderServerError(ProviderStatusError):
    """5xx: the vendor failed; it may or may not have acted."""


def status_error(
    status: int,
    error_code: str | None,
    error_msg: str | None,
    request_id: str | None,
    retry_after_s: float | None,
    by_code: Mapping[str, type[ProviderStatusError]] | None = None,
) -> ProviderStatusError:
    """The ProviderStatusError subclass for ``error_code`` (from the vendor's table ``by_code``), else
    for ``status``."""
    cls = (by_code or {}).get(error_code or "")
    if cls is not None:
        return cls(status, error_code, error_msg, request_id, retry_after_s=retry_after_s)
    if status == 400:
        cls = ProviderBadRequest
    elif status in (401, 403):
        cls = ProviderAuthError
    elif status == 404:
        cls = ProviderNotFound
    elif status == 429:
        cls = ProviderRateLimited
    elif status >= 500:
        cls = ProviderServerError
    else:
        cls = ProviderStatusError
    return cls(status, error_code, error_msg, request_id, retry_after_s=retry_after_s)


def call_code(error: ProviderError) -> str:
    """What a failed vendor call is counted as (bounded by the vendor's documented codes): the vendor's
    error code, else its HTTP status; ``timeout``, ``connect``, ``transport`` or ``invalid`` when no answer
    could be read."""
    if isinstance(error, ProviderStatusError):
        return str(error.error_code or error.status)
    if isinstance(error, ProviderTimeout):
        return "timeout"
    if isinstance(error, ProviderConnectError):
        return "connect"
    if isinstance(error, ProviderTransportError):
        return "transport"
    if isinstance(error, ProviderInvalidResponse):
        return "invalid"
    return "error"
