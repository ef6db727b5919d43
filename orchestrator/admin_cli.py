"""``orchestrator rooms ...``, ``schedule ...``, ``policies ...`` and ``blocklist ...``: the admin API
from a terminal.

They talk to a running daemon over HTTP (``--api``, default ``$ORCH_API_URL`` or http://127.0.0.1:8080) with
the admin token (``--token``, default ``$ORCH_ADMIN__TOKEN``, the daemon's own variable). Output is JSON.
Exit codes: 0 done; 1 the daemon refused (its ``error_code`` and message are printed); 2 bad input here
(an invalid rooms or schedule file, field by field).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
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
        try:
            payload = json.loads(exc.read())
        except ValueError:
            payload = {"error_code": f"HTTP_{exc.code}", "error_msg": exc.reason}
        raise ApiFailure(exc.code, payload) from None
    except urllib.error.URLError as exc:
        raise ApiFailure(0, {"error_code": "UNREACHABLE", "error_msg": f"{args.api}: {exc.reason}"}) from None


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
