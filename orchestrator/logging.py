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
import threading
import time
import types
from collections.abc import Callable, Iterable, MutableMapping
from typing import Any, TextIO

import orjson
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
        self._name_cache: dict[str, bool] = {}
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
        known = self._name_cache.get(name)
        if known is None:
            known = self._name_cache[name] = _normalise(name) in self._names
            if len(self._name_cache) > 10_000:  # field names are few; this only bounds a pathological caller
                self._name_cache.clear()
        return known

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
        # Cheap substring checks first: most log strings hold neither a secret nor a name=value pair, and
        # a regex pass over every field of every line would cost more than the line itself.
        if self._value_re is not None and any(value in text for value in self._values):
            text = self._value_re.sub(MASK, text)
        if ("=" in text or ":" in text) and self._pair_re.search(text):
            text = self._pair_re.sub(rf"\g<1>{MASK}", text)
        return text

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


_access_line: Callable[[dict[str, Any]], None] | None = None


def access_line(fields: dict[str, Any]) -> None:
    """Write one access-log line (``event: request``, logger ``orchestrator.access``)."""
    if _access_line is not None:
        _access_line(fields)
    else:
        structlog.get_logger("orchestrator.access").info("request", **fields)


def _fast_json_access(stream: TextIO, redactor: Redactor) -> Callable[[dict[str, Any]], None]:
    """The access log in JSON without structlog's processor chain (one line per request must be cheap):
    the same fields, context, timestamp format and redaction as every other line."""

    def write(fields: dict[str, Any]) -> None:
        now = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1_000_000):06d}Z"
        line = {
            **structlog.contextvars.get_contextvars(),
            **fields,
            "event": "request",
            "logger": "orchestrator.access",
            "level": "info",
            "timestamp": stamp,
        }
        stream.write(orjson.dumps(redactor(None, "info", line), default=str).decode() + "\n")

    return write


def _orjson_dumps(value: Any, **_: Any) -> str:
    return orjson.dumps(value, default=str).decode()


class _NamedWriteLogger(structlog.WriteLogger):
    """structlog's direct writer, with the name it was asked for (``add_logger_name`` reads ``.name``)."""

    def __init__(self, file: TextIO, name: str) -> None:
        super().__init__(file)
        self.name = name


def _demote_apscheduler_info(record: logging.LogRecord) -> bool:
    if record.name.startswith("apscheduler") and record.levelno == logging.INFO:
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger().isEnabledFor(logging.DEBUG)
    return True


def _log_uncaught(
    exc_type: type[BaseException], exc: BaseException | None, tb: types.TracebackType | None
) -> None:
    if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
        return
    structlog.get_logger("orchestrator").critical("uncaught exception", exc_info=(exc_type, exc, tb))


def configure_logging(settings: LoggingSettings, redactor: Redactor, *, stream: TextIO | None = None) -> None:
    """Send our structlog lines, and the standard library's records, redacted, to ``stream``.

    Our own lines go straight from structlog to the stream (no ``logging.LogRecord`` per line: the access
    log writes one per request); records of libraries that use ``logging`` pass through a handler with the
    same processors. Both end in the redactor, then the renderer.
    """
    global _access_line
    stream = stream if stream is not None else sys.stderr
    fmt = resolve_format(settings.format, stream)
    json_out = fmt is LogFormat.JSON and logging.getLevelNamesMapping()[settings.level] <= logging.INFO
    _access_line = _fast_json_access(stream, redactor) if json_out else None
    renderer: structlog.typing.Processor
    if fmt is LogFormat.JSON:
        renderer = structlog.processors.JSONRenderer(serializer=_orjson_dumps)
    else:
        renderer = structlog.dev.ConsoleRenderer(
            colors=stream.isatty(), exception_formatter=structlog.dev.plain_traceback
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
        processors=[*shared, renderer],
        logger_factory=lambda *args: _NamedWriteLogger(stream, str(args[0]) if args else ""),
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[settings.level]),
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
    # APScheduler says "Running job ..." / "executed successfully" at INFO for every wake-up (nearly half
    # of all lines in a tried run): those are DEBUG here; its warnings and errors stay what they are.
    handler.addFilter(_demote_apscheduler_info)
    # Warnings, and any exception nothing caught, go through the same pipeline (and the redactor): no
    # plain-text traceback on stderr beside the JSON lines.
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught
    threading.excepthook = lambda args: _log_uncaught(args.exc_type, args.exc_value, args.exc_traceback)
