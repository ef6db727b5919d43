"""Wire models of MetaStudio's smart-live API (API reference 004 §6.1-6.2, §11.5; 000; 002).

Request models validate the documented ranges before anything is sent, so a bad value fails here with a
field name instead of as a vendor 400. Response models tolerate fields the documents do not list
(``extra="allow"``): the vendor adds fields over time and we must not break on them.

Where the documents are silent we chose, and say so: ``RefreshOutputUrlConfig`` and ``LiveGuideRuleInfo``
are named but never defined in them; we model the first as ``output_urls``/``stream_keys`` (the same pair
the start request carries) and the second as an open object around a layer configuration.
"""

from __future__ import annotations

import json
from enum import IntEnum, StrEnum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_serializer, field_validator

PlayType = Literal["APPEND", "INSERT", "PLAY_NOW"]
PlayRole = Literal["STREAMER", "CO_STREAMER"]
CallbackAuthType = Literal["NONE", "MSS_A", "MSS_A_HEAD", "MEITUAN_DEFAULT"]
CallbackEventType = Literal["SHOOT_SCRIPT_SWITCH", "RTMP_STREAM_STATE_CHANGE", "REPLY_COMMAND_FINISH"]

MAX_INSERT_TEXT_CHARS = 131_072
MAX_REPORT_EVENTS = 1000
MAX_CLEANUP_COMMAND_IDS = 100
#: Defaults the vendor applies when a field is absent (004 §11.5).
DEFAULT_TEXT_PLAY_TYPE: PlayType = "PLAY_NOW"
DEFAULT_AUDIO_PLAY_TYPE: PlayType = "APPEND"


class RequestModel(BaseModel):
    """What we send: unknown fields are our bug, so they are refused."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True, by_alias=True)


class ResponseModel(BaseModel):
    """What we receive: fields the documents do not list are kept, never an error."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)


class JobState(StrEnum):
    WAITING = "WAITING"
    PROCESSING = "PROCESSING"
    SUCCEED = "SUCCEED"
    FAILED = "FAILED"
    BLOCKED = "BLOCKED"
    # Not in the job tables, but in the room listing's ``last_job_status``/``live_state`` (004 l.6919,
    # l.6972): read, never sent. Terminal, like the three above.
    CANCELED = "CANCELED"

    @property
    def active(self) -> bool:
        return self in (JobState.WAITING, JobState.PROCESSING)


# --- start job (000; 004 §6.2.1) ---------------------------------------------------------------------------


class SubtitleConfig(RequestModel):
    """004 Table 6-264; the colour, stroke and opacity fields are the official SDK's (``SubtitleConfig``)."""

    dx: int | None = Field(None, ge=0, le=1920)
    dy: int | None = Field(None, ge=0, le=1920)
    font_name: str | None = Field(None, max_length=64)
    font_size: int | None = Field(None, ge=4, le=120)  # "interface 0-120, actual 4-120: use the actual"
    h: int | None = Field(None, ge=0, le=1920)
    w: int | None = Field(None, ge=0, le=1920)
    font_color: str | None = Field(None, max_length=7)  # RGB, e.g. "#FFFFFF"
    stroke_color: str | None = Field(None, max_length=7)
    stroke_thickness: float | None = Field(None, ge=0, le=50)
    opacity: float | None = Field(None, ge=0, le=1)


class VideoConfig(RequestModel):
    """004 Table 6-263 (ranges as documented: width/height 0-3840, dx/dy -1920..3840, bitrate 40-30000;
    ``codec`` is mandatory); the last three fields are the official SDK's (video production only)."""

    clip_mode: Literal["RESIZE", "CROP"] | None = None
    codec: Literal["H264", "VP8"]
    bitrate: int = Field(..., ge=40, le=30000)
    width: int = Field(..., ge=0, le=3840)
    height: int = Field(..., ge=0, le=3840)
    frame_rate: str | None = None
    is_subtitle_enable: bool | None = None
    subtitle_config: SubtitleConfig | None = None
    disable_system_watermark: bool | None = None
    dx: int | None = Field(None, ge=-1920, le=3840)
    dy: int | None = Field(None, ge=-1920, le=3840)
    is_enable_super_resolution: bool | None = None
    is_end_at_first_frame: bool | None = None
    output_external_url: str | None = Field(None, max_length=2048)
    is_vocabulary_config_enable: bool | None = None


class LiveExitConfig(RequestModel):
    """When the vendor stops a job by itself (the official SDK's ``LiveExitConfig``; not in 004)."""

    max_live_duration: int | None = Field(None, ge=0, le=168, description="hours; 0: no limit")
    auto_stop_mode: Literal["FORCE_EXIT", "SEGMENT_END", "SCENE_END", "SCRIPT_END"] | None = None
    max_exception_waiting_duration: int | None = Field(None, ge=0, le=60, description="minutes; 0: none")


class PlayPolicy(RequestModel):
    """004 Table 6-265; ``live_exit_config`` and ``is_rewrite_delay`` are the official SDK's."""

    repeat_count: int | None = Field(None, ge=-1, le=100, description="-1 forever, 0 once, n: n+1 rounds")
    auto_play_script: bool | None = None
    play_mode: Literal["TEXT", "AUDIO", "NO_PRESET"] | None = None
    random_play_mode: Literal["NONE", "SCENE", "SCRIPT_ITEM", "SCENE_AND_SCRIPT_ITEM"] | None = None
    need_independent_capture_client: bool | None = None
    live_exit_config: LiveExitConfig | None = None
    is_rewrite_delay: bool | None = None


class LiveJobRunConfig(RequestModel):
    """The official SDK's ``LiveJobRunConfig`` (not in 004): ``single_job_in_room`` limits a room to one
    running job -- the daemon always asks for that (a second start is then refused with MSS.20010036)."""

    allow_resource_type: Literal["PERIOD", "ONDEMAND", "UNLIMITED", "ONE_TIME"] | None = None
    single_job_in_room: bool | None = None


class LiveEventCallbackConfig(RequestModel):
    live_event_type_callback_url: str | None = Field(None, max_length=2048)
    auth_type: CallbackAuthType | None = None
    key: str | None = Field(None, max_length=32)
    callback_event_type: list[CallbackEventType] | None = None


class RtcCallbackConfig(RequestModel):
    rtc_callback_event_type: list[str] | None = None


class VoiceConfig(RequestModel):
    voice_asset_id: str = Field(..., min_length=1, max_length=256)
    speed: int | None = Field(None, ge=50, le=200)
    pitch: int | None = Field(None, ge=50, le=200)
    volume: int | None = Field(None, ge=90, le=240)


class CoStreamerConfig(RequestModel):
    voice_config: VoiceConfig | None = None
    streamer_action: Literal["SILENCE", "VOLUME_DOWN"] | None = None


class StartJobRequest(RequestModel):
    """004 Table 6-262. "Currently, only one RTMP stream output address is supported": at most one output
    URL (and stream key) per job. Room-level ``output_urls`` and callback config apply when absent."""

    video_config: VideoConfig | None = None
    play_policy: PlayPolicy | None = None
    output_urls: list[Annotated[str, Field(min_length=1, max_length=2048)]] | None = Field(None, max_length=1)
    stream_keys: list[str] | None = Field(None, max_length=1)
    interaction_callback_url: str | None = Field(None, max_length=2048)
    live_event_callback_config: LiveEventCallbackConfig | None = None
    rtc_callback_config: RtcCallbackConfig | None = None
    view_mode: Literal["LANDSCAPE", "VERTICAL"] | None = None
    co_streamer_config: CoStreamerConfig | None = None
    job_run_config: LiveJobRunConfig | None = None

    def __repr_args__(self) -> Any:  # stream keys are secrets: never in a repr that may be logged
        for name, value in super().__repr_args__():
            yield name, ("***" if name == "stream_keys" and value else value)


class ErrorInfo(ResponseModel):
    error_code: str | None = None
    error_msg: str | None = None


class StartJobResponse(ResponseModel):
    job_id: str
    live_event_report_url: str | None = None
    live_event_callback_config: dict[str, Any] | None = None
    rtc_room_info: dict[str, Any] | None = None
    live_warning_info: list[dict[str, Any]] | None = None


class SmartLiveJob(ResponseModel):
    job_id: str
    room_id: str | None = None
    room_name: str | None = None
    state: JobState
    duration: float | None = None
    start_time: str | None = None
    end_time: str | None = None
    error_info: ErrorInfo | None = None
    create_time: str | None = None
    lastupdate_time: str | None = None
    live_event_report_url: str | None = None
    live_event_callback_config: dict[str, Any] | None = None
    stream_duration: float | None = None
    block_reason: str | None = None
    cover_url: str | None = None


class JobList(ResponseModel):
    count: int = 0
    smart_live_jobs: list[SmartLiveJob] = Field(default_factory=list)


# --- rooms (004 §6.1.3) -------------------------------------------------------------------------------------


class TextConfig(RequestModel):
    text: str


class RelationProduct(ResponseModel):
    product_id: str | None = None
    product_title: str | None = None


class ShootScriptItem(ResponseModel):
    sequence_no: int = Field(0, ge=0)
    title: str | None = None
    text_config: TextConfig | None = None
    audio_config: dict[str, Any] | None = None
    relation_product: RelationProduct | None = None


class SceneScript(ResponseModel):
    script_id: str | None = None
    script_name: str = Field(..., min_length=1, max_length=256)
    model_asset_id: str | None = None
    shoot_scripts: list[ShootScriptItem] = Field(default_factory=list)


class HitConditionTag(ResponseModel):
    tag: str = ""
    operation: Literal["SUM", "AVG", "COUNT", "NONE"] | None = None
    # Optional in 004 (Table "HitConditionTag": Mandatory No); a tag without it never matches.
    match: Literal["EQUAL", "REGEX", "MATH_GT", "MATH_GE", "MATH_LT", "MATH_LE", "MATH_EQ"] | None = None
    value: str = Field("", max_length=1024)


class HitCondition(ResponseModel):
    relation: Literal["AND", "OR", "RESERVED"] | None = None
    priority: int = Field(500, ge=0, le=999)
    tags: list[HitConditionTag] = Field(default_factory=list)


class TriggerProcess(ResponseModel):
    time_window: int | None = Field(None, ge=-1, le=7200)
    reply_mode: Literal["SYSTEM_REPLY", "CALLBACK", "SHOW_LAYER", "INTELLIGENT_REPLY"] | None = None
    layer_config: dict[str, Any] | None = None
    reply_texts: list[Annotated[str, Field(max_length=1024)]] | None = Field(None, max_length=5)
    reply_order: Literal["RANDOM", "ORDER"] | None = None
    reply_role: PlayRole | None = None
    play_type: PlayType | None = None


class InteractionRule(ResponseModel):
    rule_index: str | None = Field(None, max_length=64)
    rule_name: str | None = None
    enabled: bool = True
    # Optional in 004 (LiveRoomInteractionRuleInfo: Mandatory No); a rule without it matches no event.
    event_type: int | None = Field(None, ge=0, le=100)
    hit_condition: HitCondition = Field(default_factory=HitCondition)
    trigger: TriggerProcess = Field(default_factory=TriggerProcess)
    enabled_scenes: list[str] | None = None


class SmartLiveRoom(ResponseModel):
    """A room as shown (004 §6.1.3). Its ``output_urls``/``stream_keys``, ``live_event_callback_config``,
    ``play_policy`` and ``video_config`` are what a job started without them uses."""

    room_id: str | None = None
    room_name: str | None = None
    room_type: str | None = None
    room_state: str | None = None  # ENABLE | DISABLE | BLOCKED
    last_job_status: JobState | None = None
    scene_scripts: list[SceneScript] = Field(default_factory=list)
    interaction_rules: list[InteractionRule] = Field(default_factory=list)
    play_policy: dict[str, Any] | None = None
    video_config: dict[str, Any] | None = None
    output_urls: list[str] | None = None
    stream_keys: list[str] | None = Field(None, repr=False)
    live_event_callback_config: dict[str, Any] | None = None
    error_info: ErrorInfo | None = None


class CreateRoomRequest(RequestModel):
    """What creating a room must carry (004 §6.1.1 Table "Request body": ``room_name`` 1-256, mandatory);
    the rest is checked as a room (:class:`SmartLiveRoom`)."""

    model_config = ConfigDict(extra="allow")

    room_name: str = Field(..., min_length=1, max_length=256)


# --- commands (002; 004 §6.2.5, §11.5) ----------------------------------------------------------------------


class CommandName(StrEnum):
    INSERT_PLAY_SCRIPT = "INSERT_PLAY_SCRIPT"
    INSERT_PLAY_AUDIO = "INSERT_PLAY_AUDIO"
    REWRITE_PLAY_SCRIPT = "REWRITE_PLAY_SCRIPT"
    REWRITE_INTERACTION_RULES = "REWRITE_INTERACTION_RULES"
    GET_CURRENT_PLAYING_SCRIPTS = "GET_CURRENT_PLAYING_SCRIPTS"
    SHOW_LAYER = "SHOW_LAYER"
    REFRESH_OUTPUT_URL = "REFRESH_OUTPUT_URL"
    GET_LIVE_JOB_CONFIG_INFO = "GET_LIVE_JOB_CONFIG_INFO"
    CLEAN_UP_INSERT_COMMAND = "CLEAN_UP_INSERT_COMMAND"


class PlayTextInfo(RequestModel):
    """004 §11.5 Table 11-2. Without ``play_type`` the vendor plays it PLAY_NOW (its documented default),
    not APPEND; ``PlayAudioInfo``'s default is APPEND."""

    text_config: TextConfig
    play_type: PlayType | None = None
    play_role: PlayRole | None = None
    rule_index: str | None = Field(None, max_length=64)

    @field_validator("text_config")
    @classmethod
    def _text_length(cls, value: TextConfig) -> TextConfig:
        if not 1 <= len(value.text) <= MAX_INSERT_TEXT_CHARS:
            raise ValueError(f"text must be 1 to {MAX_INSERT_TEXT_CHARS} characters")
        return value


class PlayAudioInfo(RequestModel):
    audio_url: str = Field(..., max_length=2048)
    play_type: PlayType | None = None
    play_role: PlayRole | None = None
    rule_index: str | None = Field(None, max_length=64)


class RewritePlayScript(RequestModel):
    scene_scripts: list[dict[str, Any]] = Field(..., min_length=1)


class RewriteInteractionRules(RequestModel):
    interaction_rules: list[dict[str, Any]]


class LiveGuideRuleInfo(RequestModel):
    model_config = ConfigDict(extra="allow")
    layer_config: dict[str, Any] | None = None


class RefreshOutputUrlConfig(RequestModel):
    output_urls: list[str] = Field(..., min_length=1)
    stream_keys: list[str] | None = None


class CleanUpInsertCommand(RequestModel):
    command_ids: list[Annotated[str, Field(min_length=1, max_length=64)]] | None = Field(
        None, max_length=MAX_CLEANUP_COMMAND_IDS
    )


class Command(RequestModel):
    """One control command; build it with the class methods so params match the command."""

    command: CommandName
    params: dict[str, Any] | None = None
    review_config: dict[str, Any] | None = None

    #: Commands whose repetition has the same effect as one call: retried after ambiguous failures.
    IDEMPOTENT: ClassVar[frozenset[CommandName]] = frozenset(
        {
            CommandName.REWRITE_PLAY_SCRIPT,
            CommandName.REWRITE_INTERACTION_RULES,
            CommandName.GET_CURRENT_PLAYING_SCRIPTS,
            CommandName.SHOW_LAYER,
            CommandName.REFRESH_OUTPUT_URL,
            CommandName.GET_LIVE_JOB_CONFIG_INFO,
            CommandName.CLEAN_UP_INSERT_COMMAND,
        }
    )

    @property
    def idempotent(self) -> bool:
        return self.command in self.IDEMPOTENT

    @classmethod
    def insert_play_script(cls, info: PlayTextInfo) -> Command:
        return cls(command=CommandName.INSERT_PLAY_SCRIPT, params=info.to_wire())

    @classmethod
    def insert_play_audio(cls, info: PlayAudioInfo) -> Command:
        return cls(command=CommandName.INSERT_PLAY_AUDIO, params=info.to_wire())

    @classmethod
    def rewrite_play_script(cls, params: RewritePlayScript) -> Command:
        return cls(command=CommandName.REWRITE_PLAY_SCRIPT, params=params.to_wire())

    @classmethod
    def rewrite_interaction_rules(cls, params: RewriteInteractionRules) -> Command:
        return cls(command=CommandName.REWRITE_INTERACTION_RULES, params=params.to_wire())

    @classmethod
    def get_current_playing_scripts(cls) -> Command:
        return cls(command=CommandName.GET_CURRENT_PLAYING_SCRIPTS)

    @classmethod
    def show_layer(cls, params: LiveGuideRuleInfo) -> Command:
        return cls(command=CommandName.SHOW_LAYER, params=params.to_wire())

    @classmethod
    def refresh_output_url(cls, params: RefreshOutputUrlConfig) -> Command:
        return cls(command=CommandName.REFRESH_OUTPUT_URL, params=params.to_wire())

    @classmethod
    def get_live_job_config_info(cls) -> Command:
        return cls(command=CommandName.GET_LIVE_JOB_CONFIG_INFO)

    @classmethod
    def clean_up_insert_command(cls, params: CleanUpInsertCommand) -> Command:
        return cls(command=CommandName.CLEAN_UP_INSERT_COMMAND, params=params.to_wire())


class CommandResponse(ResponseModel):
    command_id: str | None = None
    command: str | None = None
    result: str | None = None

    def result_json(self) -> Any:
        """``result`` parsed as JSON (GET_* commands return a JSON document as a string); None if empty."""
        return json.loads(self.result) if self.result else None


# --- live event report (004 §6.2.7) -------------------------------------------------------------------------


class LiveEventType(IntEnum):
    COMMENT = 1
    JOIN = 2
    LIKE = 3
    GIFT = 4
    FOLLOW = 5
    VIEWER_COUNT = 6


class LiveEvent(RequestModel):
    """One audience event; ``content`` is given as an object and sent as a JSON string, as documented."""

    timestamp: int = Field(..., ge=0, le=4_102_415_999_000, description="milliseconds since the epoch")
    type: int = Field(..., ge=0, le=100)
    content: dict[str, Any] | str | None = None

    @field_serializer("content")
    def _content_as_json_string(self, content: dict[str, Any] | str | None) -> str | None:
        if content is None or isinstance(content, str):
            return content
        return json.dumps(content, ensure_ascii=False, separators=(",", ":"))


class LiveEventReport(RequestModel):
    total: int = Field(..., ge=1, le=MAX_REPORT_EVENTS)
    events: list[LiveEvent] = Field(..., min_length=1, max_length=MAX_REPORT_EVENTS)
    review_config: dict[str, Any] | None = None

    @classmethod
    def of(cls, events: list[LiveEvent]) -> LiveEventReport:
        return cls(total=len(events), events=events)


class LiveEventReportResponse(ResponseModel):
    live_event_report_url: str | None = None
