"""Which provider drives a room: a registry of provider packages, found by the name a room gives.

A provider package (``orchestrator.providers.<name>``) exposes, at its top level:

* ``TEMPLATE`` -- its room template model (a :class:`~orchestrator.providers.base.RoomTemplate`), which
  a room naming the provider is validated against;
* ``build(deps) -> Provider`` -- the provider, given what the process shares (:class:`ProviderDeps`);
* ``reference_problems(room, settings)`` -- what a room names that the settings lack;
* ``credentials_problem(settings) -> str | None`` -- why the vendor account cannot be used (never a
  secret), or None (the console's daemon page).

The core never imports a provider package: it names the provider by string and the registry loads the
package the first time a room names it (``importlib``), as a plugin host would. Adding a vendor is adding
its package and its name to :data:`KNOWN` (see ``docs/architecture.md``, "Adding a provider").
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import cache
from types import ModuleType
from typing import Any, cast

import aiohttp
import redis.asyncio as aioredis

from orchestrator.providers.base import CallObserver, Provider, RoomSpec, RoomTemplate
from orchestrator.providers.errors import ProviderConfigError
from orchestrator.settings import Settings

#: Provider name → its package. The name is what a room's ``provider`` says.
KNOWN: dict[str, str] = {
    "metastudio": "orchestrator.providers.metastudio",
    "softsugar": "orchestrator.providers.softsugar",
}
#: The provider of a room that names none (and of rooms recorded before rooms named one).
DEFAULT_PROVIDER = "metastudio"


def _no_observe(provider: str, operation: str, code: str, seconds: float) -> None:
    pass


async def _no_alert(kind: str, message: str) -> None:
    """Alerts nobody (a process without an alerter: tools, tests)."""


class UnknownProvider(ProviderConfigError, LookupError):
    """A room names a provider this daemon does not have."""


@dataclass(frozen=True)
class ProviderDeps:
    """What a provider may use, shared by the process: the outgoing HTTP session, the settings, the
    shared Redis (a vendor token shared by replicas lives there), and the daemon-wide alert
    (``(kind, message)``)."""

    http: aiohttp.ClientSession
    settings: Settings
    redis: aioredis.Redis
    alert: Callable[[str, str], Awaitable[None]] = _no_alert
    #: Told of every vendor call: (provider, operation, code -- ``ok``, the vendor's error code, an HTTP
    #: status or ``timeout``/``connect``/``transport``/``invalid``, seconds) -- the daemon's metrics.
    observe: CallObserver = _no_observe


def names() -> list[str]:
    return sorted(KNOWN)


@cache
def _package(name: str) -> ModuleType:
    if name not in KNOWN:
        raise UnknownProvider(f"no provider named {name!r} (known: {', '.join(names())})")
    return importlib.import_module(KNOWN[name])


def template_model(name: str) -> type[RoomTemplate]:
    """The room template model of provider ``name``. Raises UnknownProvider."""
    return cast(type[RoomTemplate], _package(name).TEMPLATE)


def credentials_problem(name: str, settings: Settings) -> str | None:
    """Why provider ``name``'s account cannot be used, or None. Raises UnknownProvider."""
    return cast(str | None, _package(name).credentials_problem(settings))


def reference_problems(name: str, room: RoomSpec, settings: Settings) -> list[tuple[str, str]]:
    """What ``room`` names that provider ``name``'s settings lack, as ``(field, message)`` pairs."""
    return cast(list[tuple[str, str]], _package(name).reference_problems(room, settings))


class Providers:
    """The process's providers, built once each when first needed (a provider whose credentials are
    missing raises ProviderConfigError at each use until they are configured, and then works)."""

    def __init__(self, deps: ProviderDeps) -> None:
        self._deps = deps
        self._built: dict[str, Provider] = {}

    def get(self, name: str) -> Provider:
        """Raises UnknownProvider, ProviderConfigError."""
        provider = self._built.get(name)
        if provider is None:
            provider = self._built[name] = cast(Provider, _package(name).build(self._deps))
        return provider

    def for_room(self, room: RoomSpec) -> Provider:
        return self.get(room.provider)

    def built(self) -> dict[str, Any]:
        return dict(self._built)

    def credentials_state(self) -> dict[str, dict[str, Any]]:
        """Each vendor's account as configured here: usable, or what is missing (never a secret)."""
        state: dict[str, dict[str, Any]] = {}
        for name in names():
            problem = credentials_problem(name, self._deps.settings)
            state[name] = (
                {"configured": False, "detail": problem}
                if problem
                else {"configured": True, "detail": "credentials set"}
            )
        return state
