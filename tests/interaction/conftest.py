"""A live room: the daemon (in-process, real Redis) runs a job on the MetaStudio sandbox, with audience
settings chosen per test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import yaml

from orchestrator.appkeys import AUDIENCE, REDIS
from orchestrator.interaction.audience import AudienceService
from orchestrator.sandbox.metastudio.app import MetaStudioSandbox, SandboxConfig, demo_room, running_sandbox
from tests.scheduling.conftest import AK, PROJECT, ROOM, SK, Daemon, daemon_for, managed_room, until
from tests.support.redis_server import free_port

CALLBACK_TOKEN = "interaction-token-0123456789"

POLICY = {
    "rules": [
        {"name": "shipping", "patterns": ["发货"], "replies": ["{user}，今天下单明天发货。"]},
        {"name": "size", "patterns": ["尺码", "size"], "replies": ["{user}，尺码表在商品详情里。"]},
    ],
    "faq": [{"question": "有优惠券吗", "answer": "关注主播就能领优惠券。"}],
    "per_user_interval_s": 0,
    "per_room_per_minute": 1000,
    "per_room_burst": 1000,
    "dedup_window_s": 0,
    "forbidden_words": ["傻瓜"],
}


def comment(text: str, user: str = "u1", **extra: Any) -> dict[str, Any]:
    return {"type": "comment", "user": {"userId": user, "name": f"name-{user}"}, "text": text, **extra}


@asynccontextmanager
async def live_room(
    make_settings: Any,
    tmp_path: Path,
    *,
    speed: float = 20,
    policy: dict[str, Any] | None = None,
    sandbox: tuple[MetaStudioSandbox, str] | None = None,
    owner: bool = True,
    callback_token: str = CALLBACK_TOKEN,
    **interaction: Any,
) -> AsyncIterator[tuple[Daemon, MetaStudioSandbox, str]]:
    """A daemon whose room ``demo-room`` is live (always-on schedule) on a sandbox; yields the daemon, the
    sandbox and the job id."""
    policy_file = tmp_path / f"policy-{free_port()}.yaml"
    policy_file.write_text(yaml.safe_dump(policy if policy is not None else POLICY, allow_unicode=True))
    settings = {
        "policy_file": str(policy_file),
        "lease_ttl_s": 1.5,
        **interaction,
    }
    if sandbox is None:
        async with running_sandbox(SandboxConfig(AK, SK, PROJECT, speed=speed)) as (box, url):
            box.world.add_room(demo_room())
            async with _daemon(make_settings, tmp_path, box, url, settings, owner, callback_token) as (
                daemon,
                job_id,
            ):
                yield daemon, box, job_id
    else:
        box, url = sandbox
        async with _daemon(make_settings, tmp_path, box, url, settings, owner, callback_token) as (
            daemon,
            job_id,
        ):
            yield daemon, box, job_id


@asynccontextmanager
async def _daemon(
    make_settings: Any,
    tmp_path: Path,
    box: MetaStudioSandbox,
    url: str,
    interaction: dict[str, Any],
    owner: bool,
    callback_token: str,
) -> AsyncIterator[tuple[Daemon, str]]:
    port = free_port()
    async with daemon_for(
        make_settings,
        tmp_path,
        url,
        interaction=interaction,
        port=port,
        metastudio={"interaction_token": callback_token},
    ) as daemon:
        room = managed_room(
            [{"kind": "always"}],
            template={
                "output_urls": ["rtmp://push.example/live"],
                "stream_keys": ["sched-stream-key"],
                "interaction_callback_url": f"http://127.0.0.1:{port}/callbacks/metastudio/interaction/"
                f"{CALLBACK_TOKEN}",
            },
        )
        await daemon.configs.put(room)
        await daemon.reconciler.reconcile_all()

        async def processing() -> bool:
            state = await daemon.store.state(ROOM) or {}
            job = box.world.jobs.get(state.get("job_id", ""))
            live = job is not None and job.state.value == "PROCESSING"
            return live and (not owner or ROOM in audience(daemon).workers)

        await until(processing, 20)
        state = await daemon.store.state(ROOM) or {}
        yield daemon, state["job_id"]


def audience(daemon: Daemon) -> AudienceService:
    return daemon.app[AUDIENCE]


async def ingest(daemon: Daemon, events: list[dict[str, Any]]) -> dict[str, Any]:
    status, body = await daemon.api("POST", f"/api/rooms/{ROOM}/events", {"events": events})
    assert status == 200, body
    assert isinstance(body, dict)
    return body


def redis_of(daemon: Daemon) -> Any:
    return daemon.app[REDIS]


__all__ = ["ROOM", "comment", "live_room", "until"]
