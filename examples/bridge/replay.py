"""A reference platform bridge: replays a JSON-lines file of platform messages into a room.

Each line is one platform message, as a bridge would receive it from a live platform's push or scraper
(the shape below is Douyin-like; a real bridge maps its own platform's shape in ``to_event``):

    {"id": "7301", "kind": "chat", "uid": "u1", "nick": "小明", "content": "多少钱？", "ts": 1765000000000}
    {"id": "7302", "kind": "gift", "uid": "u2", "nick": "小红", "gift": "小心心", "count": 3, "value": 1}
    {"id": "7303", "kind": "like", "uid": null}
    {"id": "7304", "kind": "member", "uid": "u3", "nick": "老王"}
    {"id": "7305", "kind": "follow", "uid": "u3", "nick": "老王"}
    {"id": "7306", "kind": "room_stats", "online": 5466}

It sends batches to ``POST /api/rooms/{room}/events`` with the bridge's own token and follows the ingest
contract (docs/bridges.md): every event carries the platform's message id, so a batch sent again after a
timeout is taken once (at-least-once delivery, deduplicated by the daemon); a 429 means the room's backlog
is full -- wait ``Retry-After`` and send the same batch again; 5xx and connection errors are retried with
a growing pause; a 4xx other than 429 is a bug in the bridge: it stops and says why. Unknown platform
fields travel under ``extra``.

    python examples/bridge/replay.py messages.jsonl --room brand-a-1 --url http://127.0.0.1:8080 \\
        --token "$BRIDGE_TOKEN" [--batch 100] [--platform douyin]

Standard library only: copy it and change ``to_event``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

KINDS = {"chat": "comment", "member": "join", "like": "like", "gift": "gift", "follow": "follow"}


def to_event(message: dict[str, Any], platform: str) -> dict[str, Any] | None:
    """One platform message as an ingest event (None: nothing we send)."""
    kind = message.get("kind")
    event: dict[str, Any] = {"message_id": f"{platform}:{message['id']}", "platform": platform}
    if "ts" in message:
        event["timestamp"] = int(message["ts"])
    if message.get("uid"):
        event["user"] = {"userId": str(message["uid"]), "name": str(message.get("nick", ""))}
    if kind == "room_stats":
        return {**event, "type": "viewers", "viewers": int(message["online"])}
    if kind not in KINDS:
        return None
    event["type"] = KINDS[kind]
    if kind == "chat":
        event["text"] = str(message.get("content", ""))
    if kind == "gift":
        event["gift"] = {
            "giftName": str(message["gift"]),
            "giftNum": int(message.get("count", 1)),
            "giftValue": int(message.get("value", 0)),
        }
    return event


def batches(lines: Iterator[str], size: int, platform: str) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            event = to_event(json.loads(line), platform)
        except (ValueError, KeyError, TypeError) as exc:
            print(f"line {number}: skipped ({exc})", file=sys.stderr)
            continue
        if event is not None:
            batch.append(event)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def send(url: str, token: str, events: list[dict[str, Any]], *, max_tries: int = 20) -> dict[str, Any]:
    """Send one batch until the daemon takes it; its answer."""
    body = json.dumps({"events": events}, ensure_ascii=False).encode()
    pause = 0.5
    for _ in range(max_tries):
        request = urllib.request.Request(  # noqa: S310 -- http(s) only, checked in main
            url,
            data=body,
            method="POST",
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
                return dict(json.loads(response.read()))
        except urllib.error.HTTPError as exc:
            answer = exc.read().decode(errors="replace")
            if exc.code == 429:  # the room's backlog is full: wait as told, send the same batch again
                time.sleep(float(exc.headers.get("Retry-After", "1")))
                continue
            if exc.code < 500:
                raise SystemExit(f"the daemon refused the batch ({exc.code}): {answer}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError):
            pass  # unknown outcome: sent again -- the message ids make it count once
        time.sleep(pause)
        pause = min(pause * 2, 10.0)
    raise SystemExit(f"gave up after {max_tries} tries")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("file", help="JSON-lines file of platform messages ('-': standard input)")
    parser.add_argument("--room", required=True, help="the daemon's room id")
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="the daemon's base URL")
    parser.add_argument("--token", required=True, help="the bridge's token (admin.bridges)")
    parser.add_argument("--batch", type=int, default=100, help="events per request (at most 1000)")
    parser.add_argument("--platform", default="douyin", help="prefix of message ids, and extra.platform")
    args = parser.parse_args(argv)
    if urllib.parse.urlsplit(args.url).scheme not in ("http", "https"):
        parser.error("--url must be an http:// or https:// URL")
    endpoint = f"{args.url.rstrip('/')}/api/rooms/{urllib.parse.quote(args.room, safe='')}/events"
    source = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8")  # noqa: SIM115
    accepted = duplicates = rejected = 0
    with source:
        for batch in batches(iter(source), max(1, min(args.batch, 1000)), args.platform):
            answer = send(endpoint, args.token, batch)
            accepted += answer["accepted"]
            duplicates += answer.get("duplicates", 0)
            for problem in answer.get("rejected", []):
                rejected += 1
                print(f"event {problem['index']} refused: {problem['error_msg']}", file=sys.stderr)
    print(json.dumps({"accepted": accepted, "duplicates": duplicates, "rejected": rejected}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
