"""SIGHUP reloads the rooms file and the reply policy, validated first; a restart keeps the API's changes.

Before: SIGHUP killed the daemon without a line, and a restart with ``scheduling.rooms_file`` silently put
the file's definitions back over rooms changed through the API.
"""

from __future__ import annotations

import json
import signal
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.daemon import Daemon

pytestmark = pytest.mark.slow

ADMIN = "reload-admin-token-0123"
ROOM = "reload-room"


def _room(name: str) -> dict[str, Any]:
    return {
        "room_id": ROOM,
        "name": name,
        "template": {"output_urls": ["rtmp://push.example/live"]},
        "schedule": {
            "timezone": "UTC",
            "windows": [{"kind": "once", "start": "2030-01-01T00:00:00", "end": "2030-01-01T01:00:00"}],
        },
    }


def _api(daemon: Daemon, method: str, path: str, body: Any = None) -> Any:
    request = urllib.request.Request(
        daemon.base_url + path,
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as resp:
        return json.loads(resp.read())


def _until(check: Any, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline
        time.sleep(0.1)


def _name(daemon: Daemon) -> str:
    return str(_api(daemon, "GET", f"/api/rooms/{ROOM}/config")["name"])


def test_sighup_reloads_validated_and_a_restart_keeps_the_apis_change(redis_url: str, tmp_path: Path) -> None:
    rooms, policy = tmp_path / "rooms.yaml", tmp_path / "policy.yaml"
    rooms.write_text(yaml.safe_dump({"rooms": [_room("from the file")]}))
    policy.write_text(
        yaml.safe_dump(
            {"rules": [{"name": "price", "patterns": ["价格"], "replies": ["看购物车"]}]}, allow_unicode=True
        )
    )
    env = {
        "ORCH_REDIS__URL": redis_url,
        "ORCH_ADMIN__TOKEN": ADMIN,
        "ORCH_SCHEDULING__ROOMS_FILE": str(rooms),
        "ORCH_INTERACTION__POLICY_FILE": str(policy),
        "ORCH_CALLBACKS__JOURNAL_PATH": str(tmp_path / "journal.jsonl"),
        "ORCH_METASTUDIO__CALLBACK_PROFILES__DEFAULT__PUBLIC_URL": "https://live.example.com/callbacks/metastudio/live-events",
        "ORCH_METASTUDIO__CALLBACK_PROFILES__DEFAULT__KEYS": '["k1"]',
    }
    with Daemon(env=env) as first:
        _until(lambda: _name(first) == "from the file")
        _api(first, "PUT", f"/api/rooms/{ROOM}", _room("changed through the API"))
        first.terminate()
        first.wait()
    with Daemon(env=env) as second:
        time.sleep(1.0)
        assert _name(second) == "changed through the API"  # the file's unchanged definition did not revert it
        assert "the API's definition stays" in second.output()
        # An invalid rooms file: refused, said, nothing changes, the daemon lives.
        rooms.write_text(yaml.safe_dump({"rooms": [{**_room("broken"), "callback_profile": "typo"}]}))
        assert second.proc is not None
        second.proc.send_signal(signal.SIGHUP)
        _until(lambda: "reload refused" in second.output())
        assert "rooms[0].callback_profile" in second.output()
        assert second.proc.poll() is None and _name(second) == "changed through the API"
        # The operator edits the file's definition: that is the newer intent, and SIGHUP applies it.
        rooms.write_text(yaml.safe_dump({"rooms": [_room("edited in the file")]}))
        second.proc.send_signal(signal.SIGHUP)
        _until(lambda: _name(second) == "edited in the file")
        # The policy: an invalid one is refused, a valid one swapped in.
        policy.write_text("rules: [{patterns: 3}]\n")
        second.proc.send_signal(signal.SIGHUP)
        _until(lambda: second.output().count("reload refused") == 2)
        policy.write_text(
            yaml.safe_dump(
                {"rules": [{"name": "ship", "patterns": ["发货"], "replies": ["48小时内"]}]},
                allow_unicode=True,
            )
        )
        second.proc.send_signal(signal.SIGHUP)
        _until(lambda: '"policy":true' in second.output().replace(" ", ""))
        assert second.proc.poll() is None
        assert "Traceback" not in second.output()
