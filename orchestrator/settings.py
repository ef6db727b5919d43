"""The daemon's configuration: one frozen pydantic-settings object, built once in the entry point.

Sources, highest priority first: environment variables (``ORCH_`` prefix, ``__`` between a section and
its field, e.g. ``ORCH_SERVER__PORT=8080``), then an optional TOML file (``--config PATH``), then the
defaults written here.  Every secret is a ``SecretStr`` so that printing, logging or dumping a settings
object can never show it; :func:`secret_values` hands the raw values to the log redactor.

Durations carry their unit in their name (``*_s``), sizes in bytes (``*_bytes``).
"""

from __future__ import annotations

import ipaddress
import tomllib
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

from pydantic import (
    AnyHttpUrl,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

ENV_PREFIX = "ORCH_"
ENV_NESTED_DELIMITER = "__"

PositiveSeconds = Annotated[float, Field(gt=0)]


class Section(BaseModel):
    """Base of every settings section: immutable, and unknown keys are an error, not a silent typo."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class ServerSettings(Section):
    """The HTTP server that receives callbacks, ingest and admin requests."""

    host: str = Field("127.0.0.1", description="Address to listen on; 0.0.0.0 in a container.")
    port: int = Field(8080, ge=1, le=65535, description="TCP port to listen on.")
    max_body_bytes: int = Field(
        1024 * 1024, ge=1024, description="Largest request body accepted; larger gets 413."
    )
    read_timeout_s: PositiveSeconds = Field(
        15.0, description="Longest time a client may take to send its request body (408 after)."
    )
    body_bytes_in_flight: int = Field(
        32 * 1024 * 1024,
        ge=1024,
        description="Request bodies being read at once, in bytes, across every connection; a body that "
        "would exceed it waits (up to read_timeout_s), then gets 503 with Retry-After.",
    )
    header_timeout_s: PositiveSeconds = Field(
        10.0,
        description="A client must send a request's line and headers within this long of connecting or of "
        "its previous response; slower connections are closed.",
    )
    max_connections: int = Field(
        1024,
        ge=8,
        description="Open connections per listener; more are closed at once. Capped at start so that both "
        "listeners together leave file descriptors for Redis and the vendor.",
    )
    max_connections_per_client: int = Field(
        256,
        ge=1,
        description="Open connections per client address per listener; more are closed at once (a vendor's "
        "callbacks may come through few addresses: keep it well above its connection pool).",
    )
    shutdown_timeout_s: PositiveSeconds = Field(
        30.0, description="On SIGTERM/SIGINT, how long in-flight requests may take to finish."
    )
    keepalive_timeout_s: PositiveSeconds = Field(
        75.0, description="Idle keep-alive connections are closed after this long."
    )
    event_loop: Literal["uvloop", "asyncio"] = Field(
        "uvloop",
        description="Event loop: uvloop (libuv; less overhead per request and per Redis reply) or the "
        "standard asyncio loop.",
    )
    public_base_url: AnyHttpUrl | None = Field(
        None, description="How the outside world reaches this server (used in callback URLs)."
    )
    public_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="Also serve the vendor-facing routes (live-event and interaction callbacks, the LLM "
        "endpoint, /healthz) on this port, on `host`: the one port to expose to the internet, with the "
        "admin API and metrics left on `port`. Its routes skip the request middleware, which makes the "
        "callback path markedly cheaper. Unset: everything on `port` only.",
    )


class RedisSettings(Section):
    """The shared Redis every replica keeps its state in."""

    url: SecretStr = Field(
        SecretStr("redis://127.0.0.1:6379/0"),
        description="One Redis: redis://, rediss:// (TLS) or unix://. Redis Sentinel: "
        "redis+sentinel://[user:password@]host[:port][,host[:port]...]/service[/db] (rediss+sentinel:// for "
        "TLS; sentinel_password= and sentinel_username= in the query when the sentinels have their own). "
        "Redis Cluster: redis+cluster://[user:password@]host[:port][,host[:port]...] (rediss+cluster:// for "
        "TLS). Secret because it may carry a password.",
    )
    socket_timeout_s: PositiveSeconds = Field(5.0, description="Per-command socket timeout.")
    connect_timeout_s: PositiveSeconds = Field(2.0, description="TCP connect timeout.")
    retry_attempts: int = Field(3, ge=0, le=20, description="Retries of a failed command.")
    retry_backoff_base_s: PositiveSeconds = Field(
        0.05, description="First retry delay; doubles each attempt, with jitter."
    )
    retry_backoff_cap_s: PositiveSeconds = Field(1.0, description="Longest delay between retries.")
    health_check_interval_s: float = Field(
        15.0, ge=0, description="Idle connections are PINGed before reuse after this long (0: never)."
    )
    max_connections: int = Field(64, ge=1, description="Connection pool size per process.")
    readiness_timeout_s: PositiveSeconds = Field(
        1.0, description="/readyz gives up on Redis after this long and reports not ready."
    )

    wait_replicas: int = Field(
        0,
        ge=0,
        le=16,
        description="Before a vendor callback or a bridge's audience events are acknowledged, wait until "
        "this many Redis replicas have them (Redis WAIT): a failover then loses nothing acknowledged. 0: "
        "acknowledge once the master has them (a SIGKILLed master loses what it had not yet replicated).",
    )
    wait_timeout_ms: int = Field(
        200,
        ge=1,
        le=10_000,
        description="How long a write waits for wait_replicas; fewer replicas in time and the callback "
        "goes to the local journal (replayed later) and the bridge gets 503 with Retry-After.",
    )

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: SecretStr) -> SecretStr:
        parse_redis_url(value.get_secret_value())  # raises ValueError naming what is wrong
        return value

    @property
    def target(self) -> RedisTarget:
        """Where ``url`` points: one Redis, a Sentinel-watched master, or a Cluster."""
        return parse_redis_url(self.url.get_secret_value())


_SENTINEL_PORT, _REDIS_PORT = 26379, 6379
_URL_OPTIONS = {"sentinel_password", "sentinel_username", "ssl_ca_certs"}


@dataclass(frozen=True)
class RedisTarget:
    """What ``redis.url`` names (:func:`parse_redis_url`): ``standalone`` (``url`` as given to redis-py),
    ``sentinel`` (the sentinels' addresses and the master's ``service`` name) or ``cluster`` (seed nodes)."""

    mode: Literal["standalone", "sentinel", "cluster"]
    url: str
    hosts: tuple[tuple[str, int], ...] = ()
    service: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = None
    ssl: bool = False
    ssl_ca_certs: str | None = None


def parse_redis_url(url: str) -> RedisTarget:
    """The Redis deployment ``url`` names. Raises ValueError saying what is wrong with it (pure).

    ``redis+sentinel://[user:password@]h1[:26379][,h2[:26379]...]/service[/db][?sentinel_password=...]``:
    the user and password are the master's (and its replicas'); sentinels that require their own are given
    ``sentinel_username`` / ``sentinel_password``. ``redis+cluster://[user:password@]h1[:6379][,h2...]``:
    seed nodes of a Redis Cluster (one is enough; the rest are found), database 0 only. The ``rediss+``
    forms use TLS for every connection, ``ssl_ca_certs=/path`` naming the CA bundle to trust.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError("must be a URL: redis://, rediss://, unix://, redis+sentinel:// or redis+cluster://")
    if scheme in ("redis", "rediss", "unix"):
        return RedisTarget("standalone", url)
    if scheme not in ("redis+sentinel", "rediss+sentinel", "redis+cluster", "rediss+cluster"):
        raise ValueError(
            f"unknown scheme {scheme!r}: use redis://, rediss://, unix://, redis+sentinel://, "
            "rediss+sentinel://, redis+cluster:// or rediss+cluster://"
        )
    sentinel = scheme.endswith("+sentinel")
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, at, hostlist = netloc.rpartition("@")
    if not at:
        userinfo, hostlist = "", netloc
    username, _, password = userinfo.partition(":")
    options = dict(parse_qsl(query, keep_blank_values=True))
    unknown = sorted(set(options) - _URL_OPTIONS)
    if unknown:
        raise ValueError(f"unknown option {unknown[0]!r}: known are {', '.join(sorted(_URL_OPTIONS))}")
    hosts = tuple(
        _host_port(part, _SENTINEL_PORT if sentinel else _REDIS_PORT) for part in hostlist.split(",")
    )
    segments = [s for s in path.split("/") if s]
    service, db = "", 0
    if sentinel:
        if not segments:
            raise ValueError(
                "a Sentinel URL names the master after the hosts: redis+sentinel://h1,h2/mymaster/0"
            )
        service = unquote(segments[0])
        db_text = segments[1] if len(segments) > 1 else "0"
        if len(segments) > 2 or not db_text.isdigit():
            raise ValueError(f"after the master's name comes the database number, not {path!r}")
        db = int(db_text)
    elif segments not in ([], ["0"]):
        raise ValueError("a Redis Cluster has database 0 only: nothing, or /0, after the hosts")
    return RedisTarget(
        "sentinel" if sentinel else "cluster",
        url,
        hosts=hosts,
        service=service,
        db=db,
        username=unquote(username) or None,
        password=unquote(password) or None,
        sentinel_username=options.get("sentinel_username") or None,
        sentinel_password=options.get("sentinel_password") or None,
        ssl=scheme.startswith("rediss"),
        ssl_ca_certs=options.get("ssl_ca_certs") or None,
    )


def _host_port(text: str, default_port: int) -> tuple[str, int]:
    if not text:
        raise ValueError("an empty host in the list (hosts are separated by single commas)")
    if text.startswith("["):  # [::1]:26379
        host, _, port_text = text[1:].partition("]")
        port_text = port_text.removeprefix(":")
    else:
        host, _, port_text = text.rpartition(":") if ":" in text else (text, "", "")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"bad port in {text!r}")
    return host, int(port_text)


class LogFormat(StrEnum):
    AUTO = "auto"
    JSON = "json"
    CONSOLE = "console"


class LoggingSettings(Section):
    """Structured logging (structlog): JSON lines for machines, a readable console for people."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Lowest level logged.")
    format: LogFormat = Field(
        LogFormat.AUTO, description="auto: console on a TTY, JSON lines otherwise; or json / console."
    )
    access_log: bool = Field(True, description="Log one line per HTTP request.")
    access_log_accepted_callbacks: bool = Field(
        False,
        description="Also log a line for each vendor callback accepted (2xx). Off by default: each one is "
        "recorded in its room's event stream already, and at thousands per second the lines would drown "
        "the rest; rejected callbacks are always logged.",
    )
    redact_fields: tuple[str, ...] = Field(
        (), description="Extra field or query-parameter names whose values are always masked."
    )

    @field_validator("level", mode="before")
    @classmethod
    def _any_case(cls, value: Any) -> Any:
        # "info" is how most tools spell it (and how the soak's first configuration did): not an error.
        return value.upper() if isinstance(value, str) else value


class MetaStudioAuthMode(StrEnum):
    AKSK = "aksk"
    TOKEN = "token"  # noqa: S105 -- a mode name, not a password


class CallbackAuthType(StrEnum):
    NONE = "NONE"
    MSS_A = "MSS_A"
    MSS_A_HEAD = "MSS_A_HEAD"


class CallbackProfile(Section):
    """One callback URL + key set; one daemon may serve several tenants, one profile each."""

    public_url: AnyHttpUrl | None = Field(
        None, description="The callback URL exactly as given to MetaStudio (what it signs)."
    )
    auth_type: CallbackAuthType = Field(CallbackAuthType.MSS_A, description="NONE, MSS_A or MSS_A_HEAD.")
    keys: tuple[SecretStr, ...] = Field(
        (), max_length=2, description="Signing keys (≤ 32 chars); two during a key rotation."
    )

    @field_validator("keys")
    @classmethod
    def _check_keys(cls, keys: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
        for key in keys:
            if not 1 <= len(key.get_secret_value()) <= 32:
                raise ValueError("each key must be 1 to 32 characters")
        return keys

    @model_validator(mode="after")
    def _signed_needs_key(self) -> CallbackProfile:
        if self.auth_type is not CallbackAuthType.NONE and not self.keys:
            raise ValueError(f"auth_type {self.auth_type.value} needs at least one key")
        return self


class MetaStudioSettings(Section):
    """Huawei Cloud MetaStudio (smart live): credentials, client behaviour, and what it calls on the daemon
    (live-event callback profiles, the CALLBACK-mode rules' token, the third-party LLM endpoint)."""

    endpoint: AnyHttpUrl = Field(
        AnyHttpUrl("https://metastudio.cn-north-4.myhuaweicloud.com"),
        description="API base URL: the region endpoint, or a sandbox URL.",
    )
    project_id: str = Field("", description="Huawei Cloud project id (X-Project-Id).")
    auth_mode: MetaStudioAuthMode = Field(
        MetaStudioAuthMode.AKSK, description="aksk (SDK-HMAC-SHA256 signing) or token (X-Auth-Token)."
    )
    ak: SecretStr = Field(SecretStr(""), description="Access key id.")
    sk: SecretStr = Field(SecretStr(""), description="Secret access key.")
    security_token: SecretStr = Field(
        SecretStr(""), description="X-Security-Token for temporary AK/SK credentials."
    )
    auth_token: SecretStr = Field(SecretStr(""), description="IAM token when auth_mode is token.")
    timeout_s: PositiveSeconds = Field(10.0, description="Whole-call timeout of one API request.")
    connect_timeout_s: PositiveSeconds = Field(3.0, description="TCP/TLS connect timeout.")
    max_retries: int = Field(3, ge=0, le=10, description="Retries of calls that are safe to repeat.")
    max_concurrency: int = Field(8, ge=1, description="Calls in flight at once for this project.")
    callback_profiles: dict[str, CallbackProfile] = Field(
        default_factory=dict,
        description="Named live-event callback profiles (URL, auth type, keys); 'default' serves the bare "
        "URL.",
    )
    callback_strict: bool = Field(
        False, description="Accept only the hex-time reading of MSS_A (no decimal-milliseconds reading)."
    )
    interaction_token: SecretStr = Field(
        SecretStr(""),
        description="Token in the CALLBACK-mode rules' URL /callbacks/metastudio/interaction/{token}; the "
        "endpoint is off while empty.",
    )
    llm_public_url: AnyHttpUrl | None = Field(
        None,
        description="The URL of POST /llm/metastudio exactly as configured at MetaStudio (what it signs).",
    )
    llm_app_key: SecretStr = Field(
        SecretStr(""),
        description="The appKey MetaStudio signs LLM calls with; the endpoint is off while empty.",
    )


class SoftSugarSettings(Section):
    """SenseTime SoftSugar 2D interactive live: the account, client behaviour, and its status callbacks."""

    endpoint: AnyHttpUrl = Field(
        AnyHttpUrl("https://aigc.softsugar.com"), description="API base URL, or a sandbox URL."
    )
    app_id: str = Field("", description="The account's appId (tokens are obtained with it).")
    app_key: SecretStr = Field(SecretStr(""), description="The account's appKey (signs token requests).")
    timeout_s: PositiveSeconds = Field(10.0, description="Whole-call timeout of one API request.")
    connect_timeout_s: PositiveSeconds = Field(3.0, description="TCP/TLS connect timeout.")
    max_retries: int = Field(3, ge=0, le=10, description="Retries of calls that are safe to repeat.")
    max_concurrency: int = Field(8, ge=1, description="Calls in flight at once for this account.")
    heartbeat_interval_s: float = Field(
        30.0,
        gt=0,
        le=60.0,
        description="Heartbeat of a live session by its room's owner (003: every 60 s; a session without "
        "heartbeats is closed by the vendor).",
    )
    callback_token: SecretStr = Field(
        SecretStr(""),
        description="Secret in the status-callback URL /callbacks/softsugar/{token} (give the vendor that "
        "URL for the account); the route is off while empty.",
    )
    callback_allow: list[str] = Field(
        default_factory=list,
        description="Addresses (CIDR) status callbacks may come from; empty: any (the token alone).",
    )
    callbacks: bool = Field(
        True,
        description="Whether the account has a status-callback URL (003: requested from the vendor); without "
        "one, sessions are polled (stat) and takeovers tracked by queue/list.",
    )
    unknown_sessions: Literal["close", "keep"] = Field(
        "close",
        description="A running session no room knows (an ambiguous create, a start by hand): close it "
        "(billing stops) or keep it; both raise an alert.",
    )
    unknown_grace_s: PositiveSeconds = Field(
        30.0,
        description="How long a running session no room knows is left alone before unknown_sessions "
        "applies (one still creating: create_timeout_s): time for its creator to record it, or for its "
        "status callback to name its room.",
    )
    create_timeout_s: PositiveSeconds = Field(
        120.0, description="A session still creating (32) after this long is given up and closed."
    )
    qa_timeout_s: PositiveSeconds = Field(
        2.0,
        description="How long a question waits for the room's Q&A database (qa_app_id) before the FAQ "
        "answers instead (real seconds, retries included).",
    )

    @field_validator("callback_allow")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for network in value:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ValueError(f"{network!r} is not an address or network (e.g. 203.0.113.0/24)") from None
        return value


class CallbackSettings(Section):
    """How vendor callbacks are received, whatever the vendor (its credentials are in its own section)."""

    max_skew_s: PositiveSeconds = Field(300.0, description="Largest clock difference accepted, either way.")
    events_maxlen: int = Field(
        10_000, ge=100, description="Events kept per room (capped stream, approximate)."
    )
    journal_path: Path = Field(
        Path("var/callback-journal.jsonl"),
        description="Local journal for callbacks accepted while Redis is unreachable (replayed in order).",
    )
    write_timeout_s: PositiveSeconds = Field(
        1.0, description="How long a callback waits for Redis before it is journaled locally instead."
    )
    rtmp_grace_s: PositiveSeconds = Field(
        30.0, description="RTMP DISCONNECTED/RECONNECTING longer than this raises an rtmp_stalled reaction."
    )


class AlertTarget(BaseModel):
    """One webhook an alert goes to: its URL (a secret: it carries the robot's token), the payload format,
    and the robot's signing secret (DingTalk "加签" / Feishu "签名校验"), if it has one."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: SecretStr
    format: Literal["generic", "dingtalk", "feishu", "slack"] = "generic"
    secret: SecretStr | None = None

    @field_validator("url")
    @classmethod
    def _http(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL")
        return value


class AlertSettings(Section):
    """Daemon-wide alerts: trouble that is not one room's (Redis lost, vendor credentials refused) and every
    room's circuit opening, for whoever runs the daemon. Rooms' own webhooks are in their definitions."""

    targets: list[AlertTarget] = Field(
        default_factory=list,
        description="Webhooks for daemon-level alerts, a JSON list by environment: "
        '[{"url": "https://...", "format": "dingtalk", "secret": "SEC..."}].',
    )


class SchedulingSettings(Section):
    """Schedules and the reconciler that keeps rooms in their desired state."""

    enabled: bool = Field(True, description="Run the reconciler and scheduler in this process.")
    reconcile_interval_s: PositiveSeconds = Field(
        15.0,
        description="Pause between periodic reconcile passes (from the end of one to the start of the next), "
        "besides boundaries.",
    )
    rooms_file: Path | None = Field(
        None, description="YAML rooms file applied (created or updated) at start; rooms may also come by API."
    )
    fence_ttl_s: PositiveSeconds = Field(
        30.0,
        description="Lifetime of an action's fence; its holder renews it every third while the action runs, "
        "so a dead replica's fence is gone this long after it died.",
    )
    alert_min_interval_s: PositiveSeconds = Field(
        300.0, description="Per room and alert kind, at most one alert this often."
    )
    boundary_tolerance_s: float = Field(
        2.0,
        ge=0,
        le=300,
        description="Starts and stops wait until this long past a schedule boundary, so replicas whose "
        "clocks differ by less never disagree about it (one stopping a job another restarts). Larger than "
        "the largest clock skew between replicas.",
    )
    down_alert_after_s: PositiveSeconds = Field(
        300.0,
        description="A room that should be live and has not been for this long raises room_down (its own "
        "repairs -- restarts with backoff, output refreshes -- get this long first).",
    )
    pass_concurrency: int = Field(
        4,
        ge=1,
        le=256,
        description="Rooms a reconcile pass works on at once: rooms sharing a boundary start together, and "
        "one room's slow vendor call does not hold up the others' repairs.",
    )


ReplyPriority = Literal["operator", "gift", "question", "reaction", "idle"]
PlayTypeName = Literal["APPEND", "INSERT", "PLAY_NOW"]


def _default_play_types() -> dict[ReplyPriority, PlayTypeName]:
    return {
        "operator": "PLAY_NOW",
        "gift": "INSERT",
        "question": "INSERT",
        "reaction": "APPEND",
        "idle": "APPEND",
    }


class InteractionSettings(Section):
    """Answering the audience: the reply policy, the chat backend, reporting and reply pacing."""

    policy_file: Path | None = Field(
        None, description="YAML reply policy (rules, faq, limits, forbidden words); none: answer nothing."
    )
    llm_fallback: str = Field(
        "这个问题我记下了，稍后为您详细解答。",
        description="The answer when the policy has none and the vendor asked for one (its rule chose the "
        "comment, or it asked as the avatar's brain).",
    )
    chat_url: AnyHttpUrl | None = Field(
        None,
        description="OpenAI-compatible chat completions URL that answers questions the rules do not "
        "(FAQ when it fails or is slow); none: rules and FAQ only.",
    )
    chat_model: str = Field("gpt-4o-mini", description="Model name sent to chat_url.")
    chat_api_key: SecretStr = Field(SecretStr(""), description="Bearer key for chat_url (may be empty).")
    chat_timeout_s: PositiveSeconds = Field(
        3.0, description="Longest wait for chat_url before the FAQ answers instead."
    )
    chat_system_prompt: str = Field(
        "你是直播间的数字人主播，用一两句话礼貌地回答观众的问题。当前商品：{product}。",
        description="System prompt for chat_url; {product} is the current paragraph's product.",
    )
    report_window_ms: int = Field(
        200, ge=10, le=10_000, description="Audience events wait at most this long to share a report batch."
    )
    report_max_events: int = Field(
        1000, ge=1, le=1000, description="Events per live-event report call (the vendor takes 1-1000)."
    )
    report_max_age_s: PositiveSeconds = Field(
        300.0, description="Audience events older than this when a report could go out are dropped (counted)."
    )
    ingest_maxlen: int = Field(
        100_000, ge=1000, description="Backlog cap per room's ingest stream (oldest trimmed beyond it)."
    )
    ingest_backlog_max: int = Field(
        20_000,
        ge=100,
        description="A room whose ingest backlog (events not yet reported) reaches this refuses more with "
        "429 and Retry-After until it drains.",
    )
    ingest_shed_at: float = Field(
        0.5,
        gt=0,
        le=1,
        description="A room whose backlog reaches this share of ingest_backlog_max stops storing likes and "
        "viewer counts (counted as shed; the latest count still updates the room) so that comments, gifts "
        "and joins go first; 1 never sheds.",
    )
    ingest_max_in_flight: int = Field(
        64,
        ge=1,
        le=10_000,
        description="Ingest requests this process works on at once; one more is answered 429 with "
        "Retry-After (the process's own backlog, whatever the rooms').",
    )
    ingest_dedup_window_s: PositiveSeconds = Field(
        600.0,
        description="An event's message_id is taken once within this long (a bridge's resend is dropped).",
    )
    lease_ttl_s: float = Field(
        10.0,
        ge=1.0,  # its holder trusts it 0.5 s (real) less than this: shorter, and it would trust it never
        description="A replica owns a live room's reporting and replies for this long per renewal.",
    )
    reply_max_pending: int = Field(
        15, ge=1, le=100, description="Replies waiting per room; beyond it the lowest priority is dropped."
    )
    reply_in_flight: int = Field(
        1,
        ge=1,
        le=15,
        description="Replies said at the vendor and not yet finished, per room (at most 15: SoftSugar "
        "advises no more in its takeover queue).",
    )
    reply_timeout_s: PositiveSeconds = Field(
        120.0, description="A reply said at the vendor and not reported finished after this long is given up."
    )
    reply_max_age_s: PositiveSeconds = Field(
        30.0, description="Comments older than this when read are reported but not answered."
    )
    play_types: dict[ReplyPriority, PlayTypeName] = Field(
        default_factory=_default_play_types, description="INSERT_PLAY_SCRIPT play_type per reply priority."
    )
    idle_after_s: float = Field(
        0.0, ge=0, description="When no reply has played for this long, say an idle line (0: never)."
    )
    idle_lines: list[str] = Field(default_factory=list, description="Idle filler lines, said in turn.")


class BridgeToken(BaseModel):
    """A platform bridge's own token: it may post audience events to the rooms it names, nothing else."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., min_length=1, max_length=64, description="Who (in logs and errors).")
    token: SecretStr = Field(..., description="Bearer token, at least 16 characters.")
    rooms: list[str] = Field(
        ..., min_length=1, description="Room ids or shell patterns (brand-a-*) it may post events to."
    )

    @field_validator("token")
    @classmethod
    def _long_enough(cls, token: SecretStr) -> SecretStr:
        if len(token.get_secret_value()) < 16:
            raise ValueError("a bridge token has at least 16 characters")
        return token


class OperatorToken(BaseModel):
    """An operator's own login to the console and the admin API: the admin token's rights, under a name
    that the room's events and the log record beside what the operator did."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., pattern=r"^[A-Za-z0-9._@-]{1,64}$", description="Who (in events and logs).")
    token: SecretStr = Field(..., description="Bearer token or console login, at least 16 characters.")

    @field_validator("token")
    @classmethod
    def _long_enough(cls, token: SecretStr) -> SecretStr:
        if len(token.get_secret_value()) < 16:
            raise ValueError("an operator token has at least 16 characters")
        return token


class ConsoleSettings(BaseModel):
    """The web console on the admin listener (``/console/``)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Serve the console at /console/ on the admin listener.")
    session_ttl_s: int = Field(
        8 * 3600, ge=60, le=7 * 86400, description="A console login lasts this long (the cookie's Max-Age)."
    )
    secure_cookie: bool = Field(
        False,
        description="Mark the session cookie Secure: set it when the console is reached over HTTPS "
        "(a TLS-terminating proxy in front of the admin port).",
    )
    login_attempts_per_minute: int = Field(
        10, ge=1, le=1000, description="Failed logins allowed per client address a minute (429 beyond)."
    )
    max_streams: int = Field(
        32, ge=1, le=1000, description="Live update streams (server-sent events) served at once (503 beyond)."
    )
    activity_interval_s: float = Field(
        60.0,
        ge=1.0,
        le=3600.0,
        description="How often each room's viewers, comments and replies are sampled "
        "for the console's charts (one sample per interval, kept 24 h).",
    )


class AdminSettings(Section):
    """The admin/read API and the console."""

    token: SecretStr = Field(
        SecretStr(""), description="Bearer token for /api; the API answers 401 to everyone while empty."
    )
    bridges: list[BridgeToken] = Field(
        default_factory=list,
        description="Platform bridges' tokens, each limited to posting events to its rooms "
        "(POST /api/rooms/{room}/events).",
    )
    operators: list[OperatorToken] = Field(
        default_factory=list,
        description="Operators' own tokens: the admin token's rights, under their names (console logins).",
    )
    console: ConsoleSettings = ConsoleSettings()


class SimulationSettings(Section):
    """A compressed, shifted or skewed clock for the chaos soak (``benchmarks/soak``) -- never in production.

    Every process of one soak is given the same ``start``, ``real_origin`` and ``speed``, so they agree on
    the simulated time; ``skew_s`` puts one replica's clock off the others'. Policy durations in every
    other section stay simulated seconds (see :mod:`orchestrator.clock`)."""

    speed: float = Field(1.0, ge=1.0, le=1000.0, description="Simulated seconds per real second.")
    start: AwareDatetime | None = Field(
        None, description="The simulated instant at real_origin (none: the real time)."
    )
    real_origin: float | None = Field(
        None, ge=0, description="The real epoch seconds at which the simulated clock reads start."
    )
    skew_s: float = Field(
        0.0, ge=-3600, le=3600, description="This process's clock ahead (+) or behind (-) the others."
    )

    @model_validator(mode="after")
    def _both_or_neither(self) -> SimulationSettings:
        if (self.start is None) != (self.real_origin is None):
            raise ValueError("start and real_origin go together")
        return self

    @property
    def active(self) -> bool:
        return self.speed != 1.0 or self.skew_s != 0.0 or self.start is not None


#: Settings of one vendor that sat in shared sections: (old section, name) → (new section, name).
MOVED_SETTINGS: dict[tuple[str, str], tuple[str, str]] = {
    ("callbacks", "profiles"): ("metastudio", "callback_profiles"),
    ("callbacks", "strict"): ("metastudio", "callback_strict"),
    ("interaction", "callback_token"): ("metastudio", "interaction_token"),
    ("interaction", "llm_public_url"): ("metastudio", "llm_public_url"),
    ("interaction", "llm_app_key"): ("metastudio", "llm_app_key"),
}


class Settings(BaseSettings):
    """All of the daemon's configuration."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED_DELIMITER,
        frozen=True,
        extra="forbid",
        toml_file=None,
    )

    server: ServerSettings = ServerSettings()
    redis: RedisSettings = RedisSettings()
    logging: LoggingSettings = LoggingSettings()
    metastudio: MetaStudioSettings = MetaStudioSettings()
    softsugar: SoftSugarSettings = SoftSugarSettings()
    callbacks: CallbackSettings = CallbackSettings()
    scheduling: SchedulingSettings = SchedulingSettings()
    alerts: AlertSettings = AlertSettings()
    interaction: InteractionSettings = InteractionSettings()
    admin: AdminSettings = AdminSettings()
    simulation: SimulationSettings = SimulationSettings()

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        """Settings that moved to the ``metastudio`` section are still read where they were, with a
        warning naming the new place (one release of grace)."""
        if not isinstance(data, dict):
            return data
        for (old_section, old_name), (new_section, new_name) in MOVED_SETTINGS.items():
            section = data.get(old_section)
            if not isinstance(section, dict) or old_name not in section:
                continue
            section = dict(section)
            value = section.pop(old_name)
            data = {**data, old_section: section}
            target = dict(data.get(new_section) or {})
            target.setdefault(new_name, value)
            data[new_section] = target
            warnings.warn(
                f"setting {old_section}.{old_name} ({env_var_name([old_section, old_name])}) moved to "
                f"{new_section}.{new_name} ({env_var_name([new_section, new_name])}); read from the old "
                "place for now",
                FutureWarning,
                stacklevel=2,
            )
        return data

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))


class ConfigError(Exception):
    """The configuration cannot be used; ``problems`` lists ``(location, message)`` pairs."""

    def __init__(self, problems: list[tuple[str, str]], source: str = "") -> None:
        self.problems = problems
        self.source = source
        super().__init__("; ".join(f"{loc}: {msg}" for loc, msg in problems))


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings from the environment, ``config_file`` (TOML) and defaults.

    Raises ConfigError naming every invalid field (with its environment variable) or an unreadable file.
    """
    settings_cls: type[Settings] = Settings
    if config_file is not None:
        _check_toml(config_file)
        settings_cls = type(
            "Settings", (Settings,), {"model_config": {**Settings.model_config, "toml_file": config_file}}
        )
    try:
        return settings_cls(**overrides)
    except ValidationError as exc:
        raise ConfigError(_problems(exc), source=str(config_file or "environment")) from exc


def _check_toml(path: Path) -> None:
    try:
        with path.open("rb") as fh:
            tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError([("--config", f"file not found: {path}")]) from exc
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError([("--config", f"cannot read {path}: {exc}")]) from exc


def _problems(exc: ValidationError) -> list[tuple[str, str]]:
    problems = []
    for error in exc.errors(include_url=False, include_input=False):
        parts = [str(part) for part in error["loc"]]
        dotted = ".".join(parts)
        env = env_var_name(parts[:2]) if len(parts) >= 2 else env_var_name(parts)
        problems.append((f"{dotted} ({env})", error["msg"]))
    return problems


def env_var_name(path: list[str] | tuple[str, ...]) -> str:
    """The environment variable that sets the field at ``path`` (e.g. ``["server", "port"]``)."""
    return ENV_PREFIX + ENV_NESTED_DELIMITER.join(part.upper() for part in path)


def iter_fields() -> Iterator[tuple[str, str, Any, str]]:
    """Every leaf setting as ``(dotted name, env var, default, description)``; feeds docs and tests."""
    for section_name, section_field in Settings.model_fields.items():
        section_cls = section_field.annotation
        if not (isinstance(section_cls, type) and issubclass(section_cls, BaseModel)):
            raise TypeError(f"settings section {section_name} is not a model")
        for name, field in section_cls.model_fields.items():
            default = field.get_default(call_default_factory=True)
            yield (
                f"{section_name}.{name}",
                env_var_name([section_name, name]),
                default,
                field.description or "",
            )


def secret_values(settings: Settings) -> set[str]:
    """Every raw secret the settings hold, so the log redactor can mask them wherever they appear."""
    found: set[str] = set()
    _collect_secrets(settings, found)
    return {value for value in found if value}


def _collect_secrets(value: object, found: set[str]) -> None:
    if isinstance(value, SecretStr):
        found.add(value.get_secret_value())
        if "://" in value.get_secret_value():  # a URL: its password alone may also be logged
            found.update(_url_password(value.get_secret_value()))
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            _collect_secrets(getattr(value, name), found)
    elif isinstance(value, Mapping):
        for item in value.values():
            _collect_secrets(item, found)
    elif isinstance(value, tuple | list):
        for item in value:
            _collect_secrets(item, found)


def _url_password(url: str) -> set[str]:
    password = urlsplit(url).password
    return {password} if password else set()


def redacted_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (the host stays readable for operators)."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password:
        netloc = netloc.replace(f":{parts.password}@", ":***@", 1)
    query = "&".join(
        f"{name}=***" if "password" in name else part
        for part in parts.query.split("&")
        for name in [part.partition("=")[0]]
    )
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def masked_dump(settings: Settings) -> dict[str, Any]:
    """The effective configuration as plain data, every secret replaced by ``**********``.

    The Redis URL is shown with only its password masked: where the daemon connects is not a secret.
    """
    data = settings.model_dump(mode="json")
    data["redis"]["url"] = redacted_url(settings.redis.url.get_secret_value())
    return data
