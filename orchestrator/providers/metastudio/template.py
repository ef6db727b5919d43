"""A MetaStudio room's template: the start-job request, but the callback config the daemon adds."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, model_validator

from orchestrator.providers.base import RoomTemplate
from orchestrator.providers.metastudio.models import (
    CoStreamerConfig,
    LiveEventCallbackConfig,
    LiveJobRunConfig,
    PlayPolicy,
    StartJobRequest,
    VideoConfig,
)


class StartTemplate(RoomTemplate):
    """What a start-job request carries for the room (004 §6.2.1); the callback config comes from the room's
    callback profile. Stream keys and the interaction callback URL are secrets."""

    video_config: VideoConfig | None = None
    play_policy: PlayPolicy = PlayPolicy(repeat_count=-1)
    # MetaStudio takes one RTMP output per job ("Currently, only one RTMP stream output address is
    # supported", 004 Table 6-262): refused here, where it is written, not by the vendor at start.
    output_urls: list[str] = Field(..., min_length=1, max_length=1)
    stream_keys: list[SecretStr] = Field(default_factory=list)
    interaction_callback_url: SecretStr | None = None
    view_mode: Literal["LANDSCAPE", "VERTICAL"] | None = None
    co_streamer_config: CoStreamerConfig | None = None

    @model_validator(mode="after")
    def _keys_match_urls(self) -> StartTemplate:
        if self.stream_keys and len(self.stream_keys) != len(self.output_urls):
            raise ValueError("stream_keys must have one key per output URL")
        return self

    def outputs(self) -> list[str]:
        return list(self.output_urls)

    def to_request(self, callback_config: LiveEventCallbackConfig | None) -> StartJobRequest:
        return StartJobRequest(
            video_config=self.video_config,
            play_policy=self.play_policy,
            output_urls=self.output_urls,
            stream_keys=[k.get_secret_value() for k in self.stream_keys] or None,
            interaction_callback_url=(
                self.interaction_callback_url.get_secret_value() if self.interaction_callback_url else None
            ),
            live_event_callback_config=callback_config,
            view_mode=self.view_mode,
            co_streamer_config=self.co_streamer_config,
            # One running job per room, always: a second start is refused by the vendor (MSS.20010036)
            # and the client adopts the running job instead of paying for two.
            job_run_config=LiveJobRunConfig(single_job_in_room=True),
        )
