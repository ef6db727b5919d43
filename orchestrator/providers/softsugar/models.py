"""Wire models of SenseTime SoftSugar's 2D interactive live API (document 003, "Interactive Live
Broadcasting").

Request models refuse unknown fields and check every documented range before anything is sent, so a bad
live script fails here with the field named instead of at the vendor. Response models keep fields the
document does not list (``extra="allow"``).

Two JSON documents travel *as strings* inside request bodies (003: "this parameter is a JSON-escaped
string"): the **live script** (:class:`LiveScript`, channel create's ``param``) and the **takeover**
(:class:`Takeover`, the command endpoints' ``param``). Every response is ``{"code", "message", "data"}``,
``code != 0`` an error, whatever the HTTP status.

Where 003 is silent or contradicts itself we chose, and say so beside the field:

* ``tts_config.speed_ratio`` "the higher the value, the slower the speech": kept as written, range [0.5, 2].
* ``resolution`` "maximum 1080p, minimum 1010" (0.0.2) / "minimum 10" (0.0.1): each side between 10 and
  1920 pixels, the long side at most 1920 and the short side at most 1080 (1080p).
* The takeover example gives ``backgrounds`` as an object where the table says an array: both are taken,
  and an object is sent as a one-item array.
* ``quick_response`` is an array of strings in the example, and of filler requests (``tts_query`` /
  ``audio``) in the table: both are modelled; one kind per list.
"""

from __future__ import annotations

import json
from enum import IntEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

#: 003 "Interruptible Live Takeover with Queueing": "it is recommended that the length of the takeover
#: queue does not exceed 15".
MAX_QUEUE = 15
#: 003, live script and takeover: "must be at least 10 characters" / "must not be less than 10 characters".
MIN_TTS_CHARS = 10


class Status(IntEnum):
    """Numeric statuses of 003: a session's, and a takeover's."""

    LIVE = 2
    CLOSED = 5  # closed on request
    EXCEPTION = 9
    CREATING = 32  # video stream being created
    QUEUE_INITIALISING = 33
    TAKEOVER_QUEUED = 34
    CREATED = 35  # video stream created: ready to start
    TAKEOVER_STARTED = 36
    TAKEOVER_FINISHED = 37
    TAKEOVER_FAILED = 39
    CLOSED_PASSIVELY = 50  # no heartbeat for too long, network link interrupted, ...
    SYSTEM_CHANNEL_SHORTAGE = 97
    CUSTOMER_CHANNEL_SHORTAGE = 98
    INIT_FAILED = 99


SESSION_STATUSES = frozenset(
    {
        Status.LIVE,
        Status.CLOSED,
        Status.EXCEPTION,
        Status.CREATING,
        Status.CREATED,
        Status.CLOSED_PASSIVELY,
        Status.SYSTEM_CHANNEL_SHORTAGE,
        Status.CUSTOMER_CHANNEL_SHORTAGE,
        Status.INIT_FAILED,
    }
)
TAKEOVER_STATUSES = frozenset(
    {
        Status.QUEUE_INITIALISING,
        Status.TAKEOVER_QUEUED,
        Status.TAKEOVER_STARTED,
        Status.TAKEOVER_FINISHED,
        Status.TAKEOVER_FAILED,
    }
)
#: Statuses of sessions in progress ("running/list returns only instances in progress": 2, 32, 35).
RUNNING_STATUSES = frozenset({Status.LIVE, Status.CREATING, Status.CREATED})


class RequestModel(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True, by_alias=True)


class ResponseModel(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


Unit = Annotated[float, Field(ge=0.0, le=1.0)]
Signed = Annotated[float, Field(ge=-1.0, le=1.0)]
Rect = Annotated[list[int], Field(min_length=4, max_length=4)]


# --- the live script (003 "Live Script JSON Definition Explanation") ----------------------------------------


class Position(RequestModel):
    x: int
    y: int


class DigitalRole(RequestModel):
    id: int | None = None
    face_feature_id: str = Field(..., min_length=1)
    name: str | None = None
    url: str = Field(..., min_length=1)
    position: Position | None = None
    scale: float | None = Field(None, gt=0)
    alpha: bool | None = None


class TtsConfig(RequestModel):
    qid: str | None = None  # "qid can replace id/vendor_id ... but id and qid cannot be both empty"
    id: str | None = None
    name: str = Field(..., min_length=1)
    vendor_id: int | None = None
    language: str = Field(..., min_length=1)
    pitch_offset: float = Field(..., ge=-60.0, le=60.0)
    speed_ratio: float = Field(..., ge=0.5, le=2.0)
    volume: int = Field(..., ge=1, le=400)

    @model_validator(mode="after")
    def _id_or_qid(self) -> TtsConfig:
        if not self.qid and not self.id:
            raise ValueError("id or qid is required (003: id and qid cannot be both empty)")
        if self.id and not self.qid and self.vendor_id is None:
            raise ValueError("vendor_id is required with id (003: qid can replace id/vendor_id)")
        return self


class TtsQuery(RequestModel):
    content: str = Field(..., min_length=MIN_TTS_CHARS)
    ssml: bool | None = None


class Audio(RequestModel):
    url: str = Field(..., min_length=1)


class FillerQuery(RequestModel):
    content: str = Field(..., min_length=1)
    ssml: bool | None = None


class Filler(RequestModel):
    """One quick-response filler: a TTS request or an audio file, not both."""

    tts_query: FillerQuery | None = None
    audio: str | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Filler:
        if (self.tts_query is None) == (self.audio is None):
            raise ValueError("a filler is either tts_query or audio")
        return self


class Layer(RequestModel):
    """A background (image or video) or foreground (image) of the scene."""

    type: Literal[0, 1] = 0  # 0 image, 1 video (backgrounds only)
    name: str = Field(..., min_length=1)
    url: str = Field(..., min_length=1)
    rect: Rect
    cycle: bool | None = None  # backgrounds: loop a video
    start: int = Field(..., ge=0)  # ms
    duration: int = Field(..., ge=-1)  # ms; -1: as long as the video

    @field_validator("rect")
    @classmethod
    def _rect(cls, rect: list[int]) -> list[int]:
        if rect[2] < 0 or rect[3] < 0:
            raise ValueError("rect is [x, y, width, height]: width and height must not be negative")
        return rect


class Beautify(RequestModel):
    """003's beautification parameters, each with its documented range ([0, 1] or [-1, 1])."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)  # the example adds more (all [0, 1])

    whitenStrength: Unit | None = None  # noqa: N815 -- the vendor's names
    whiten_mode: Literal[0, 1, 2] | None = None
    reddenStrength: Unit | None = None  # noqa: N815
    smoothStrength: Unit | None = None  # noqa: N815
    smooth_mode: Literal[0, 1, 2] | None = None
    shrinkRatio: Unit | None = None  # noqa: N815
    enlargeRatio: Unit | None = None  # noqa: N815
    smallRatio: Unit | None = None  # noqa: N815
    narrowFace: Unit | None = None  # noqa: N815
    roundEyesRatio: Unit | None = None  # noqa: N815
    thinFaceShapeRatio: Unit | None = None  # noqa: N815
    chinLength: Signed | None = None  # noqa: N815
    hairlineHeightRatio: Signed | None = None  # noqa: N815
    appleMusle: Unit | None = None  # noqa: N815
    narrowNoseRatio: Unit | None = None  # noqa: N815
    noseLengthRatio: Signed | None = None  # noqa: N815
    profileRhinoplasty: Unit | None = None  # noqa: N815
    mouthSize: Signed | None = None  # noqa: N815
    philtrumLengthRatio: Signed | None = None  # noqa: N815
    eyeDistanceRatio: Signed | None = None  # noqa: N815
    eyeAngleRatio: Signed | None = None  # noqa: N815
    openCanthus: Unit | None = None  # noqa: N815
    shrinkJawbone: Unit | None = None  # noqa: N815
    shrinkRoundFace: Unit | None = None  # noqa: N815
    shrinkLongFace: Unit | None = None  # noqa: N815
    shrinkGoddessFace: Unit | None = None  # noqa: N815
    shrinkNaturalFace: Unit | None = None  # noqa: N815
    shrinkWholeHead: Unit | None = None  # noqa: N815
    contrastStrength: Unit | None = None  # noqa: N815
    saturationStrength: Unit | None = None  # noqa: N815
    sharpen: Unit | None = None
    clear: Unit | None = None

    @model_validator(mode="after")
    def _extra_in_unit_range(self) -> Beautify:
        """Parameters the example uses beyond the table (brightEyeStrength, whiteTeeth, ...) are strengths
        too: numbers in [0, 1]."""
        for name, value in (self.model_extra or {}).items():
            if not isinstance(value, int | float) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}: a beautification strength in [0, 1]")
        return self


class Effects(RequestModel):
    version: str = Field(..., min_length=1)
    beautify: Beautify | None = None


class Scene(RequestModel):
    digital_role: DigitalRole
    tts_config: TtsConfig
    tts_query: TtsQuery | None = None
    audios: list[Audio] | None = None
    quick_response: list[str] | list[Filler] | None = None
    opening_words: str | None = None
    backgrounds: list[Layer] | None = None
    foregrounds: list[Layer] | None = None
    effects: Effects | None = None

    @field_validator("foregrounds")
    @classmethod
    def _images(cls, layers: list[Layer] | None) -> list[Layer] | None:
        if layers and any(layer.type != 0 for layer in layers):
            raise ValueError("foregrounds are images (type 0)")
        return layers

    @model_validator(mode="after")
    def _something_to_say(self) -> Scene:
        if self.tts_query is None and not self.audios:
            raise ValueError("tts_query or audios is required: the avatar needs something to say")
        return self


class StreamingParam(RequestModel):
    h264_profile: int | None = None
    key_frame_interval: int | None = Field(None, ge=0)
    agora_live_mode: bool | None = None


class LiveScript(RequestModel):
    """The live script: what channel create's ``param`` carries (as a JSON string)."""

    version: str = Field(..., min_length=1)
    recycle: int = Field(..., ge=0)  # 0: loop for ever; n: play n times
    stream_mode: bool
    resolution: Annotated[list[int], Field(min_length=2, max_length=2)] | None = None
    bit_rate: float | None = Field(None, gt=0, le=7)  # Mbps: "maximum 7, minimum greater than 0"
    live_type: Literal["live", "interactive"] | None = None
    sentence_break: bool | None = None
    streaming_param: StreamingParam | None = None
    sceneList: list[Scene] = Field(..., min_length=1)  # noqa: N815 -- "only the first is effective"

    @field_validator("resolution")
    @classmethod
    def _resolution(cls, value: list[int] | None) -> list[int] | None:
        if value is None:
            return value
        if any(side < 10 for side in value) or max(value) > 1920 or min(value) > 1080:
            raise ValueError(
                "resolution is [width, height], each at least 10 and at most 1080p (1920 x 1080)"
            )
        return value

    @model_validator(mode="after")
    def _interactive_only(self) -> LiveScript:
        scene = self.sceneList[0]
        if scene.quick_response and self.live_type != "interactive":
            raise ValueError("quick_response needs live_type 'interactive' (003: interactive mode only)")
        return self

    def param(self) -> str:
        """The script as channel create's ``param``: a JSON string."""
        return json.dumps(self.to_wire(), ensure_ascii=False, separators=(",", ":"))


# --- the takeover (003 "Live Stream Takeover JSON Definition Explanation") ----------------------------------


class TakeoverLayer(RequestModel):
    url: str = Field(..., min_length=1)
    rect: Rect
    start: int = Field(..., ge=0)
    duration: int = Field(..., ge=-1)


class Takeover(RequestModel):
    """What the command endpoints' ``param`` carries: text (TTS) or an audio file, and optional layers."""

    tts_query: TtsQuery | None = None
    audio: str | None = None
    foregrounds: list[TakeoverLayer] | None = None
    backgrounds: list[TakeoverLayer] | None = None

    @field_validator("backgrounds", mode="before")
    @classmethod
    def _one_background(cls, value: Any) -> Any:
        return [value] if isinstance(value, dict) else value  # 003's example gives an object

    @model_validator(mode="after")
    def _something_to_say(self) -> Takeover:
        if self.tts_query is None and not self.audio:
            raise ValueError("tts_query or audio is required")
        return self

    def param(self) -> str:
        return json.dumps(self.to_wire(), ensure_ascii=False, separators=(",", ":"))


class QuickHandoff(RequestModel):
    """Chat handoff's ``param`` (003 "Live Chat Handoff"): a quick response by its index, -1 at random."""

    quick_response: bool = True
    order: int = Field(-1, ge=-1)

    def param(self) -> str:
        return json.dumps(self.to_wire(), separators=(",", ":"))


# --- request bodies ---------------------------------------------------------------------------------------


class CreateChannel(RequestModel):
    param: str
    urtcUseExternalApp: bool | None = None  # noqa: N815
    urtcToken: str | None = None  # noqa: N815
    urtcUid: str | None = Field(None, pattern=r"^\d{1,10}$")  # noqa: N815 -- "a pure number, 32-bit uint"
    urtcAppId: str | None = None  # noqa: N815
    urtcChannelId: str | None = Field(None, max_length=64)  # noqa: N815
    userData: str | None = None  # noqa: N815

    @field_validator("urtcUid")
    @classmethod
    def _uint32(cls, value: str | None) -> str | None:
        if value is not None and int(value) > 2**32 - 1:
            raise ValueError("urtcUid must fit a 32-bit unsigned integer")
        return value

    @model_validator(mode="after")
    def _external_app(self) -> CreateChannel:
        if self.urtcUseExternalApp and not (
            self.urtcToken and self.urtcUid and self.urtcAppId and self.urtcChannelId
        ):
            raise ValueError("urtcUseExternalApp needs urtcToken, urtcUid, urtcAppId and urtcChannelId")
        return self


class SessionBody(RequestModel):
    sessionId: str = Field(..., min_length=1)  # noqa: N815


class CommandBody(RequestModel):
    sessionId: str = Field(..., min_length=1)  # noqa: N815
    param: str


class QueueBody(CommandBody):
    priority: int | None = Field(None, ge=1)


class ReorderBody(RequestModel):
    sessionId: str = Field(..., min_length=1)  # noqa: N815
    commandTraceId: str = Field(..., min_length=1)  # noqa: N815
    priority: int = Field(..., ge=1)


class CancelBody(RequestModel):
    sessionId: str = Field(..., min_length=1)  # noqa: N815
    commandTraceId: str = Field(..., min_length=1)  # noqa: N815 -- ";"-joined ids, or "-1": everything


class HistoryQuery(RequestModel):
    sessionId: str | None = None  # noqa: N815
    status: int | None = None
    pageNo: int | None = Field(None, ge=1)  # noqa: N815
    pageSize: int | None = Field(None, ge=1)  # noqa: N815
    sortName: str | None = None  # noqa: N815
    sortValue: Literal["asc", "desc"] | None = None  # noqa: N815


class RtcTokenBody(RequestModel):
    sessionId: str = Field(..., min_length=1)  # noqa: N815
    rtcChannelId: str = Field(..., min_length=1, max_length=64)  # noqa: N815


class NlpQuery(RequestModel):
    appId: str = Field(..., min_length=1)  # noqa: N815
    device: Literal["ios", "android", "windows", "macos"]
    language: Literal["zh"] = "zh"
    query: str = Field(..., min_length=1)
    session: str = Field(..., pattern=r"^[0-9A-Za-z-]+$")
    trace: str = Field(..., pattern=r"^[0-9A-Za-z-]+$")


# --- responses --------------------------------------------------------------------------------------------


class Envelope(ResponseModel):
    code: int
    message: str = ""
    data: Any = None


class Rtc(ResponseModel):
    rtcAppId: str | None = None  # noqa: N815
    rtcChannelId: str | None = None  # noqa: N815
    rtcUid: str | None = None  # noqa: N815
    rtcToken: str | None = None  # noqa: N815


class Channel(Rtc):
    sessionId: str  # noqa: N815
    sessionToken: str = ""  # noqa: N815
    status: int


class SessionStat(Rtc):
    status: int
    sessionToken: str | None = None  # noqa: N815


class RunningSession(ResponseModel):
    sessionId: str  # noqa: N815
    status: int


class CommandResult(ResponseModel):
    isSuccess: bool = True  # noqa: N815
    commandTraceId: str | None = None  # noqa: N815


class QueuedCommand(ResponseModel):
    commandStatus: int  # noqa: N815
    commandTraceId: str  # noqa: N815


class CancelResult(ResponseModel):
    isSuccess: bool  # noqa: N815
    commandFinishTime: str | None = None  # noqa: N815
    message: str | None = None


class QueueList(ResponseModel):
    commandTraceIds: list[str] = Field(default_factory=list)  # noqa: N815


class Pagination(ResponseModel):
    pageNo: int = 1  # noqa: N815
    numberPages: int = 0  # noqa: N815
    numberRecords: int = 0  # noqa: N815
    pageSize: int = 10  # noqa: N815
    startIndex: int = 0  # noqa: N815


class HistorySession(ResponseModel):
    sessionId: str  # noqa: N815
    status: int
    startTime: str | None = None  # noqa: N815
    endTime: str | None = None  # noqa: N815


class HistoryPage(ResponseModel):
    pagination: Pagination = Field(default_factory=Pagination)
    result: list[HistorySession] = Field(default_factory=list)


class NlpAnswer(ResponseModel):
    answer: str = ""
    device_id: str | None = None
    language: str | None = None
    query: str | None = None
    session: str | None = None
    trace: str | None = None
    error_message: str = ""


class Token(ResponseModel):
    accessToken: str  # noqa: N815
    expiresIn: int = 8 * 3600  # noqa: N815 -- seconds; "8 h by default"
    refreshToken: str | None = None  # noqa: N815


class StatusCallback(BaseModel):
    """A status callback's body (003 "Live Streaming Status Callback Parameters"): untrusted input."""

    model_config = ConfigDict(extra="allow")

    sessionId: str = Field(..., min_length=1, max_length=128)  # noqa: N815
    status: int
    rtcAppId: str | None = None  # noqa: N815
    rtcChannelId: str | None = None  # noqa: N815
    rtcUid: str | None = None  # noqa: N815
    rtcToken: str | None = Field(None, exclude=True, repr=False)  # noqa: N815 -- a credential
    commandTraceId: str | None = Field(None, max_length=2048)  # noqa: N815
    commandFinishTime: str | None = None  # noqa: N815
    taskResult: str | None = None  # noqa: N815
    userData: str | None = Field(None, max_length=1024)  # noqa: N815
