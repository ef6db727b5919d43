"""The SoftSugar 2D interactive live client: every endpoint of 003, with the account's shared token.

The client takes an injected ``aiohttp.ClientSession``, a base URL (``https://aigc.softsugar.com``, or a
sandbox) and timeouts; it never creates a session of its own. Every answer is ``{"code", "message",
"data"}``: ``code != 0`` is an error whatever the HTTP status (003's examples answer HTTP 200 either way)
and becomes a :class:`~orchestrator.providers.errors.ProviderStatusError` carrying the code and message;
HTTP errors map by status (401/403 auth, 429 throttled, 5xx server). Failures are translated into
:mod:`orchestrator.providers.errors` in :meth:`SoftSugarClient._send` alone.

Retries (:mod:`orchestrator.providers.retry`): reads, heartbeat, start, close, cancel and reorder are safe
to repeat; a takeover (a reply said twice) only when certainly unsent; **channel create never** but when
certainly unsent -- billing starts at create, and 003 gives no way to find the session an ambiguous create
made (``running/list`` carries no ``userData``): the reconciler's sweep of unknown running sessions closes
or adopts it (``softsugar.unknown_sessions``). A 401 renews the shared token once and sends again.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
import structlog
from pydantic import BaseModel, ValidationError
from yarl import URL

from orchestrator import clock
from orchestrator.providers.base import CallObserver
from orchestrator.providers.errors import (
    ProviderAuthError,
    ProviderConnectError,
    ProviderError,
    ProviderInvalidResponse,
    ProviderStatusError,
    ProviderTimeout,
    ProviderTransportError,
    call_code,
    status_error,
)
from orchestrator.providers.retry import Retry, RetryPolicy, is_retryable
from orchestrator.providers.softsugar.auth import REFRESH_PATH, TOKEN_PATH, Issued, SharedToken, sign
from orchestrator.providers.softsugar.models import (
    CancelBody,
    CancelResult,
    Channel,
    CommandBody,
    CommandResult,
    CreateChannel,
    Envelope,
    HistoryPage,
    HistoryQuery,
    LiveScript,
    NlpAnswer,
    NlpQuery,
    QueueBody,
    QueuedCommand,
    QueueList,
    QuickHandoff,
    ReorderBody,
    RtcTokenBody,
    RunningSession,
    SessionBody,
    SessionStat,
    Takeover,
    Token,
)

log = structlog.get_logger(__name__)

M = TypeVar("M", bound=BaseModel)

BASE = "/api/2dvh"
#: The provider's name, in the metrics of its calls.
NAME = "softsugar"
#: 003 "Live Broadcast Takeover Cancellation": "-1" cancels everything, in progress and queued.
CANCEL_ALL = "-1"


@dataclass(frozen=True)
class _Response:
    status: int
    headers: Mapping[str, str]
    body: bytes


class SoftSugarClient:
    """Async client of one SoftSugar account (app id)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        base_url: str | URL,
        app_id: str,
        app_key: str,
        token: SharedToken | None,
        timeout_s: float = 10.0,
        connect_timeout_s: float = 3.0,
        retry: RetryPolicy = RetryPolicy(),
        max_concurrency: int = 8,
        observe: CallObserver | None = None,
    ) -> None:
        self._session = session
        self._base = URL(str(base_url))
        self._observe = observe
        self.app_id = app_id
        self._app_key = app_key
        self.token = token
        self._timeout_s = timeout_s
        self._timeout = aiohttp.ClientTimeout(total=clock.real_s(timeout_s), sock_connect=connect_timeout_s)
        self._retry = retry
        self._slots = asyncio.Semaphore(max_concurrency)

    # --- tokens -----------------------------------------------------------------------------------------

    async def obtain_token(self, refresh_token: str | None) -> Issued:
        """A new access token: by the refresh token, or by signing. Used by :class:`SharedToken`."""
        now_ms = clock.time_ms()
        if refresh_token is not None:
            body: dict[str, object] = {"appId": self.app_id, "grantType": "refreshToken"}
            headers = {"Authorization": f"Bearer {refresh_token}"}
            data = await self._call("POST", REFRESH_PATH, body, Retry.SAFE, headers=headers, auth=False)
        else:
            timestamp = clock.time_ms()
            body = {
                "appId": self.app_id,
                "timestamp": timestamp,
                "sign": sign(self.app_id, timestamp, self._app_key),
                "grantType": "sign",
            }
            data = await self._call("POST", TOKEN_PATH, body, Retry.SAFE, auth=False)
        token = _model(Token, data)
        expires_ms = now_ms + token.expiresIn * 1000
        # The refresh token's own lifetime is not published: taken as twice the access token's.
        return Issued(token.accessToken, expires_ms, token.refreshToken, now_ms + 2 * token.expiresIn * 1000)

    # --- live channels (003) ----------------------------------------------------------------------------

    async def create_channel(
        self, script: LiveScript, *, user_data: str | None = None, **rtc: Any
    ) -> Channel:
        """Create a live channel (billing starts now). Raises ProviderError; never repeated when the vendor
        may have acted."""
        body = CreateChannel(param=script.param(), userData=user_data, **rtc).to_wire()
        return _model(
            Channel, await self._call("POST", f"{BASE}/v2/material/live/channel/create", body, Retry.UNSENT)
        )

    async def heartbeat(self, session_id: str) -> None:
        await self._call(
            "POST", f"{BASE}/v1/material/live/channel/heartbeat", _session(session_id), Retry.SAFE
        )

    async def start(self, session_id: str) -> bool:
        data = await self._call(
            "POST", f"{BASE}/v1/material/live/channel/start", _session(session_id), Retry.SAFE
        )
        return bool(data) if data is not None else True

    async def close(self, session_id: str) -> bool:
        data = await self._call(
            "POST", f"{BASE}/v1/material/live/channel/close", _session(session_id), Retry.SAFE
        )
        return bool(data) if data is not None else True

    async def stat(self, session_id: str) -> SessionStat:
        url = f"{BASE}/v1/material/live/channel/stat"
        return _model(
            SessionStat, await self._call("GET", url, None, Retry.SAFE, query={"sessionId": session_id})
        )

    async def running(self) -> list[RunningSession]:
        data = await self._call("GET", f"{BASE}/v1/material/live/channel/running/list", None, Retry.SAFE)
        return [_model(RunningSession, item) for item in (data or [])]

    async def history(self, query: HistoryQuery | None = None) -> HistoryPage:
        body = (query or HistoryQuery()).to_wire()
        return _model(
            HistoryPage,
            await self._call("POST", f"{BASE}/v1/material/live/channel/history/list", body, Retry.SAFE),
        )

    async def rtc_audience_token(self, session_id: str, rtc_channel_id: str) -> str:
        body = RtcTokenBody(sessionId=session_id, rtcChannelId=rtc_channel_id).to_wire()
        data = await self._call("POST", f"{BASE}/v1/material/rtc/token/audience", body, Retry.SAFE)
        if not isinstance(data, str):
            raise ProviderInvalidResponse("the RTC token answer carries no token")
        return data

    # --- takeovers (003) --------------------------------------------------------------------------------

    async def command_v1(self, session_id: str, takeover: Takeover) -> bool:
        """The deprecated, uninterruptible takeover (003: "soon to be discontinued")."""
        body = CommandBody(sessionId=session_id, param=takeover.param()).to_wire()
        data = await self._call("POST", f"{BASE}/v1/material/live/channel/command", body, Retry.UNSENT)
        return bool(data) if data is not None else True

    async def command(self, session_id: str, takeover: Takeover) -> CommandResult:
        """Interruptible takeover: plays at once, interrupting what plays."""
        body = CommandBody(sessionId=session_id, param=takeover.param()).to_wire()
        return _model(
            CommandResult,
            await self._call("POST", f"{BASE}/v2/material/live/channel/command", body, Retry.UNSENT),
        )

    async def queue(
        self, session_id: str, takeover: Takeover, *, priority: int | None = None
    ) -> QueuedCommand:
        """Queued takeover at position ``priority`` (1: right after what plays; none or beyond: last)."""
        body = QueueBody(sessionId=session_id, param=takeover.param(), priority=priority).to_wire()
        url = f"{BASE}/v1/material/live/channel/command/queue"
        return _model(QueuedCommand, await self._call("POST", url, body, Retry.UNSENT))

    async def reorder(self, session_id: str, trace_id: str, priority: int) -> bool:
        body = ReorderBody(sessionId=session_id, commandTraceId=trace_id, priority=priority).to_wire()
        data = await self._call(
            "POST", f"{BASE}/v1/material/live/channel/command/queue/reorder", body, Retry.SAFE
        )
        return bool(_model(CommandResult, data or {}).isSuccess)

    async def cancel(self, session_id: str, trace_ids: list[str] | None) -> CancelResult:
        """Cancel takeovers by trace id (``;``-joined), or all of them (None: ``-1``)."""
        joined = ";".join(trace_ids) if trace_ids else CANCEL_ALL
        body = CancelBody(sessionId=session_id, commandTraceId=joined).to_wire()
        url = f"{BASE}/v1/material/live/channel/command/cancel"
        return _model(CancelResult, await self._call("POST", url, body, Retry.SAFE))

    async def queue_list(self, session_id: str) -> list[str]:
        """Trace ids in play order: the one playing (or about to) first."""
        url = f"{BASE}/v1/material/live/channel/command/queue/list"
        return _model(
            QueueList, await self._call("POST", url, _session(session_id), Retry.SAFE) or {}
        ).commandTraceIds

    async def quick(self, session_id: str, handoff: QuickHandoff) -> CommandResult:
        """Chat handoff (no queueing; refused while a chat is ongoing)."""
        body = CommandBody(sessionId=session_id, param=handoff.param()).to_wire()
        url = f"{BASE}/v2/material/live/channel/command/quick"
        return _model(CommandResult, await self._call("POST", url, body, Retry.UNSENT))

    async def nlp_reply(self, query: NlpQuery) -> NlpAnswer:
        """The account's Q&A database's answer (this endpoint answers without the envelope)."""
        data = await self._call(
            "POST", f"{BASE}/v1/nlp/model/reply", query.to_wire(), Retry.SAFE, envelope=False
        )
        answer = _model(NlpAnswer, data)
        if answer.error_message:
            raise ProviderStatusError(200, "NLP", answer.error_message)
        return answer

    def microphone_url(self, session_id: str, session_token: str, client_type: str = "BROWSER") -> URL:
        """The WebSocket of 003 "Streaming Voice Takeover" (the session's token, not the account's)."""
        scheme = "wss" if self._base.scheme == "https" else "ws"
        base = self._base.with_scheme(scheme)
        path = "/api/live-takeover-cc/v1/material/live/channel/command/microphone"
        return base.with_path(path).with_query(
            {"clientType": client_type, "sessionId": session_id, "Authorization": f"Bearer {session_token}"}
        )

    async def microphone(self, session_id: str, session_token: str) -> aiohttp.ClientWebSocketResponse:
        """Open the session's "Streaming Voice Takeover" WebSocket (003 l.487-590): the caller sends
        ``begin`` / PCM frames / ``eof`` on it, or only listens for the 18/19/20 notices of HTTP takeovers.
        Raises ProviderConnectError (refused, or the handshake failed), ProviderTimeout."""
        try:
            return await self._session.ws_connect(
                self.microphone_url(session_id, session_token),
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5.0),
                heartbeat=30.0,
                max_msg_size=1024 * 1024,
            )
        except aiohttp.WSServerHandshakeError as exc:
            raise ProviderConnectError(f"microphone WebSocket refused: HTTP {exc.status}") from None
        except TimeoutError:
            raise ProviderTimeout("microphone WebSocket: no handshake in time") from None
        except aiohttp.ClientError as exc:
            raise ProviderConnectError(f"microphone WebSocket: {type(exc).__name__}: {exc}") from None

    # --- plumbing ---------------------------------------------------------------------------------------

    async def _call(
        self,
        method: str,
        path: str,
        payload: Any,
        mode: Retry,
        *,
        query: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        auth: bool = True,
        envelope: bool = True,
    ) -> Any:
        """Send with retries per ``mode`` (and one token renewal on a 401); the answer's ``data``.

        Raises ProviderError.
        """
        url = self._base.with_path(path)
        if query:
            url = url.with_query(query)
        body = (
            b""
            if payload is None
            else json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
        )
        renewed = False
        attempt = 0
        while True:
            token = await self._token() if auth else None
            try:
                return await self._attempt(method, url, body, token, headers, envelope)
            except ProviderAuthError:
                if not auth or renewed or self.token is None or token is None:
                    raise
                renewed = True
                await self.token.invalidate(token)
            except ProviderError as error:
                if attempt >= self._retry.max_retries or not is_retryable(error, mode):
                    raise
                delay = self._retry.delay_s(attempt, error)
                attempt += 1
                log.warning(
                    "softsugar call failed; retrying",
                    path=path,
                    attempt=attempt,
                    delay_s=round(delay, 3),
                    error=str(error),
                )
                await clock.sleep(delay)

    async def _attempt(
        self,
        method: str,
        url: URL,
        body: bytes,
        token: str | None,
        headers: Mapping[str, str] | None,
        envelope: bool,
    ) -> Any:
        """One call and its answer's ``data``, told to the observer (the daemon's metrics)."""
        started = time.monotonic()
        try:
            data = _unwrap(await self._send(method, url, body, token, headers), envelope)
        except ProviderError as error:
            if self._observe is not None:
                self._observe(NAME, _operation(url.path), call_code(error), time.monotonic() - started)
            raise
        if self._observe is not None:
            self._observe(NAME, _operation(url.path), "ok", time.monotonic() - started)
        return data

    async def _token(self) -> str:
        if self.token is None:
            raise ProviderAuthError(401, None, "no SoftSugar token: softsugar.app_id and app_key are not set")
        return await self.token.get()

    async def _send(
        self, method: str, url: URL, body: bytes, token: str | None, extra: Mapping[str, str] | None
    ) -> _Response:
        """One HTTP exchange; every aiohttp/asyncio failure becomes a ProviderError here."""
        headers = {"Content-Type": "application/json", **(extra or {})}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
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
            "softsugar call",
            method=method,
            path=url.path,
            status=response.status,
            duration_ms=round((time.monotonic() - started) * 1000, 1),
        )
        return response


def _operation(path: str) -> str:
    """A call's name for metrics: its path after the service prefix (the paths hold no ids)."""
    return path.removeprefix(BASE) or path


def _session(session_id: str) -> dict[str, Any]:
    return SessionBody(sessionId=session_id).to_wire()


def _unwrap(response: _Response, envelope: bool) -> Any:
    """The answer's ``data``; raises the ProviderStatusError its HTTP status or its ``code`` says."""
    try:
        decoded = json.loads(response.body) if response.body.strip() else None
    except ValueError:
        decoded = None
        if response.status < 400:
            raise ProviderInvalidResponse(f"HTTP {response.status}: the response body is not JSON") from None
    if not envelope and response.status < 400:
        return decoded
    answer = Envelope.model_validate(decoded) if isinstance(decoded, dict) and "code" in decoded else None
    if response.status >= 400:
        retry_after = response.headers.get("Retry-After")
        raise status_error(
            response.status,
            str(answer.code) if answer else None,
            answer.message if answer else None,
            None,
            float(retry_after) if retry_after and retry_after.replace(".", "", 1).isdigit() else None,
        )
    if answer is None:
        raise ProviderInvalidResponse(f"HTTP {response.status}: the answer is not {{code, message, data}}")
    if answer.code != 0:
        raise ProviderStatusError(response.status, str(answer.code), answer.message)
    return answer.data


def _model(model: type[M], data: Any) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "(data)"
        raise ProviderInvalidResponse(
            f"unexpected {model.__name__} from SoftSugar: {where}: {first['msg']}"
        ) from None
