"""Huawei Cloud MetaStudio "smart live": the first provider.

The registry (:mod:`orchestrator.providers.registry`) reads three names here: ``TEMPLATE`` (a room's
template: :class:`.template.StartTemplate`), ``reference_problems`` (what a room names that the settings
lack: its callback profile) and ``build`` (the provider, given the process's shared parts).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from orchestrator.providers.metastudio.profiles import UnknownProfile, resolve_profile
from orchestrator.providers.metastudio.template import StartTemplate

if TYPE_CHECKING:
    from orchestrator.providers.base import RoomSpec
    from orchestrator.providers.metastudio.client import MetaStudioClient
    from orchestrator.providers.metastudio.provider import MetaStudio
    from orchestrator.providers.registry import ProviderDeps
    from orchestrator.settings import Settings

TEMPLATE = StartTemplate


def reference_problems(room: RoomSpec, settings: Settings) -> list[tuple[str, str]]:
    """The room's callback profile must exist (and have a public URL): ``(field, message)`` pairs."""
    try:
        resolve_profile(settings, room.callback_profile)
    except UnknownProfile as exc:
        defined = ", ".join(sorted(settings.metastudio.callback_profiles)) or "none"
        hint = (
            f"{exc} (profiles defined: {defined}; define "
            f"[metastudio.callback_profiles.{room.callback_profile}] with public_url, auth_type and keys, "
            "or name a defined one)"
        )
        return [("callback_profile", hint)]
    return []


def credentials_problem(settings: Settings) -> str | None:
    """Why the MetaStudio account cannot be used (AK, SK, project id), or None."""
    from orchestrator.providers.errors import ProviderConfigError
    from orchestrator.providers.metastudio.client import credentials_from_settings

    try:
        credentials_from_settings(settings.metastudio)
    except ProviderConfigError as exc:
        return str(exc)
    return None


def build(deps: ProviderDeps) -> MetaStudio:
    """The provider; its client is made on first use (ProviderConfigError until credentials are set)."""
    from orchestrator.providers.metastudio.client import MetaStudioClient
    from orchestrator.providers.metastudio.provider import MetaStudio

    made: list[MetaStudioClient] = []

    def client() -> MetaStudioClient:
        if not made:  # raises ProviderConfigError (a ProviderError) until configured
            made.append(MetaStudioClient.from_settings(deps.http, deps.settings.metastudio, deps.observe))
        return made[0]

    return MetaStudio(client, deps.settings)
