"""SenseTime SoftSugar 2D interactive live: the second provider (document 003).

The registry (:mod:`orchestrator.providers.registry`) reads three names here: ``TEMPLATE`` (a room's
template: :class:`.template.LiveTemplate`, its live script), ``reference_problems`` (what a room needs that
the settings lack: the account) and ``build`` (the provider, given the process's shared parts).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from orchestrator.providers.softsugar.template import LiveTemplate

if TYPE_CHECKING:
    from orchestrator.providers.base import RoomSpec
    from orchestrator.providers.registry import ProviderDeps
    from orchestrator.providers.softsugar.client import SoftSugarClient
    from orchestrator.providers.softsugar.provider import SoftSugar
    from orchestrator.settings import Settings

TEMPLATE = LiveTemplate


def reference_problems(room: RoomSpec, settings: Settings) -> list[tuple[str, str]]:
    """A SoftSugar room needs the account: ``softsugar.app_id`` and ``softsugar.app_key``."""
    if not settings.softsugar.app_id or not settings.softsugar.app_key.get_secret_value():
        return [("provider", "softsugar.app_id and softsugar.app_key are not set: no SoftSugar account")]
    return []


def credentials_problem(settings: Settings) -> str | None:
    """Why the SoftSugar account cannot be used, or None."""
    if not settings.softsugar.app_id or not settings.softsugar.app_key.get_secret_value():
        return "softsugar.app_id and softsugar.app_key are not set"
    return None


def build(deps: ProviderDeps) -> SoftSugar:
    """The provider; its client is made on first use (ProviderConfigError until the account is set)."""
    from orchestrator.providers.errors import ProviderConfigError
    from orchestrator.providers.retry import RetryPolicy
    from orchestrator.providers.softsugar.auth import SharedToken
    from orchestrator.providers.softsugar.client import SoftSugarClient
    from orchestrator.providers.softsugar.provider import SoftSugar

    settings = deps.settings.softsugar
    made: list[SoftSugarClient] = []

    def client() -> SoftSugarClient:
        if not made:
            if not settings.app_id or not settings.app_key.get_secret_value():
                raise ProviderConfigError("softsugar.app_id and softsugar.app_key are not set")
            made.append(
                SoftSugarClient(
                    deps.http,
                    base_url=str(settings.endpoint),
                    app_id=settings.app_id,
                    app_key=settings.app_key.get_secret_value(),
                    token=None,
                    timeout_s=settings.timeout_s,
                    connect_timeout_s=settings.connect_timeout_s,
                    retry=RetryPolicy(max_retries=settings.max_retries),
                    max_concurrency=settings.max_concurrency,
                    observe=deps.observe,
                )
            )
            made[0].token = SharedToken(deps.redis, settings.app_id, made[0].obtain_token)
        return made[0]

    return SoftSugar(client, settings, deps.redis, deps.alert)
