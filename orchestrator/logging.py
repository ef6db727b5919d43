"""Structured logging: structlog for our code and the standard library's loggers, with secrets masked.

Every record -- ours, aiohttp's (the access log included), asyncio's, APScheduler's -- passes through one
:class:`Redactor` before it is rendered, so no code path can write a secret by mistake:

* a field or query parameter whose *name* says it holds a secret (``hwSecret``, ``x-hw-mss-secret``,
  ``Authorization``, ``sk``, ``stream_key``, ``token`` ...) has its value replaced, at any depth;
* any known secret *value* (the settings' secrets, plus values registered at run time such as stream
  keys) is replaced wherever it appears inside a string, tracebacks included;
* ``name=value`` pairs with a secret name inside free text (a URL in an error message) are masked too.

Output is JSON lines when stderr is not a TTY (or ``format = "json"``), a readable console otherwise.
Context such as ``request_id``, ``room_id`` and ``job_id`` is bound with structlog's contextvars.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, TextIO

import structlog

from orchestrator.settings import LogFormat, LoggingSettings

MASK = "***"

#: Normalised (lower-case, ``-`` → ``_``) names whose values are secrets wherever they appear.
SECRET_NAMES = frozenset(
    {
        "hwsecret",
        "hw_secret",
        "x_hw_mss_secret",
        "authorization",
        "proxy_authorization",
        "x_auth_token",
        "x_security_token",
        "x_subject_token",
        "ak",
        "sk",
        "access_key",
        "secret_key",
        "secret",
        "secrets",
        "stream_key",
        "stream_keys",
        "callback_key",
        "key",
        "keys",
        "admin_token",
        "auth_token",
        "token",
        "security_token",
        "password",
        "api_key",
        "cookie",
        "set_cookie",
        "signature",
        "access",
    }
)

#: Secret values shorter than this are not searched for inside text (they would mask innocent digits).
MIN_SECRET_VALUE_LEN = 4

LoggerName = str
EventDict = MutableMapping[str, Any]


def _normalise(name: str) -> str:
    return name.strip().lower().replace("-", "_")


class Redactor:
    """A structlog processor that masks secrets by field name and by value, recursively."""

    def __init__(self, extra_names: Iterable[str] = (), values: Iterable[str] = ()) -> None:
        self._names = SECRET_NAMES | {_normalise(n) for n in extra_names}
        self._values: set[str] = set()
        self._value_re: re.Pattern[str] | None = None
        self._pair_re = self._compile_pairs()
        self.add_values(values)

    def add_values(self, values: Iterable[str]) -> None:
        """Start masking these secret values too (e.g. stream keys loaded at run time)."""
        new = {v for v in values if v and len(v) >= MIN_SECRET_VALUE_LEN} - self._values
        if not new:
            return
        self._values |= new
        # Longest first, so a secret that contains another is masked whole.
        ordered = sorted(self._values, key=len, reverse=True)
        self._value_re = re.compile("|".join(re.escape(v) for v in ordered))

    def _compile_pairs(self) -> re.Pattern[str]:
        # name=value or "name": "value" inside free text: URLs, headers echoed in error messages.
        names = sorted({n for n in self._names} | {n.replace("_", "-") for n in self._names}, key=len)
        alternation = "|".join(re.escape(n) for n in reversed(names))
        return re.compile(
            rf"(?i)(?<![A-Za-z0-9_-])((?:{alternation})[\"']?\s*[=:]\s*[\"']?)(?!\*\*\*)([^&\s\"',;}}]+)"
        )

    def is_secret_name(self, name: str) -> bool:
        return _normalise(name) in self._names

    def scrub(self, value: Any) -> Any:
        """``value`` with every secret masked; containers are copied, never mutated."""
        if isinstance(value, str):
            return self._scrub_text(value)
        if isinstance(value, dict):
            return {
                k: (MASK if isinstance(k, str) and self.is_secret_name(k) else self.scrub(v))
                for k, v in value.items()
            }
        if isinstance(value, tuple):
            return tuple(self.scrub(v) for v in value)
        if isinstance(value, list | set | frozenset):
            return type(value)(self.scrub(v) for v in value)
        if isinstance(value, bytes):
            return self._scrub_text(value.decode("utf-8", "replace"))
        return value

    def _scrub_text(self, text: str) -> str:
        if self._value_re is not None:
            text = self._value_re.sub(MASK, text)
        return self._pair_re.sub(rf"\g<1>{MASK}", text)

    def __call__(self, logger: Any, method_name: str, event_dict: EventDict) -> EventDict:
        for key in list(event_dict):
            if key.startswith("_"):  # structlog's own bookkeeping (_record, _from_structlog)
                continue
            value = event_dict[key]
            event_dict[key] = MASK if self.is_secret_name(key) else self.scrub(value)
        return event_dict


def resolve_format(fmt: LogFormat, stream: TextIO) -> LogFormat:
    if fmt is LogFormat.AUTO:
        return LogFormat.CONSOLE if stream.isatty() else LogFormat.JSON
    return fmt


def configure_logging(settings: LoggingSettings, redactor: Redactor, *, stream: TextIO | None = None) -> None:
    """Route structlog and the standard library's logging through one redacting handler on ``stream``."""
    stream = stream if stream is not None else sys.stderr
    fmt = resolve_format(settings.format, stream)
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if fmt is LogFormat.JSON
        else structlog.dev.ConsoleRenderer(
            colors=stream.isatty(), exception_formatter=structlog.dev.plain_traceback
        )
    )
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        # Last before rendering: it must see the formatted traceback too.
        redactor,
    ]
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            structlog.stdlib.PositionalArgumentsFormatter(),
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.level)
    # aiohttp's own access logger is replaced by AccessLogger below; keep its name quiet if used.
    logging.getLogger("aiohttp.access").setLevel(logging.INFO if settings.access_log else logging.WARNING)
