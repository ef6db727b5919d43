"""End to end: the MetaStudio sandbox calls the daemon's receiver, signed NONE / MSS_A / MSS_A_HEAD, for a job
started by our client with the callback config the daemon generates; the room state in Redis follows."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from orchestrator.app import create_app
from orchestrator.appkeys import REACTIONS, ROOM_STORE, SETTINGS
from orchestrator.providers.metastudio.client import AkSkCredentials, MetaStudioClient
from orchestrator.providers.metastudio.models import (
    Command,
    PlayPolicy,
    PlayTextInfo,
    StartJobRequest,
    TextConfig,
)
from orchestrator.providers.metastudio.profiles import live_event_callback_config, resolve_profile
from orchestrator.sandbox.metastudio.app import SandboxConfig, demo_room, running_sandbox
from tests.callbacks.conftest import Daemon, settings_for
from tests.support.redis_server import free_port
from tests.support.server import serving

AK, SK, PROJECT = "E2EAK", "e2e-sk", "e2e-project"
ROOM = "demo-room"


async def _until(check: Callable[[], Awaitable[bool]], timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not await check():
            await asyncio.sleep(0.05)


@pytest.mark.parametrize("profile", ["none", "default", "head"])  # NONE, MSS_A, MSS_A_HEAD
async def test_sandbox_callbacks_drive_room_state(make_settings: Any, tmp_path: Path, profile: str) -> None:
    port = free_port()
    settings = settings_for(make_settings, port, tmp_path / "journal.jsonl")
    app = create_app(settings)
    async with (
        serving(app, settings, port=port) as url,
        running_sandbox(SandboxConfig(AK, SK, PROJECT, speed=10)) as (sandbox, sandbox_url),
        aiohttp.ClientSession() as http,
    ):
        sandbox.world.add_room(demo_room())
        daemon = Daemon(url, http, app[ROOM_STORE], app[REACTIONS], tmp_path)
        client = MetaStudioClient(http, base_url=sandbox_url, credentials=AkSkCredentials(AK, SK, PROJECT))
        await daemon.store.register_room(ROOM)
        callback_config = live_event_callback_config(resolve_profile(app[SETTINGS], profile))
        started = await client.start_job(
            ROOM,
            StartJobRequest(
                output_urls=["rtmp://push.example/live"],
                stream_keys=["stream-key-e2e"],
                play_policy=PlayPolicy(repeat_count=-1),
                live_event_callback_config=callback_config,
            ),
        )
        await daemon.store.set_current_job(ROOM, started.job_id)
        job = sandbox.world.jobs[started.job_id]

        async def state() -> dict[str, Any]:
            return await daemon.room(ROOM)

        # Paragraphs advance; the link comes up.
        await _until(
            lambda: _has(
                state,
                lambda s: (
                    s.get("paragraph_seq") is not None
                    and s["rtmp"].get("rtmp://push.example/live", {}).get("state") == "CONNECTED"
                ),
            )
        )
        await _until(lambda: _has(state, lambda s: s.get("scene") == "Products"))  # a later scene, too
        # The link drops and comes back.
        async with daemon.reactions.subscribe() as reactions:
            for link_state in ("DISCONNECTED", "RECONNECTING", "CONNECTED"):
                await http.post(f"{sandbox_url}/_sandbox/jobs/{job.job_id}/rtmp", json={"state": link_state})
                await _until(
                    lambda ls=link_state: _has(
                        state, lambda s: s["rtmp"]["rtmp://push.example/live"]["state"] == ls
                    )
                )
            # A reply is inserted, played and finished.
            reply = await client.command(
                ROOM,
                job.job_id,
                Command.insert_play_script(
                    PlayTextInfo(text_config=TextConfig(text="感谢大家的支持" * 10), play_type="APPEND")
                ),
            )
            await daemon.store.add_reply(ROOM, reply.command_id or "")
            assert (await state())["replies_in_flight"] == [reply.command_id]
            async with asyncio.timeout(15):
                while (finished := await reactions.get())["kind"] != "reply_finished":
                    pass
        assert finished["reply_id"] == reply.command_id
        final = await state()
        assert final["replies_in_flight"] == []
        assert final["counters"]["REPLY_COMMAND_FINISH"] == 1
        # What Redis says matches what the sandbox is doing.
        await _until(
            lambda: _has(state, lambda s: (s["scene"], int(s["paragraph_seq"])) == (job.scene, job.paragraph))
        )
        deliveries = sandbox.world.sender.log
        assert deliveries and all(d.status == 200 for d in deliveries), [
            (d.event_type, d.status) for d in deliveries
        ]
        assert "stream-key-e2e" not in str(final)


async def _has(
    state: Callable[[], Awaitable[dict[str, Any]]], predicate: Callable[[dict[str, Any]], bool]
) -> bool:
    try:
        return predicate(await state())
    except (KeyError, TypeError):
        return False
