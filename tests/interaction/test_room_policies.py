"""Per-room reply policies (issue 16, point 1): named policies in Redis, versioned and validated, chosen by
rooms (several rooms of a brand share one), edited live -- and one room's answers never come from another
room's policy. Against the SoftSugar sandbox and a real Redis (the desk is vendor-neutral)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.appkeys import AUDIENCE, REDIS
from orchestrator.interaction.policy import PolicyConfig
from orchestrator.store import keys
from orchestrator.store.policies import KEEP_VERSIONS, PolicyStore
from tests.scheduling.conftest import ADMIN, Daemon, until
from tests.softsugar.test_e2e import _true, softsugar_daemon, softsugar_room

LIPSTICK = {
    "faq": [{"question": "能保温吗", "answer": "口红不是杯子哦，它主打十二小时不掉色。"}],
    "rules": [{"name": "price", "patterns": ["多少钱"], "replies": ["{user}，这支口红今天九十九元。"]}],
    "per_user_interval_s": 0,
    "dedup_window_s": 0,
    "per_room_per_minute": 1000,
    "per_room_burst": 1000,
}
THERMOS = {
    "faq": [{"question": "能保温吗", "answer": "这款商品能保温十二小时。"}],
    "rules": [{"name": "price", "patterns": ["多少钱"], "replies": ["{user}，保温杯今天六十九元。"]}],
    "per_user_interval_s": 0,
    "dedup_window_s": 0,
    "per_room_per_minute": 1000,
    "per_room_burst": 1000,
}


async def _said(daemon: Daemon, box: Any, room_id: str) -> list[str]:
    state = await daemon.store.state(room_id) or {}
    session = box.world.sessions.get(state.get("job_id", ""))
    return [] if session is None else [i.text for i in [*session.played, *session.queue]]


async def _comment(daemon: Daemon, room_id: str, text: str, user: str) -> None:
    status, body = await daemon.api(
        "POST",
        f"/api/rooms/{room_id}/events",
        {"events": [{"type": "comment", "user": {"userId": user, "name": user}, "text": text}]},
    )
    assert status == 200, body


async def _answered(daemon: Daemon, box: Any, room_id: str, wanted: str, timeout_s: float = 10) -> None:
    async def said() -> bool:
        return any(wanted in text for text in await _said(daemon, box, room_id))

    await until(said, timeout_s)


async def test_two_brands_rooms_answer_by_their_own_policies_edited_live(
    make_settings: Any, tmp_path: Path
) -> None:
    """The lipstick room answered with the thermos cup's FAQ because one policy served every room: now each
    room names its brand's policy, overlapping questions get each brand's answer, an edit takes effect
    within seconds without a restart, an earlier version can be restored, and a room naming no policy
    keeps the default (file) policy."""
    async with softsugar_daemon(make_settings, tmp_path) as (daemon, box):
        assert (await daemon.api("PUT", "/api/policies/lipstick", LIPSTICK))[1]["version"] == 1
        assert (await daemon.api("PUT", "/api/policies/thermos", THERMOS))[1]["version"] == 1
        await daemon.configs.put(softsugar_room([{"kind": "always"}], room_id="lip-1", policy="lipstick"))
        await daemon.configs.put(softsugar_room([{"kind": "always"}], room_id="lip-2", policy="lipstick"))
        await daemon.configs.put(softsugar_room([{"kind": "always"}], room_id="cup-1", policy="thermos"))
        await daemon.configs.put(softsugar_room([{"kind": "always"}], room_id="plain"))
        workers = daemon.app[AUDIENCE].workers
        await until(lambda: _true({"lip-1", "lip-2", "cup-1", "plain"} <= set(workers)), 20)

        for room_id in ("lip-1", "lip-2", "cup-1", "plain"):
            await _comment(daemon, room_id, "这个能保温吗？", f"{room_id}-viewer")
            await _comment(daemon, room_id, "这个多少钱？", f"{room_id}-buyer")
        await _answered(daemon, box, "lip-1", "十二小时不掉色")
        await _answered(daemon, box, "lip-2", "十二小时不掉色")
        await _answered(daemon, box, "cup-1", "能保温十二小时")
        await _answered(daemon, box, "lip-1", "口红今天九十九元")
        await _answered(daemon, box, "cup-1", "保温杯今天六十九元")
        await _answered(daemon, box, "plain", "价格在购物车里")  # the file's policy
        lip = " ".join(await _said(daemon, box, "lip-1")) + " ".join(await _said(daemon, box, "lip-2"))
        cup = " ".join(await _said(daemon, box, "cup-1"))
        plain = " ".join(await _said(daemon, box, "plain"))
        assert "保温杯" not in lip and "能保温十二小时" not in lip  # nothing of the other brand
        assert "口红" not in cup and "口红" not in plain and "保温杯" not in plain

        listed = (await daemon.api("GET", "/api/policies"))[1]["policies"]
        assert {p["name"]: p["rooms"] for p in listed} == {
            "lipstick": ["lip-1", "lip-2"],
            "thermos": ["cup-1"],
        }

        # Edited live: the next answer is the new one, within seconds, on the owner (no restart).
        edited = {
            **LIPSTICK,
            "rules": [{"name": "price", "patterns": ["多少钱"], "replies": ["{user}，限时八十九元！"]}],
        }
        status, saved = await daemon.api("PUT", "/api/policies/lipstick?note=price%20cut", edited)
        assert (status, saved["version"]) == (200, 2)
        await asyncio.sleep(0.3)
        await _comment(daemon, "lip-1", "现在多少钱？", "lip-1-second")
        await _answered(daemon, box, "lip-1", "限时八十九元", timeout_s=5)
        versions = (await daemon.api("GET", "/api/policies/lipstick/versions"))[1]
        assert [(v["version"], v["note"]) for v in versions["versions"]] == [(2, "price cut"), (1, "")]
        # Restored: version 1's text again, as version 3.
        status, restored = await daemon.api("POST", "/api/policies/lipstick/restore", {"version": 1})
        assert (status, restored["version"], restored["restored"]) == (200, 3, 1)
        await asyncio.sleep(0.3)
        await _comment(daemon, "lip-1", "到底多少钱？", "lip-1-third")

        async def restored_said() -> bool:
            return (await _said(daemon, box, "lip-1")).count("lip-1-third，这支口红今天九十九元。") == 1

        await until(restored_said, 5)


async def test_a_policy_change_reaches_another_replica_without_a_message(
    make_settings: Any, tmp_path: Path
) -> None:
    """Pub/sub is at most once: a replica that missed the ``policy_changed`` message still takes the new
    version within seconds (it compares versions). Written straight to Redis here -- no message at all."""
    async with softsugar_daemon(make_settings, tmp_path) as (daemon, box):
        await daemon.api("PUT", "/api/policies/lipstick", LIPSTICK)
        await daemon.configs.put(softsugar_room([{"kind": "always"}], room_id="lip-1", policy="lipstick"))
        workers = daemon.app[AUDIENCE].workers
        await until(lambda: _true("lip-1" in workers), 20)
        book = daemon.app[AUDIENCE].desk.book
        store = daemon.app[AUDIENCE].policies
        changed = {**LIPSTICK, "rules": [{"name": "price", "patterns": ["多少钱"], "replies": ["新价格！"]}]}
        await store.save(
            "lipstick", PolicyConfig.model_validate(changed).model_dump(mode="json")
        )  # no message
        await until(lambda: _true(book.version_of("lipstick") == 2), 5)
        await _comment(daemon, "lip-1", "多少钱？", "viewer")
        await _answered(daemon, box, "lip-1", "新价格")


async def test_policies_are_validated_and_a_missing_one_silences_its_room_only(
    make_settings: Any, tmp_path: Path
) -> None:
    """A policy is validated before it is written (422 naming every bad field; nothing saved); a room
    cannot be given a policy that does not exist (422 on its ``policy`` field); a room whose policy is gone
    answers nothing -- not the default's or another room's answers; a policy in use cannot be deleted."""
    async with softsugar_daemon(make_settings, tmp_path) as (daemon, box):
        await daemon.api("PUT", "/api/policies/lipstick", LIPSTICK)
        bad = {
            **LIPSTICK,
            "faq_threshold": 5,
            "rules": [{"name": "x", "patterns": [], "replies": ["y"]}],
            "colour": 1,
        }
        status, body = await daemon.api("PUT", "/api/policies/lipstick", bad)
        assert (status, body["error_code"]) == (422, "POLICY_INVALID")
        assert {e["field"] for e in body["errors"]} == {"rules.0.patterns", "faq_threshold", "colour"}
        assert (await daemon.api("GET", "/api/policies/lipstick"))[1]["version"] == 1  # nothing saved
        assert (await daemon.api("PUT", "/api/policies/-bad", LIPSTICK))[1]["error_code"] == "BAD_POLICY_NAME"
        status, body = await daemon.api("GET", "/api/policies/nope")
        assert (status, body["error_code"]) == (404, "POLICY_NOT_FOUND")
        status, body = await daemon.api("GET", "/api/policies/lipstick?version=7")
        assert (status, body["error_code"]) == (404, "POLICY_VERSION_NOT_FOUND")

        room = softsugar_room([{"kind": "always"}], room_id="lip-1", policy="nope").model_dump(mode="json")
        status, body = await daemon.api("PUT", "/api/rooms/lip-1", room)
        assert (status, body["error_code"]) == (422, "ROOM_INVALID")
        assert [e["field"] for e in body["errors"]] == ["policy"]

        await daemon.configs.put(softsugar_room([{"kind": "always"}], room_id="lip-1", policy="lipstick"))
        workers = daemon.app[AUDIENCE].workers
        await until(lambda: _true("lip-1" in workers), 20)
        status, body = await daemon.api("DELETE", "/api/policies/lipstick")
        assert (status, body["error_code"]) == (409, "POLICY_IN_USE")
        # Gone behind the API's back (a hand-made DEL): the room falls silent, it does not borrow answers.
        await daemon.app[REDIS].delete(keys.policy("lipstick"))
        book = daemon.app[AUDIENCE].desk.book
        await until(lambda: _true(book.version_of("lipstick") is None), 5)
        await _comment(daemon, "lip-1", "多少钱？", "viewer")
        await asyncio.sleep(1.0)
        assert await _said(daemon, box, "lip-1") == []
        events = await daemon.store.events("lip-1", limit=100)
        assert not [e for e in events if e["kind"] == "reply_queued"]


async def test_the_store_keeps_the_newest_versions(redis_client: Any) -> None:
    store = PolicyStore(redis_client)
    for i in range(KEEP_VERSIONS + 5):
        await store.save(
            "brand", PolicyConfig(per_room_burst=i + 1).model_dump(mode="json"), note=f"v{i + 1}"
        )
    versions = await store.versions("brand")
    assert [v.version for v in versions] == list(range(KEEP_VERSIONS + 5, 5, -1))
    assert (await store.get("brand", 6)) is not None and (await store.get("brand", 5)) is None
    current = await store.get("brand")
    assert current is not None and current.policy["per_room_burst"] == KEEP_VERSIONS + 5
    await redis_client.hset(keys.policy("brand"), str(KEEP_VERSIONS + 5), b"{not json")
    with pytest.raises(ValueError, match="not a valid policy"):
        await store.get("brand")


async def _cli(*args: str, api: str) -> tuple[int, str, str]:
    env = {**os.environ, "ORCH_API_URL": api, "ORCH_ADMIN__TOKEN": ADMIN}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "orchestrator", "policies", *args, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()


async def test_the_cli_saves_lists_shows_and_restores(make_settings: Any, tmp_path: Path) -> None:
    """``orchestrator policies``: an invalid file is refused here, field by field (exit 2, the daemon not
    called); a valid one is saved as a new version; list, versions, show and restore go through the API."""
    async with softsugar_daemon(make_settings, tmp_path) as (daemon, _):
        bad = tmp_path / "bad.yaml"
        bad.write_text(yaml.safe_dump({"faq_threshold": 3, "rules": [{"name": "r"}]}))
        code, _, err = await _cli("save", "thermos", str(bad), api=daemon.url)
        assert code == 2 and "faq_threshold" in err and "rules.0.patterns" in err
        good = tmp_path / "thermos.yaml"
        good.write_text(yaml.safe_dump(THERMOS, allow_unicode=True))
        assert (await _cli("save", "thermos", str(good), api=daemon.url))[0] == 0
        assert (await _cli("save", "thermos", str(good), "--note", "again", api=daemon.url))[0] == 0
        code, out, _ = await _cli("list", api=daemon.url)
        assert code == 0 and '"version": 2' in out
        code, out, _ = await _cli("versions", "thermos", api=daemon.url)
        assert code == 0 and '"again"' in out
        code, out, _ = await _cli("restore", "thermos", "1", api=daemon.url)
        assert code == 0 and '"version": 3' in out
        code, out, _ = await _cli("show", "thermos", "--version", "1", api=daemon.url)
        assert code == 0 and "能保温十二小时" in out
        code, _, err = await _cli("show", "nope", api=daemon.url)
        assert code == 1 and "POLICY_NOT_FOUND" in err
