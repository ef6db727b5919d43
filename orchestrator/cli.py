"""The ``orchestrator`` command: the daemon's entry points, and the only place that handles signals.

Exit codes: 0 success, 1 runtime failure (e.g. the port is taken), 2 invalid configuration or usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import structlog
import yaml
from pydantic import ValidationError
from redis.exceptions import RedisError

from orchestrator import __version__, clock
from orchestrator.admin_cli import add_commands as add_admin_commands
from orchestrator.app import create_app, load_policy
from orchestrator.logging import Redactor, configure_logging
from orchestrator.settings import ConfigError, LogFormat, Settings, load_settings, masked_dump, secret_values
from orchestrator.store.journal import Journal, JournalInUse
from orchestrator.web.server import serve

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2

_DESCRIPTION = """\
Livestream orchestration daemon: schedules virtual-human live jobs on MetaStudio, receives and verifies
vendor callbacks, reports audience events and answers the audience, with room state in Redis.

Configuration comes from environment variables (ORCH_SECTION__FIELD, e.g. ORCH_SERVER__PORT=8080) and an
optional TOML file (--config); the environment wins. See config/orchestrator.example.toml.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="orchestrator", description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"orchestrator {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = commands.add_parser(
        "run",
        help="run the daemon (HTTP server and background work) until SIGTERM/SIGINT",
        description="Run the daemon in the foreground until SIGTERM or SIGINT, then shut down gracefully: "
        "stop accepting connections, let in-flight requests finish (server.shutdown_timeout_s), close Redis.",
    )
    _add_config_options(run)
    run.add_argument("--host", help="listen address (overrides server.host)")
    run.add_argument("--port", type=int, help="listen port (overrides server.port)")
    run.set_defaults(func=cmd_run)

    check = commands.add_parser(
        "check-config",
        help="validate the configuration and print it with secrets masked",
        description="Load the configuration exactly as `run` would, print the effective values as JSON "
        "with every secret masked, and exit 0; exit 2 with one line per invalid field otherwise.",
    )
    _add_config_options(check)
    check.set_defaults(func=cmd_check_config)

    callback_config = commands.add_parser(
        "callback-config",
        help="print the live_event_callback_config to put in a room's start-job request",
        description="Print, as JSON, the live_event_callback_config object of a MetaStudio start-job request "
        "for ROOM: the callback profile's public URL (exactly what MetaStudio signs), its auth type, its "
        "current key and every event type. The key is masked unless --reveal-key is given.",
    )
    _add_config_options(callback_config)
    callback_config.add_argument("room", metavar="ROOM", help="the room id (MetaStudio room_id)")
    callback_config.add_argument(
        "--profile", default="default", help="callback profile name (default: default)"
    )
    callback_config.add_argument("--reveal-key", action="store_true", help="print the signing key itself")
    callback_config.set_defaults(func=cmd_callback_config)

    add_admin_commands(commands)

    sandbox = commands.add_parser(
        "sandbox",
        help="run a local emulator of a vendor API (for tests, demos and trying the daemon)",
        description="Run a faithful local emulator of a vendor API. It checks signatures like the real "
        "service, plays live jobs at a chosen speed, sends signed callbacks, and has a fault-injection API "
        "under /_sandbox. Never expose it to a network.",
    )
    vendors = sandbox.add_subparsers(dest="vendor", metavar="VENDOR", required=True)
    metastudio = vendors.add_parser(
        "metastudio",
        help="Huawei Cloud MetaStudio smart-live API",
        description="Serve the MetaStudio smart-live API with a seeded demo room, and print the endpoint, "
        "credentials and room id to configure the daemon (or the official SDK) with.",
    )
    metastudio.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    metastudio.add_argument("--port", type=int, default=8090, help="listen port (default 8090; 0: any free)")
    metastudio.add_argument("--ak", default="SANDBOXACCESSKEY", help="access key the sandbox accepts")
    metastudio.add_argument("--sk", default="sandbox-secret-key", help="secret key the sandbox accepts")
    metastudio.add_argument("--project-id", default="sandbox-project", help="project id in API paths")
    metastudio.add_argument("--auth-token", help="also accept this X-Auth-Token")
    metastudio.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="simulated seconds per real second (default 1; 60: an hour a minute)",
    )
    metastudio.set_defaults(func=cmd_sandbox_metastudio)
    softsugar = vendors.add_parser(
        "softsugar",
        help="SenseTime SoftSugar 2D interactive live API",
        description="Serve the SoftSugar live API (tokens, sessions, the takeover queue, status callbacks, "
        "the microphone WebSocket), and print the endpoint and credentials to configure the daemon with.",
    )
    softsugar.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    softsugar.add_argument("--port", type=int, default=8091, help="listen port (default 8091; 0: any free)")
    softsugar.add_argument("--app-id", default="sandbox-app", help="the account's appId the sandbox accepts")
    softsugar.add_argument(
        "--app-key", default="sandbox-app-key", help="the account's appKey (signs token requests)"
    )
    softsugar.add_argument(
        "--callback-url", help="where status callbacks go (the daemon's /callbacks/softsugar/<token>)"
    )
    softsugar.add_argument(
        "--speed", type=float, default=1.0, help="simulated seconds per real second (default 1)"
    )
    softsugar.add_argument(
        "--heartbeat-timeout-s",
        type=float,
        default=180.0,
        help="a session without a heartbeat for this long (simulated) is closed with status 50 (default 180)",
    )
    softsugar.set_defaults(func=cmd_sandbox_softsugar)

    demo = commands.add_parser(
        "demo",
        help="run the whole daemon with a vendor sandbox and a simulated audience (no setup needed)",
        description="Run the daemon, a vendor sandbox and a simulated audience in one process, with "
        "an embedded in-memory Redis-compatible store (or a real Redis with --redis-url), and narrate what "
        "happens: the schedule opens the demo room's window, the job goes live, paragraphs switch, audience "
        "events are reported, replies are inserted and finish (MetaStudio); the session is created, started "
        "and kept alive by heartbeats, replies go through the takeover queue (SoftSugar). Ctrl-C stops it.",
    )
    demo.add_argument(
        "--vendor",
        choices=["metastudio", "softsugar"],
        default="metastudio",
        help="the vendor the demo room runs on, its sandbox embedded (default metastudio)",
    )
    demo.add_argument(
        "--redis-url", help="use this Redis instead of the embedded store (its demo keys are reset)"
    )
    demo.add_argument(
        "--duration", type=float, metavar="SECONDS", help="stop after this long (default: Ctrl-C)"
    )
    demo.add_argument(
        "--live-in", type=float, default=5.0, metavar="SECONDS", help="when the room goes live (default 5)"
    )
    demo.add_argument(
        "--speed", type=float, default=4.0, help="sandbox simulated seconds per real second (default 4)"
    )
    demo.add_argument(
        "--log-level",
        default="WARNING",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="the daemon's own log on stderr (default WARNING; the narration is on stdout)",
    )
    demo.set_defaults(func=cmd_demo)

    version = commands.add_parser(
        "version", help="print the version and exit", description="Print the daemon's version."
    )
    version.set_defaults(func=cmd_version)
    return parser


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, metavar="PATH", help="TOML configuration file")
    parser.add_argument(
        "--log-format",
        choices=[f.value for f in LogFormat],
        help="log output: json lines, console, or auto (console on a TTY); overrides logging.format",
    )
    parser.add_argument(
        "--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="overrides logging.level"
    )


def _load(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    logging_overrides = {
        k: v for k, v in (("format", args.log_format), ("level", args.log_level)) if v is not None
    }
    if logging_overrides:
        overrides["logging"] = logging_overrides
    server_overrides = {
        k: v for k, v in (("host", getattr(args, "host", None)), ("port", getattr(args, "port", None))) if v
    }
    if server_overrides:
        overrides["server"] = server_overrides
    return load_settings(args.config, **overrides)


def _report_config_error(exc: ConfigError) -> int:
    print(f"orchestrator: invalid configuration ({exc.source or 'environment'}):", file=sys.stderr)
    for location, message in exc.problems:
        print(f"  {location}: {message}", file=sys.stderr)
    return EXIT_CONFIG


def _startup_problems(settings: Settings) -> int | None:
    """Exit code 2 (after printing every invalid field) if a file the configuration names is unusable: the
    rooms file (every room, and what it references), the reply policy file."""
    from orchestrator.scheduling.rooms import RoomsFileError, field_problems, load_rooms_file

    policy = settings.interaction.policy_file
    if policy is not None:
        try:
            load_policy(policy)
        except OSError as exc:
            return _report_config_error(
                ConfigError([("interaction.policy_file", f"cannot read {policy}: {exc.strerror}")])
            )
        except ValidationError as exc:
            return _report_config_error(ConfigError(field_problems(exc), source=str(policy)))
        except yaml.YAMLError as exc:
            return _report_config_error(ConfigError([("interaction.policy_file", f"not YAML: {exc}")]))
    if settings.scheduling.rooms_file is not None:
        try:
            load_rooms_file(settings.scheduling.rooms_file, settings)
        except RoomsFileError as exc:
            return _report_config_error(ConfigError(exc.problems, source=str(settings.scheduling.rooms_file)))
    refusals = deployment_problems(settings)
    return _report_config_error(ConfigError(refusals)) if refusals else None


def deployment_problems(settings: Settings) -> list[tuple[str, str]]:
    """What makes this configuration unusable where it would run, beyond its own validity: a journal the
    process cannot write (a callback could not be made durable while Redis is away), an admin API on a
    non-loopback address without a token."""
    problems = []
    journal = settings.callbacks.journal_path.absolute()
    target = next((p for p in (journal, *journal.parents) if p.exists()), Path("/"))
    usable = target.is_file() if target == journal else target.is_dir()
    if not usable or not os.access(target, os.W_OK):
        what = "is not writable by this user" if usable else "is not a directory"
        problems.append(("callbacks.journal_path", f"{journal}: {target} {what} (uid {os.getuid()})"))
    exposed = settings.server.host not in ("127.0.0.1", "::1", "localhost")
    if exposed and not settings.admin.token.get_secret_value():
        problems.append(
            (
                "admin.token",
                f"empty while the server listens on {settings.server.host}: set ORCH_ADMIN__TOKEN "
                "(the admin API would refuse everyone, and an operator could do nothing)",
            )
        )
    return problems


def config_warnings(settings: Settings) -> list[str]:
    """What is allowed but probably not meant: said by ``check-config`` and logged by ``run``."""
    from orchestrator.providers.errors import ProviderConfigError
    from orchestrator.providers.metastudio.client import credentials_from_settings

    warnings = []
    if not settings.admin.token.get_secret_value():
        warnings.append("admin.token is empty: the admin API refuses every request (ORCH_ADMIN__TOKEN)")
    if not settings.metastudio.callback_profiles:
        warnings.append(
            "no callback profile (metastudio.callback_profiles): MetaStudio's live-event callbacks cannot be "
            "received, and no room can be started"
        )
    try:
        credentials_from_settings(settings.metastudio)
    except ProviderConfigError as exc:
        warnings.append(f"MetaStudio credentials incomplete: {exc}; no room can be started")
    return warnings


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        settings = _load(args)
    except ConfigError as exc:
        return _report_config_error(exc)
    if (code := _startup_problems(settings)) is not None:
        return code
    print(json.dumps(masked_dump(settings), indent=2, ensure_ascii=False))
    for warning in config_warnings(settings):
        print(f"warning: {warning}", file=sys.stderr)
    print("configuration OK", file=sys.stderr)
    return EXIT_OK


def cmd_callback_config(args: argparse.Namespace) -> int:
    from orchestrator.providers.metastudio.profiles import (
        UnknownProfile,
        live_event_callback_config,
        resolve_profile,
    )
    from orchestrator.store.keys import InvalidKeyPart, check_room_id

    try:
        settings = _load(args)
    except ConfigError as exc:
        return _report_config_error(exc)
    try:
        check_room_id(args.room)
        config = live_event_callback_config(resolve_profile(settings, args.profile), args.room).to_wire()
    except (UnknownProfile, InvalidKeyPart) as exc:
        print(f"orchestrator: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if config.get("key") and not args.reveal_key:
        config["key"] = "**********"
    print(json.dumps(config, indent=2, ensure_ascii=False))
    return EXIT_OK


def cmd_version(args: argparse.Namespace) -> int:
    print(__version__)
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    try:
        settings = _load(args)
    except ConfigError as exc:
        return _report_config_error(exc)
    if (code := _startup_problems(settings)) is not None:
        return code
    redactor = Redactor(settings.logging.redact_fields, secret_values(settings))
    configure_logging(settings.logging, redactor)
    log = structlog.get_logger("orchestrator")
    try:  # before anything starts: a replica sharing another's journal must not run at all
        Journal(settings.callbacks.journal_path).claim()
    except JournalInUse as exc:
        log.error("cannot start", error=str(exc))
        return EXIT_CONFIG
    log.info(
        "starting", version=__version__, python=sys.version.split()[0], event_loop=settings.server.event_loop
    )
    if settings.simulation.active:
        install_simulated_clock(settings)
        log.warning(
            "simulated clock: for the soak only, never in production",
            speed=settings.simulation.speed,
            simulated_now=clock.now().isoformat(),
            skew_s=settings.simulation.skew_s,
        )
    for warning in config_warnings(settings):
        log.warning("configuration", warning=warning)
    try:
        with asyncio.Runner(loop_factory=loop_factory(settings.server.event_loop)) as runner:
            runner.run(_run(settings, redactor))
    except OSError as exc:
        log.error("cannot serve", error=str(exc), host=settings.server.host, port=settings.server.port)
        return EXIT_FAILURE
    except Exception as exc:  # a crash is a log line too: JSON, redacted -- never plain text on stderr
        log.critical("crashed", error=str(exc) or type(exc).__name__, exc_info=exc)
        return EXIT_FAILURE
    return EXIT_OK


def install_simulated_clock(settings: Settings) -> None:
    sim = settings.simulation
    clock.install(
        clock.Clock(speed=sim.speed, start=sim.start, real_origin=sim.real_origin, skew_s=sim.skew_s)
    )


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop factory for ``server.event_loop`` (None: asyncio's own)."""
    if name != "uvloop":
        return None
    import uvloop

    return uvloop.new_event_loop


async def _run(settings: Settings, redactor: Redactor) -> None:
    """Serve until SIGTERM/SIGINT; SIGHUP reloads the rooms file and the reply policy (validated first:
    an invalid one is refused with a log line and the running configuration stays)."""
    from orchestrator.app import reload

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    app = create_app(settings, redactor)
    reloads: set[asyncio.Task[bool]] = set()

    def on_hangup() -> None:
        structlog.get_logger("orchestrator").info("SIGHUP: reloading the rooms file and the reply policy")
        task = loop.create_task(reload(app), name="reload")
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_hangup)
    await serve(app, settings, stop)


def cmd_sandbox_metastudio(args: argparse.Namespace) -> int:
    from orchestrator.sandbox.metastudio.app import SandboxConfig, demo_room, running_sandbox

    if args.speed <= 0:
        print("orchestrator: --speed must be positive", file=sys.stderr)
        return EXIT_CONFIG
    config = SandboxConfig(args.ak, args.sk, args.project_id, args.speed, args.auth_token)

    async def serve_sandbox() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        async with running_sandbox(config, args.host, args.port) as (sandbox, url):
            room = sandbox.world.add_room(demo_room())
            print(
                f"MetaStudio sandbox listening on {url} (speed x{args.speed:g})\n"
                f"  endpoint:   {url}\n  ak:         {args.ak}\n  sk:         {args.sk}\n"
                f"  project id: {args.project_id}\n  room id:    {room.room_id}\n"
                f"  controls:   {url}/_sandbox/state\n"
                "Point the daemon at it:\n"
                f"  ORCH_METASTUDIO__ENDPOINT={url} ORCH_METASTUDIO__AK={args.ak} "
                f"ORCH_METASTUDIO__SK={args.sk} ORCH_METASTUDIO__PROJECT_ID={args.project_id}",
                flush=True,
            )
            await stop.wait()

    try:
        asyncio.run(serve_sandbox())
    except OSError as exc:
        print(f"orchestrator: cannot serve the sandbox on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def cmd_sandbox_softsugar(args: argparse.Namespace) -> int:
    from orchestrator.sandbox.softsugar.app import SandboxConfig, running_sandbox

    if args.speed <= 0 or args.heartbeat_timeout_s <= 0:
        print("orchestrator: --speed and --heartbeat-timeout-s must be positive", file=sys.stderr)
        return EXIT_CONFIG
    config = SandboxConfig(
        args.app_id,
        args.app_key,
        args.callback_url,
        speed=args.speed,
        heartbeat_timeout_s=args.heartbeat_timeout_s,
    )

    async def serve_sandbox() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        async with running_sandbox(config, args.host, args.port) as (_sandbox, url):
            print(
                f"SoftSugar sandbox listening on {url} (speed x{args.speed:g})\n"
                f"  endpoint:  {url}\n  app id:    {args.app_id}\n  app key:   {args.app_key}\n"
                f"  callbacks: {args.callback_url or '(none: poll)'}\n"
                f"  controls:  {url}/_sandbox/state\n"
                "Point the daemon at it:\n"
                f"  ORCH_SOFTSUGAR__ENDPOINT={url} ORCH_SOFTSUGAR__APP_ID={args.app_id} "
                f"ORCH_SOFTSUGAR__APP_KEY={args.app_key}",
                flush=True,
            )
            await stop.wait()

    try:
        asyncio.run(serve_sandbox())
    except OSError as exc:
        print(f"orchestrator: cannot serve the sandbox on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from orchestrator.demo import run_demo

    if args.speed <= 0 or args.live_in < 0 or (args.duration is not None and args.duration <= 0):
        print(
            "orchestrator: --speed and --duration must be positive, --live-in not negative", file=sys.stderr
        )
        return EXIT_CONFIG
    try:
        asyncio.run(
            run_demo(
                redis_url=args.redis_url,
                duration_s=args.duration,
                live_in_s=args.live_in,
                speed=args.speed,
                log_level=args.log_level,
                vendor=args.vendor,
            )
        )
    except (OSError, RedisError) as exc:
        print(f"orchestrator: the demo stopped: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
