"""Callback profiles: the public URL, auth type and keys one tenant's callbacks use.

The profile named ``default`` serves ``POST /callbacks/metastudio/live-events``; any other profile ``NAME``
serves ``POST /callbacks/metastudio/live-events/NAME``. A profile's public URL is what MetaStudio calls and
signs; when it is not configured it is derived from ``server.public_base_url``.

:func:`live_event_callback_config` builds the ``live_event_callback_config`` object of a start-job request
from a profile: the same function serves ``orchestrator callback-config`` and the room actions.

The URL a job is started with names its room: the profile's public URL plus ``room_id=<room>`` in the
query (:func:`room_callback_url`). MSS_A signs the URL and the time, not the body, so a signature made for
one URL verifies for that URL only: with the room in it, a signature captured from one room's callback
cannot be replayed with another room's body, and the receiver refuses a body naming another room than
its URL. (The job cannot be named there too: its id is the vendor's answer to the start that carries the
URL. A body naming a job the room never had is refused as not ours; one naming an earlier job of the
room is recorded, never applied.) Jobs started with the bare profile URL keep working.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog

from orchestrator.providers.errors import ProviderConfigError
from orchestrator.providers.metastudio.models import CallbackEventType, LiveEventCallbackConfig
from orchestrator.settings import CallbackAuthType, Settings

log = structlog.get_logger(__name__)

CALLBACK_PATH = "/callbacks/metastudio/live-events"
ROOM_QUERY = "room_id"
DEFAULT_PROFILE = "default"
ALL_EVENT_TYPES: list[CallbackEventType] = [
    "SHOOT_SCRIPT_SWITCH",
    "RTMP_STREAM_STATE_CHANGE",
    "REPLY_COMMAND_FINISH",
]


class UnknownProfile(ProviderConfigError, LookupError):
    """No callback profile of that name, or it has no usable public URL."""

    field = "callback_profile"


@dataclass(frozen=True)
class ResolvedProfile:
    name: str
    public_url: str
    auth_type: CallbackAuthType
    keys: tuple[str, ...]  # raw secrets: never log this object's keys


def resolve_profile(settings: Settings, name: str = DEFAULT_PROFILE) -> ResolvedProfile:
    """The profile ``name`` with its public URL resolved.

    Raises UnknownProfile.
    """
    profile = settings.metastudio.callback_profiles.get(name)
    if profile is None:
        raise UnknownProfile(f"no callback profile named {name!r}")
    url = str(profile.public_url) if profile.public_url else None
    if url is None and settings.server.public_base_url is not None:
        base = str(settings.server.public_base_url).rstrip("/")
        url = f"{base}{CALLBACK_PATH}" + ("" if name == DEFAULT_PROFILE else f"/{name}")
    if url is None:
        raise UnknownProfile(
            f"callback profile {name!r} has no public_url and server.public_base_url is not set"
        )
    return ResolvedProfile(name, url, profile.auth_type, tuple(k.get_secret_value() for k in profile.keys))


def callback_profiles(settings: Settings) -> dict[str, ResolvedProfile]:
    """Every usable profile; one without a URL is left out (and said so) rather than failing start-up."""
    profiles = {}
    for name in settings.metastudio.callback_profiles:
        try:
            profiles[name] = resolve_profile(settings, name)
        except UnknownProfile as exc:
            log.warning("callback profile unusable", profile=name, reason=str(exc))
    return profiles


def room_callback_url(public_url: str, room_id: str) -> str:
    """The profile's public URL bound to one room (room ids are key-safe: nothing to percent-encode)."""
    return f"{public_url}{'&' if '?' in public_url else '?'}{ROOM_QUERY}={room_id}"


def live_event_callback_config(
    profile: ResolvedProfile, room_id: str | None = None
) -> LiveEventCallbackConfig:
    """The start-job callback config: MetaStudio calls this profile's URL -- bound to ``room_id`` when
    given, as every job the daemon starts is -- signed with the profile's current key."""
    url = profile.public_url if room_id is None else room_callback_url(profile.public_url, room_id)
    return LiveEventCallbackConfig(
        live_event_type_callback_url=url,
        auth_type=profile.auth_type.value,
        key=profile.keys[0] if profile.keys else None,
        callback_event_type=list(ALL_EVENT_TYPES),
    )
