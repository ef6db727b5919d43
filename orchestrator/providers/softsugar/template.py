"""A SoftSugar room's template: its live script, and what its channel is created with."""

from __future__ import annotations

from typing import Any

from pydantic import Field, SecretStr, model_validator

from orchestrator.providers.base import RoomTemplate
from orchestrator.providers.softsugar.models import LiveScript


class LiveTemplate(RoomTemplate):
    """What channel create needs (003): the live script, and optionally the operator's own RTC app (Agora)
    instead of the platform's; and the room's Q&A database (003 "Live NLP Q&A"), if replies may come from
    it. The RTC token is a secret."""

    script: LiveScript
    rtc_app_id: str | None = None
    rtc_token: SecretStr | None = None
    rtc_uid: str | None = Field(None, pattern=r"^\d{1,10}$")
    rtc_channel_id: str | None = Field(None, max_length=64)
    qa_app_id: str | None = Field(None, min_length=1, description="the Q&A database id (its string id)")

    @model_validator(mode="after")
    def _rtc_all_or_none(self) -> LiveTemplate:
        given = [self.rtc_app_id, self.rtc_token, self.rtc_uid, self.rtc_channel_id]
        if any(given) and not all(given):
            raise ValueError(
                "rtc_app_id, rtc_token, rtc_uid and rtc_channel_id go together (your own RTC app)"
            )
        return self

    def outputs(self) -> list[str]:
        return []  # the stream is pulled from the RTC channel; the vendor reports no output links

    def create_fields(self) -> dict[str, Any]:
        """The RTC fields of channel create (none: the platform's RTC app)."""
        if not self.rtc_app_id or self.rtc_token is None:
            return {}
        return {
            "urtcUseExternalApp": True,
            "urtcAppId": self.rtc_app_id,
            "urtcToken": self.rtc_token.get_secret_value(),
            "urtcUid": self.rtc_uid,
            "urtcChannelId": self.rtc_channel_id,
        }
