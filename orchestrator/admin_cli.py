"""``orchestrator rooms ...``, ``schedule ...``, ``policies ...``, ``blocklist ...``, ``replies ...``,
``events ...`` and ``console-link``: the admin API from a terminal.

They talk to a running daemon over HTTP (``--api``, default ``$ORCH_API_URL`` or http://127.0.0.1:8080) with
the admin token (``--token``, default ``$ORCH_ADMIN__TOKEN``, the daemon's own variable); both may come
before the action or after it. Output is JSON, but for ``rooms status``, ``replies list`` and ``events
tail``, which print for people (``--json`` for JSON).
Exit codes: 0 done; 1 the daemon refused (its ``error_code`` and message are printed); 2 bad input here
(an invalid rooms or schedule file, field by field).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from orchestrator.scheduling.rooms import RoomsFileError, field_problems, load_rooms_file
from orchestrator.scheduling.schedules import Schedule

DEFAULT_API = "http://127.0.0.1:8080"


class ApiFailure(Exception):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(f"{status} {body.get('error_code')}: {body.get('error_msg')}")
        self.status, self.body = status, body


def add_commands(commands: Any) -> None:
    rooms = commands.add_parser(
        "rooms",
        help="list, inspect, apply, pause, resume, force-start/stop or delete managed rooms (admin API)",
        description="Manage rooms through a running daemon's admin API. " + (__doc__ or "").split("\n\n")[1],
    )
    _connection(rooms)
    actions = rooms.add_subparsers(dest="action", metavar="ACTION", required=True)
    _connection(
        actions.add_parser("list", help="every room: desired vs actual state, next boundary"), after=True
    )
    status = actions.add_parser(
        "status", help="a table: room, vendor, state, since, next boundary (the room's zone), alerts"
    )
    status.add_argument("--state", default="", help="only rooms in this state (live, starting, failing, ...)")
    status.add_argument("--json", action="store_true", help="the tiles as JSON")
    _connection(status, after=True)
    for name, text in (
        ("show", "one room's state and definition (secrets masked)"),
        ("pause", "switch the room's automation off (the reconciler leaves it alone)"),
        ("resume", "switch the room's automation back on"),
        ("start", "start the room now (the room must be paused)"),
        ("stop", "stop the room now (the room must be paused)"),
        ("delete", "stop the room's job and forget the room"),
    ):
        sub = actions.add_parser(name, help=text)
        sub.add_argument("room", metavar="ROOM")
        _connection(sub, after=True)
    apply = actions.add_parser("apply", help="create or update every room of a YAML rooms file")
    apply.add_argument("file", type=Path, metavar="FILE")
    _connection(apply, after=True)
    rooms.set_defaults(func=cmd_rooms)

    schedule = commands.add_parser(
        "schedule",
        help="show or replace a room's schedule (admin API)",
        description="Show a room's schedule with its desired state now and next boundary, or replace it "
        "with one read from a YAML/JSON file ({timezone, windows, blackout_dates}).",
    )
    _connection(schedule)
    sched_actions = schedule.add_subparsers(dest="action", metavar="ACTION", required=True)
    show = sched_actions.add_parser("show", help="the schedule, desired state now, next boundary")
    show.add_argument("room", metavar="ROOM")
    _connection(show, after=True)
    put = sched_actions.add_parser("set", help="replace the schedule from a YAML or JSON file")
    put.add_argument("room", metavar="ROOM")
    put.add_argument("file", type=Path, metavar="FILE")
    _connection(put, after=True)
    schedule.set_defaults(func=cmd_schedule)

    policies = commands.add_parser(
        "policies",
        help="list, show, save, restore or delete named reply policies (admin API)",
        description="Reply policies by name: a room (or every room of a brand) names one with its "
        "'policy' field. A saved policy takes effect on every replica within seconds; every save is a new "
        "version, and an earlier one can be restored.",
    )
    _connection(policies)
    pol_actions = policies.add_subparsers(dest="action", metavar="ACTION", required=True)
    _connection(
        pol_actions.add_parser("list", help="every policy: its version and the rooms naming it"), after=True
    )
    for name, text in (
        ("show", "a policy's current version (--version N: an earlier one)"),
        ("versions", "the kept versions of a policy, the newest first"),
        ("delete", "forget a policy (refused while a room names it)"),
    ):
        sub = pol_actions.add_parser(name, help=text)
        sub.add_argument("policy", metavar="POLICY")
        if name == "show":
            sub.add_argument("--version", type=int, default=None, help="an earlier version")
        _connection(sub, after=True)
    save = pol_actions.add_parser("save", help="save a policy from a YAML or JSON file (a new version)")
    save.add_argument("policy", metavar="POLICY")
    save.add_argument("file", type=Path, metavar="FILE")
    save.add_argument("--note", default="", help="a word on what changed, kept with the version")
    _connection(save, after=True)
    restore = pol_actions.add_parser("restore", help="save an earlier version again as the newest")
    restore.add_argument("policy", metavar="POLICY")
    restore.add_argument("version", type=int, metavar="VERSION")
    _connection(restore, after=True)
    policies.set_defaults(func=cmd_policies)

    blocklist = commands.add_parser(
        "blocklist",
        help="list, block or unblock viewers, in one room or everywhere (admin API)",
        description="Blocked viewers (by the platform's user id) get no reply of any kind: no answer, "
        "no welcome, no thanks. A block may expire (--ttl-s); without --room it holds in every room.",
    )
    _connection(blocklist)
    block_actions = blocklist.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, text in (
        ("list", "the viewers blocked (in ROOM with --room, else everywhere)"),
        ("add", "block a viewer"),
        ("remove", "unblock a viewer"),
    ):
        sub = block_actions.add_parser(name, help=text)
        if name != "list":
            sub.add_argument("user", metavar="USER_ID")
        sub.add_argument("--room", default=None, help="in this room only (default: everywhere)")
        if name == "add":
            sub.add_argument("--ttl-s", type=float, default=None, help="expires after this many seconds")
            sub.add_argument("--reason", default="", help="why (kept with the entry)")
        _connection(sub, after=True)
    blocklist.set_defaults(func=cmd_blocklist)

    replies = commands.add_parser(
        "replies",
        help="list, send, cancel or clear a room's replies (admin API)",
        description="A room's reply queue: what waits and what plays; an operator's reply; cancelling one "
        "waiting reply, or clearing them all (what the vendor has not played is withdrawn there too).",
    )
    _connection(replies)
    reply_actions = replies.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = reply_actions.add_parser("list", help="what waits and what plays")
    listing.add_argument("room", metavar="ROOM")
    listing.add_argument("--json", action="store_true", help="as JSON")
    send = reply_actions.add_parser("send", help="queue an operator's reply")
    send.add_argument("room", metavar="ROOM")
    send.add_argument("text", metavar="TEXT")
    send.add_argument(
        "--priority", default="operator", choices=["operator", "gift", "question", "reaction", "idle"]
    )
    cancel = reply_actions.add_parser("cancel", help="cancel one waiting reply")
    cancel.add_argument("room", metavar="ROOM")
    cancel.add_argument("reply", metavar="REPLY_ID")
    clear = reply_actions.add_parser("clear", help="drop every waiting reply and withdraw unplayed ones")
    clear.add_argument("room", metavar="ROOM")
    for sub in (listing, send, cancel, clear):
        _connection(sub, after=True)
    replies.set_defaults(func=cmd_replies)

    events = commands.add_parser(
        "events",
        help="a room's events: the latest, and with --follow each as it happens (admin API)",
        description="Print a room's event record (callbacks, actions and their reasons, reports, replies "
        "and why comments went unanswered), one line each; --follow keeps printing until Ctrl-C.",
    )
    _connection(events)
    event_actions = events.add_subparsers(dest="action", metavar="ACTION", required=True)
    tail = event_actions.add_parser("tail", help="the latest events; --follow for the ones to come")
    tail.add_argument("room", metavar="ROOM")
    tail.add_argument(
        "-n", "--lines", type=int, default=20, help="how many of the latest (0-500, default 20)"
    )
    tail.add_argument("-f", "--follow", action="store_true", help="keep printing events as they happen")
    tail.add_argument("--json", action="store_true", help="one JSON object per line")
    _connection(tail, after=True)
    events.set_defaults(func=cmd_events)

    link = commands.add_parser(
        "console-link",
        help="print a one-time login link to the web console (admin API)",
        description="A link that logs its first user into the console (valid ten minutes, once).",
    )
    link.add_argument("--operator", default=None, help="log in as this operator (admin.operators)")
    _connection(link)
    link.set_defaults(func=cmd_console_link)


def _connection(parser: argparse.ArgumentParser, *, after: bool = False) -> None:
    """``--api``/``--token``, before the action or after it (``rooms list --api URL``); given after, they
    are the action parser's, whose default must not overwrite one given before."""
    api_default = argparse.SUPPRESS if after else os.environ.get("ORCH_API_URL", DEFAULT_API)
    token_default = argparse.SUPPRESS if after else os.environ.get("ORCH_ADMIN__TOKEN", "")
    parser.add_argument("--api", default=api_default, help="daemon base URL (env ORCH_API_URL)")
    parser.add_argument("--token", default=token_default, help="admin bearer token (env ORCH_ADMIN__TOKEN)")


def _call(args: argparse.Namespace, method: str, path: str, body: Any = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(  # noqa: S310 -- an operator-given http(s) URL
        args.api.rstrip("/") + path,
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {args.token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:  # noqa: S310
            return json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        raise _api_failure(exc) from None
    except urllib.error.URLError as exc:
        raise ApiFailure(0, {"error_code": "UNREACHABLE", "error_msg": f"{args.api}: {exc.reason}"}) from None


def _api_failure(exc: urllib.error.HTTPError) -> ApiFailure:
    try:
        payload = json.loads(exc.read())
    except ValueError:
        payload = {"error_code": f"HTTP_{exc.code}", "error_msg": exc.reason}
    return ApiFailure(exc.code, payload)


def _print(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


def _fail(exc: ApiFailure) -> int:
    print(f"orchestrator: {exc.body.get('error_code')}: {exc.body.get('error_msg')}", file=sys.stderr)
    for problem in exc.body.get("errors") or []:
        print(f"  {problem.get('field')}: {problem.get('message')}", file=sys.stderr)
    return 1


def cmd_rooms(args: argparse.Namespace) -> int:
    try:
        if args.action == "list":
            _print(_call(args, "GET", "/api/rooms"))
        elif args.action == "status":
            query = f"?status={urllib.parse.quote(args.state)}" if args.state else ""
            overview = _call(args, "GET", f"/api/overview{query}")
            if args.json:
                _print(overview["rooms"])
            else:
                print(status_table(overview["rooms"], time.time()))
        elif args.action == "show":
            state = _call(args, "GET", f"/api/rooms/{args.room}")
            _print({"state": state, "config": _call(args, "GET", f"/api/rooms/{args.room}/config")})
        elif args.action in ("pause", "resume", "start", "stop"):
            _print(_call(args, "POST", f"/api/rooms/{args.room}/{args.action}"))
        elif args.action == "delete":
            _print(_call(args, "DELETE", f"/api/rooms/{args.room}"))
        else:
            return _apply(args)
    except ApiFailure as exc:
        return _fail(exc)
    return 0


def _apply(args: argparse.Namespace) -> int:
    try:
        rooms = load_rooms_file(args.file)
    except RoomsFileError as exc:
        print(f"orchestrator: invalid rooms file {args.file}:", file=sys.stderr)
        for location, message in exc.problems:
            print(f"  {location}: {message}", file=sys.stderr)
        return 2
    raw = yaml.safe_load(args.file.read_text())["rooms"]  # as written: secrets included, for the API
    for room, body in zip(rooms, raw, strict=True):
        _call(args, "PUT", f"/api/rooms/{room.room_id}", body)
        print(f"applied {room.room_id}")
    return 0


def cmd_schedule(args: argparse.Namespace) -> int:
    try:
        if args.action == "show":
            _print(_call(args, "GET", f"/api/rooms/{args.room}/schedule"))
            return 0
        data = yaml.safe_load(args.file.read_text())
        try:
            Schedule.model_validate(data)
        except ValidationError as exc:
            print(f"orchestrator: invalid schedule {args.file}:", file=sys.stderr)
            for location, message in field_problems(exc):
                print(f"  {location}: {message}", file=sys.stderr)
            return 2
        _print(_call(args, "PUT", f"/api/rooms/{args.room}/schedule", data))
    except ApiFailure as exc:
        return _fail(exc)
    return 0


def cmd_policies(args: argparse.Namespace) -> int:
    name = getattr(args, "policy", "")
    try:
        if args.action == "list":
            _print(_call(args, "GET", "/api/policies"))
        elif args.action == "show":
            query = f"?version={args.version}" if args.version is not None else ""
            _print(_call(args, "GET", f"/api/policies/{name}{query}"))
        elif args.action == "versions":
            _print(_call(args, "GET", f"/api/policies/{name}/versions"))
        elif args.action == "delete":
            _call(args, "DELETE", f"/api/policies/{name}")
            print(f"deleted {name}")
        elif args.action == "restore":
            _print(_call(args, "POST", f"/api/policies/{name}/restore", {"version": args.version}))
        else:
            return _save_policy(args)
    except ApiFailure as exc:
        return _fail(exc)
    return 0


def cmd_blocklist(args: argparse.Namespace) -> int:
    base = f"/api/rooms/{urllib.parse.quote(args.room, safe='')}/blocklist" if args.room else "/api/blocklist"
    try:
        if args.action == "list":
            _print(_call(args, "GET", base))
            return 0
        path = f"{base}/{urllib.parse.quote(args.user, safe='')}"
        if args.action == "add":
            body: dict[str, Any] = {"reason": args.reason}
            if args.ttl_s is not None:
                body["ttl_s"] = args.ttl_s
            _print(_call(args, "PUT", path, body))
        else:
            _print(_call(args, "DELETE", path))
    except ApiFailure as exc:
        return _fail(exc)
    return 0


def _save_policy(args: argparse.Namespace) -> int:
    from orchestrator.interaction.policy import PolicyConfig

    try:
        data = yaml.safe_load(args.file.read_text())
    except (OSError, yaml.YAMLError) as exc:
        print(f"orchestrator: cannot read {args.file}: {exc}", file=sys.stderr)
        return 2
    try:
        PolicyConfig.model_validate(data)
    except ValidationError as exc:
        print(f"orchestrator: invalid policy {args.file}:", file=sys.stderr)
        for location, message in field_problems(exc):
            print(f"  {location or 'policy'}: {message}", file=sys.stderr)
        return 2
    note = f"?note={urllib.parse.quote(args.note)}" if args.note else ""
    _print(_call(args, "PUT", f"/api/policies/{args.policy}{note}", data))
    return 0


def status_table(tiles: list[dict[str, Any]], now_s: float) -> str:
    """The rooms as a table for people (pure): the next boundary in each room's own zone."""
    header = ("ROOM", "NAME", "VENDOR", "STATE", "SINCE", "NEXT BOUNDARY (ROOM'S ZONE)", "ALERTS")
    rows = [header]
    for t in tiles:
        since = t.get("since_ms")
        rows.append(
            (
                t["room_id"],
                t.get("name") or "-",
                t.get("vendor") or "-",
                t["status"] + (" (paused)" if t.get("paused") and t["status"] != "paused" else ""),
                _ago(now_s - since / 1000) if since else "-",
                _local(t.get("next_boundary_local"), t.get("timezone") or "UTC"),
                ", ".join(t.get("open_alerts") or []) or "-",
            )
        )
    if len(rows) == 1:
        return "no managed rooms"
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )


def _ago(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s ago"
    if seconds < 3600:
        return f"{seconds // 60}m ago"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m ago"
    return f"{seconds // 86400}d ago"


def _local(iso: str | None, timezone: str) -> str:
    if not iso:
        return "-"
    day, _, rest = iso.partition("T")
    return f"{day} {rest[:5]} {timezone}"


def cmd_replies(args: argparse.Namespace) -> int:
    path = f"/api/rooms/{urllib.parse.quote(args.room, safe='')}/replies"
    try:
        if args.action == "list":
            answer = _call(args, "GET", path)
            if args.json:
                _print(answer)
                return 0
            lines = [
                f"playing  [{f['priority']}] {f['text']}  ({f['reply_id']})" for f in answer["in_flight"]
            ]
            lines += [f"waiting  [{p['priority']}] {p['text']}  ({p['reply_id']})" for p in answer["pending"]]
            print("\n".join(lines) or "nothing waits or plays")
        elif args.action == "send":
            answer = _call(args, "POST", path, {"text": args.text, "priority": args.priority})
            print(f"{answer['outcome']}: {answer['reply_id']}")
            for warning in answer.get("warnings") or []:
                print(f"warning: {warning}", file=sys.stderr)
        elif args.action == "cancel":
            _call(args, "DELETE", f"{path}/{urllib.parse.quote(args.reply, safe='')}")
            print(f"cancelled {args.reply}")
        else:
            answer = _call(args, "DELETE", path)
            print(f"dropped {answer['dropped']}, withdrew {len(answer['withdrawn'])} at the vendor")
    except ApiFailure as exc:
        return _fail(exc)
    return 0


def event_line(entry: dict[str, Any]) -> str:
    """One event for people (pure): when (UTC), what, and what it said."""
    at = time.strftime("%H:%M:%S", time.gmtime(int(entry.get("event_ms") or 0) / 1000))
    kind = str(entry.get("kind", "?"))
    message = entry.get("message") if isinstance(entry.get("message"), dict) else {}
    skip = {"id", "kind", "event_ms", "message", "job_id"}
    details = " ".join(f"{k}={v}" for k, v in entry.items() if k not in skip and v not in ("", None))
    if kind == "callback":
        kind = str(entry.get("event_type", kind))
        details = " ".join(f"{k}={v}" for k, v in (message or {}).items() if v not in ("", None))
    elif kind == "alert" and message:
        text = message.get("text", "")
        details = f"{entry.get('alert')} [{entry.get('severity')}] {text} -> {entry.get('outcome')}"
    return f"{at}  {kind:<24} {details}".rstrip()


def cmd_events(args: argparse.Namespace) -> int:
    if not 0 <= args.lines <= 500:
        print("orchestrator: --lines must be from 0 to 500", file=sys.stderr)
        return 2
    room = urllib.parse.quote(args.room, safe="")

    def show(entry: dict[str, Any]) -> None:
        print(json.dumps(entry, ensure_ascii=False) if args.json else event_line(entry))

    try:
        if not args.follow:
            if args.lines:
                for entry in _call(args, "GET", f"/api/rooms/{room}/events?last={args.lines}")["events"]:
                    show(entry)
            return 0
        for entry in _stream(args, f"/api/rooms/{room}/events/stream?backlog={args.lines}"):
            show(entry)
            sys.stdout.flush()
    except ApiFailure as exc:
        return _fail(exc)
    except KeyboardInterrupt:
        return 0
    return 0


def _stream(args: argparse.Namespace, path: str) -> Any:
    """The entries of a server-sent event stream, as they come."""
    request = urllib.request.Request(  # noqa: S310 -- an operator-given http(s) URL
        args.api.rstrip("/") + path, headers={"Authorization": f"Bearer {args.token}"}
    )
    try:
        resp = urllib.request.urlopen(request)  # noqa: S310
    except urllib.error.HTTPError as exc:
        raise _api_failure(exc) from None
    except urllib.error.URLError as exc:
        raise ApiFailure(0, {"error_code": "UNREACHABLE", "error_msg": f"{args.api}: {exc.reason}"}) from None
    with resp:
        for raw in resp:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if line.startswith("data: "):
                yield json.loads(line[6:])


def cmd_console_link(args: argparse.Namespace) -> int:
    try:
        answer = _call(
            args, "POST", "/api/console/links", {"operator": args.operator} if args.operator else {}
        )
    except ApiFailure as exc:
        return _fail(exc)
    print(answer["url"])
    print(
        f"(logs {answer['operator']} in once, within {answer['expires_in_s'] // 60} minutes)", file=sys.stderr
    )
    return 0
