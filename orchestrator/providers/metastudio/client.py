"""The MetaStudio smart-live client: every job API, signed, bounded, and retried only where safe.

The client takes an injected ``aiohttp.ClientSession`` and a base URL (the region endpoint, or a sandbox)
and never creates or closes a session of its own. Each call has a timeout; at most ``max_concurrency``
calls are in flight per client (one client per project). Errors are translated in :meth:`_send` into
:mod:`orchestrator.providers.errors`.

When is a failed call retried (with exponential backoff and full jitter, Retry-After honoured on 429)?

* reads, stop, event reports (the same batch bytes again) and idempotent commands: after any transport
  error, 429 or 5xx;
* INSERT_PLAY_SCRIPT / INSERT_PLAY_AUDIO: only when the vendor certainly did not act (connect error, 429)
  -- a second insert after a timeout could make the avatar say the same thing twice;
* start job: after an unsent failure, directly; after an ambiguous one (timeout, reset, 5xx), only once
  listing the room's jobs shows no active job -- an active job found there is adopted instead, so a
  room is never started twice. (Adopting *any* active job is deliberate: the caller starts a job because
  it believes none is active; if one is, starting another would be the double start.) The vendor's
  own refusal -- MSS.20010036, "there are ongoing livestreaming tasks in the live room" -- is adopted the
  same way.
* never: a documented "job does not exist / has expired" or "job is not running" answer (HTTP 500 with
  MSS.20010046 ..., see :mod:`.codes`): it is read as :class:`ProviderNotFound` /
  :class:`ProviderJobNotRunning`, and repeating the call cannot change it.

The query of every request is sent exactly as it is signed: the canonical form of the official signer
(pairs sorted, ``quote(safe="~")``: ``state=WAITING%2CPROCESSING``, ``%20`` for a space), never an HTTP
library's own encoding of it (yarl would send ``,`` and ``+``) -- a gateway that canonicalises the raw
query it received would otherwise compute another signature.

A success answer that is not JSON, or not the documented shape, is a :class:`ProviderInvalidResponse`
(never a pydantic ``ValidationError`` escaping into the caller).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, TypeVar
from urllib.parse import parse_qsl, quote

import aiohttp
import structlog
from pydantic import BaseModel, ValidationError
from yarl import URL

from orchestrator import clock
from orchestrator.providers.base import CallObserver
from orchestrator.providers.errors import (
    ProviderConfigError,
    ProviderConflict,
    ProviderConnectError,
    ProviderError,
    ProviderInvalidResponse,
    ProviderStatusError,
    ProviderTimeout,
    ProviderTransportError,
    call_code,
    status_error,
)
from orchestrator.providers.metastudio import auth, codes
from orchestrator.providers.metastudio.models import (
    MAX_REPORT_EVENTS,
    Command,
    CommandResponse,
    JobList,
    JobState,
    LiveEvent,
    LiveEventReport,
    LiveEventReportResponse,
    SmartLiveJob,
    SmartLiveRoom,
    StartJobRequest,
    StartJobResponse,
)
from orchestrator.providers.retry import Retry, RetryPolicy, is_retryable
from orchestrator.settings import MetaStudioAuthMode, MetaStudioSettings

log = structlog.get_logger(__name__)

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class AkSkCredentials:
    """Permanent AK/SK, or temporary ones with their security token."""

    ak: str
    sk: str
    project_id: str
    security_token: str | None = None

    def sign(
        self, method: str, url: URL, headers: dict[str, str], body: bytes, now: datetime
    ) -> dict[str, str]:
        headers = {**headers, auth.HEADER_PROJECT: self.project_id}
        if self.security_token:
            headers[auth.HEADER_SECURITY_TOKEN] = self.security_token
        return auth.sign_headers(
            method=method,
            host=url.raw_authority,
            path=url.raw_path,
            query=query_pairs(url),
            headers=headers,
            body=body,
            ak=self.ak,
            sk=self.sk,
            now=now,
        )


@dataclass(frozen=True)
class TokenCredentials:
    """An IAM token (valid 24 h; obtaining and renewing it is the caller's business)."""

    token: str
    project_id: str

    def sign(
        self, method: str, url: URL, headers: dict[str, str], body: bytes, now: datetime
    ) -> dict[str, str]:
        return {**headers, auth.HEADER_AUTH_TOKEN: self.token, auth.HEADER_PROJECT: self.project_id}


Credentials = AkSkCredentials | TokenCredentials


def credentials_from_settings(settings: MetaStudioSettings) -> Credentials:
    """Raises ProviderConfigError naming what is missing."""
    if not settings.project_id:
        raise ProviderConfigError("metastudio.project_id is not set")
    if settings.auth_mode is MetaStudioAuthMode.TOKEN:
        if not settings.auth_token.get_secret_value():
            raise ProviderConfigError("metastudio.auth_mode is token but metastudio.auth_token is not set")
        return TokenCredentials(settings.auth_token.get_secret_value(), settings.project_id)
    if not (settings.ak.get_secret_value() and settings.sk.get_secret_value()):
        raise ProviderConfigError("metastudio.ak and metastudio.sk are required for AK/SK authentication")
    return AkSkCredentials(
        settings.ak.get_secret_value(),
        settings.sk.get_secret_value(),
        settings.project_id,
        settings.security_token.get_secret_value() or None,
    )


@dataclass(frozen=True)
class _Response:
    status: int
    headers: Mapping[str, str]
    body: bytes


class MetaStudioClient:
    """Async client of MetaStudio's smart-live API for one project."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        base_url: str | URL,
        credentials: Credentials,
        timeout_s: float = 10.0,
        connect_timeout_s: float = 3.0,
        retry: RetryPolicy = RetryPolicy(),
        max_concurrency: int = 8,
        now: Callable[[], datetime] = clock.now,
        sleep: Callable[[float], Awaitable[None]] = clock.sleep,
        observe: CallObserver | None = None,
    ) -> None:
        self._observe = observe
        self._session = session
        self._base = URL(str(base_url))
        self._credentials = credentials
        # A call's whole timeout is a policy (simulated seconds under a compressed clock); connecting is
        # about the network (real seconds).
        self._timeout_s = timeout_s
        self._timeout = aiohttp.ClientTimeout(total=clock.real_s(timeout_s), sock_connect=connect_timeout_s)
        self._retry = retry
        self._slots = asyncio.Semaphore(max_concurrency)
        self._now = now
        self._sleep = sleep

    @classmethod
    def from_settings(
        cls,
        session: aiohttp.ClientSession,
        settings: MetaStudioSettings,
        observe: CallObserver | None = None,
    ) -> MetaStudioClient:
        """Raises ProviderConfigError when credentials are incomplete."""
        return cls(
            session,
            base_url=str(settings.endpoint),
            credentials=credentials_from_settings(settings),
            timeout_s=settings.timeout_s,
            connect_timeout_s=settings.connect_timeout_s,
            retry=RetryPolicy(max_retries=settings.max_retries),
            max_concurrency=settings.max_concurrency,
            observe=observe,
        )

    @property
    def project_id(self) -> str:
        return self._credentials.project_id

    # --- the API ------------------------------------------------------------------------------------------

    async def start_job(self, room_id: str, request: StartJobRequest) -> StartJobResponse:
        """Start a live job in ``room_id``, never twice (see the module docstring).

        Raises ProviderError.
        """
        url = self._url("smart-live-rooms", room_id, "smart-live-jobs")
        for attempt in range(self._retry.max_retries + 1):
            try:
                body = await self._call("POST", url, request.to_wire(), Retry.NEVER)
                return _model(StartJobResponse, body)
            except ProviderError as error:
                final = attempt == self._retry.max_retries or not is_retryable(error, Retry.SAFE)
                ambiguous = is_retryable(error, Retry.SAFE) and not is_retryable(error, Retry.UNSENT)
                if ambiguous or isinstance(error, ProviderConflict):
                    adopted = await self._active_job(room_id)
                    if adopted is not None:
                        log.warning(
                            "start ambiguous; adopting the job found",
                            room_id=room_id,
                            job_id=adopted.job_id,
                            error=str(error),
                        )
                        return _as_start_response(adopted)
                if final:
                    raise
                await self._backoff(attempt, error, "start_job", room_id=room_id)
        raise AssertionError("unreachable")  # pragma: no cover

    async def list_room_jobs(
        self,
        room_id: str,
        *,
        states: list[JobState] | None = None,
        offset: int = 0,
        limit: int = 10,
        sort_key: SortKey | None = None,
        sort_dir: SortDir | None = None,
        create_since: str | None = None,
        create_until: str | None = None,
    ) -> JobList:
        """The room's jobs (004 §6.2.2); ``create_since``/``create_until`` are RFC 3339 times."""
        query = _list_query(states, offset, limit, sort_key, sort_dir, create_since, create_until)
        url = _with_query(self._url("smart-live-rooms", room_id, "smart-live-jobs"), query)
        return _model(JobList, await self._call("GET", url, None, Retry.SAFE))

    async def list_jobs(
        self,
        *,
        states: list[JobState] | None = None,
        offset: int = 0,
        limit: int = 10,
        room_name: str | None = None,
        sort_key: SortKey | None = None,
        sort_dir: SortDir | None = None,
        create_since: str | None = None,
        create_until: str | None = None,
    ) -> JobList:
        """Every job of the tenant (project) (004 §6.2.6); ``room_name`` is a fuzzy match."""
        query = _list_query(states, offset, limit, sort_key, sort_dir, create_since, create_until)
        if room_name:
            query.append(("room_name", room_name))
        url = _with_query(self._url("smart-live-jobs"), query)
        return _model(JobList, await self._call("GET", url, None, Retry.SAFE))

    async def show_job(self, room_id: str, job_id: str) -> SmartLiveJob:
        url = self._url("smart-live-rooms", room_id, "smart-live-jobs", job_id)
        return _model(SmartLiveJob, await self._call("GET", url, None, Retry.SAFE))

    async def stop_job(self, room_id: str, job_id: str) -> None:
        url = self._url("smart-live-rooms", room_id, "smart-live-jobs", job_id, "stop")
        await self._call("POST", url, None, Retry.SAFE)

    async def command(self, room_id: str, job_id: str, command: Command) -> CommandResponse:
        url = self._url("smart-live-rooms", room_id, "smart-live-jobs", job_id, "command")
        mode = Retry.SAFE if command.idempotent else Retry.UNSENT
        return _model(CommandResponse, await self._call("POST", url, command.to_wire(), mode))

    async def report_events(self, report_url: str, events: list[LiveEvent]) -> str | None:
        """Report 1-1000 events to the job's ``live_event_report_url``; return the refreshed URL, if any.

        The body is serialised once, so every retry sends the same bytes (the vendor sees one batch).
        """
        report = LiveEventReport.of(events)
        url = URL(report_url)
        if not url.is_absolute():
            raise ProviderConfigError(f"live_event_report_url is not absolute: {report_url!r}")
        body = await self._call("POST", url, report.to_wire(), Retry.SAFE)
        return _model(LiveEventReportResponse, body or {}).live_event_report_url

    async def report_batch(self, report_url: str, events: list[bytes], batch_id: str) -> str | None:
        """:meth:`report_events` for events already serialised in wire form (each the JSON of
        ``{"timestamp": int, "type": int, "content": str}``, as the ingest stores them), joined into the
        body without parsing or models -- the reporter's hot path. ``batch_id`` travels as ``X-Batch-Id``,
        the same on every retry and on a successor's resend, so a receiver that deduplicates can;
        MetaStudio documents no such header and ignores it. Returns the refreshed report URL, if any."""
        if not 1 <= len(events) <= MAX_REPORT_EVENTS:
            raise ValueError(f"a report carries 1 to {MAX_REPORT_EVENTS} events, not {len(events)}")
        url = URL(report_url)
        if not url.is_absolute():
            raise ProviderConfigError(f"live_event_report_url is not absolute: {report_url!r}")
        body = b'{"total":%d,"events":[%s]}' % (len(events), b",".join(events))
        answer = await self._call("POST", url, body, Retry.SAFE, extra_headers={"X-Batch-Id": batch_id})
        refreshed = answer.get("live_event_report_url") if isinstance(answer, dict) else None
        return refreshed if isinstance(refreshed, str) and refreshed else None

    async def show_room(self, room_id: str) -> SmartLiveRoom:
        url = self._url("smart-live-rooms", room_id)
        return _model(SmartLiveRoom, await self._call("GET", url, None, Retry.SAFE))

    # --- plumbing -----------------------------------------------------------------------------------------

    def _url(self, *segments: str) -> URL:
        path = "/".join(quote(s, safe="") for s in ("v1", self._credentials.project_id, *segments))
        return self._base.with_path(f"{self._base.path.rstrip('/')}/{path}", encoded=True)

    async def _active_job(self, room_id: str) -> SmartLiveJob | None:
        jobs = await self.list_room_jobs(room_id, states=[JobState.WAITING, JobState.PROCESSING], limit=100)
        active = [job for job in jobs.smart_live_jobs if job.state.active]
        return max(active, key=lambda job: job.create_time or "", default=None)

    async def _call(
        self,
        method: str,
        url: URL,
        payload: Any,
        mode: Retry,
        *,
        extra_headers: Mapping[str, str] | None = None,
    ) -> Any:
        """Send with retries per ``mode``; return the decoded JSON body (None when empty). ``payload`` may be
        the body already serialised (bytes).

        Raises ProviderError.
        """
        body = payload if isinstance(payload, bytes) else _json_bytes(payload)
        for attempt in range(self._retry.max_retries + 1):
            try:
                return await self._attempt(method, url, body, extra_headers)
            except ProviderError as error:
                if attempt == self._retry.max_retries or not is_retryable(error, mode):
                    raise
                await self._backoff(attempt, error, method, path=url.path)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _attempt(
        self, method: str, url: URL, body: bytes, extra_headers: Mapping[str, str] | None
    ) -> Any:
        """One call and its decoded body, told to the observer (the daemon's metrics)."""
        started = time.monotonic()
        try:
            decoded = _decode(await self._send(method, url, body, extra_headers))
        except ProviderError as error:
            if self._observe is not None:
                self._observe(
                    "metastudio", operation(method, url.path), call_code(error), time.monotonic() - started
                )
            raise
        if self._observe is not None:
            self._observe("metastudio", operation(method, url.path), "ok", time.monotonic() - started)
        return decoded

    async def _backoff(self, attempt: int, error: ProviderError, what: str, **context: Any) -> None:
        delay = self._retry.delay_s(attempt, error)
        log.warning(
            "metastudio call failed; retrying",
            call=what,
            attempt=attempt + 1,
            delay_s=round(delay, 3),
            error=str(error),
            **context,
        )
        await self._sleep(delay)

    async def _send(
        self, method: str, url: URL, body: bytes, extra_headers: Mapping[str, str] | None = None
    ) -> _Response:
        """One HTTP exchange, signed; every aiohttp/asyncio failure becomes a ProviderError here."""
        url = canonical_url(url)  # what is signed is what is sent
        headers = {"Content-Type": "application/json;charset=UTF-8", **(extra_headers or {})}
        headers = self._credentials.sign(method, url, headers, body, self._now())
        started = time.monotonic()
        async with self._slots:
            try:
                async with self._session.request(
                    method,
                    url,
                    data=body or None,
                    headers=headers,
                    timeout=self._timeout,
                    allow_redirects=False,
                ) as resp:
                    response = _Response(resp.status, resp.headers, await resp.read())
            except TimeoutError as exc:
                raise ProviderTimeout(f"{method} {url.path}: no response within {self._timeout_s}s") from exc
            except aiohttp.ClientConnectorError as exc:
                raise ProviderConnectError(f"{method} {url.path}: cannot connect: {exc.os_error}") from exc
            except aiohttp.ClientError as exc:
                raise ProviderTransportError(f"{method} {url.path}: {type(exc).__name__}: {exc}") from exc
        log.debug(
            "metastudio call",
            method=method,
            path=url.path,
            status=response.status,
            duration_ms=round((time.monotonic() - started) * 1000, 1),
        )
        if response.status >= 400:
            raise _status_error(response)
        return response


_IDS = re.compile(r"/v1/[^/]+|/(smart-live-rooms|smart-live-jobs)/[^/]+")


def operation(method: str, path: str) -> str:
    """A call's name for metrics (pure): its method and path with the project, room and job ids taken out
    -- ``POST /smart-live-rooms/{}/smart-live-jobs/{}/command`` -- so that the names are few."""

    def blank(match: re.Match[str]) -> str:
        return f"/{match.group(1)}/{{}}" if match.group(1) else ""

    segments = _IDS.sub(blank, path).split("/")
    # Whatever else looks like an id (a report URL's own path): blanked too.
    kept = ["{}" if any(c.isdigit() for c in s) or len(s) > 32 else s for s in segments]
    return f"{method} {'/'.join(kept)}"


def _json_bytes(payload: Any) -> bytes:
    return b"" if payload is None else json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


def _decode(response: _Response) -> Any:
    if not response.body.strip():
        return None
    try:
        return json.loads(response.body)
    except ValueError as exc:
        raise ProviderInvalidResponse(
            f"HTTP {response.status}: the response body is not JSON "
            f"(request id {response.headers.get('X-Request-Id') or '-'})"
        ) from exc


def _model(model: type[M], body: Any) -> M:
    """``body`` read as ``model``. Raises ProviderInvalidResponse naming the first field that did not fit."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "(body)"
        raise ProviderInvalidResponse(
            f"unexpected {model.__name__} from the vendor: {where}: {first['msg']}"
        ) from None


SortKey = Literal["create_time", "update_time", "asset_order"]
SortDir = Literal["asc", "desc"]


def _list_query(
    states: list[JobState] | None,
    offset: int,
    limit: int,
    sort_key: SortKey | None,
    sort_dir: SortDir | None,
    create_since: str | None,
    create_until: str | None,
) -> list[tuple[str, str]]:
    """The documented query of the job listings (004 §6.2.2 Table 6-280, §6.2.6 Table 6-329)."""
    query = [("offset", str(offset)), ("limit", str(limit))]
    optional = {
        "state": ",".join(s.value for s in states) if states else None,
        "sort_key": sort_key or ("create_time" if sort_dir else None),
        "sort_dir": sort_dir,
        "create_since": create_since,
        "create_until": create_until,
    }
    return query + [(name, value) for name, value in optional.items() if value]


def query_pairs(url: URL) -> list[tuple[str, str]]:
    """The decoded query pairs of ``url``, in order, repeated and empty values kept."""
    return parse_qsl(url.raw_query_string, keep_blank_values=True)


def _with_query(url: URL, pairs: list[tuple[str, str]]) -> URL:
    return _with_raw_query(url, auth.canonical_query(pairs))


def _with_raw_query(url: URL, query_string: str) -> URL:
    return URL.build(
        scheme=url.scheme,
        authority=url.raw_authority,
        path=url.raw_path,
        query_string=query_string,
        encoded=True,
    )


def canonical_url(url: URL) -> URL:
    """``url`` with its query in the signer's canonical form (sorted, ``quote(safe="~")``) -- the bytes
    the signature covers (``auth.canonical_query``), so a receiver canonicalising the raw query agrees."""
    if not url.raw_query_string:
        return url
    canonical = auth.canonical_query(query_pairs(url))
    return url if canonical == url.raw_query_string else _with_raw_query(url, canonical)


def _status_error(response: _Response) -> ProviderStatusError:
    code = msg = None
    try:
        data = json.loads(response.body)
        if isinstance(data, dict):
            code, msg = data.get("error_code"), data.get("error_msg")
    except ValueError:
        msg = response.body[:200].decode("utf-8", "replace")
    retry_after = None
    if raw := response.headers.get("Retry-After"):
        try:
            retry_after = max(0.0, float(raw))
        except ValueError:
            retry_after = None  # an HTTP-date: fall back to our own backoff
    return status_error(
        response.status, code, msg, response.headers.get("X-Request-Id"), retry_after, codes.BY_CODE
    )


def _as_start_response(job: SmartLiveJob) -> StartJobResponse:
    return StartJobResponse(
        job_id=job.job_id,
        live_event_report_url=job.live_event_report_url,
        live_event_callback_config=job.live_event_callback_config,
    )
