"""Redis Sentinel: the daemon follows a failover of its Redis master and loses nothing it acknowledged.

A real deployment on loopback -- a master, a replica and three sentinels (quorum 2) -- holds the state of a
daemon whose room is live on the MetaStudio sandbox. Callbacks and audience events arrive at a steady rate
(repeated until a 2xx, as a vendor and a bridge do); the master is SIGKILLed in the middle. With
``redis.wait_replicas = 1`` every acknowledged callback and event was on the replica before its 2xx, so the
promoted replica has them all; the daemon's next connections go to it, replies are still decided and said,
and the scheduler still restarts a failed job.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from orchestrator.providers.metastudio.callbacks import mss_a_url
from orchestrator.settings import RedisSettings
from orchestrator.store import keys
from orchestrator.store.redis import create_redis
from tests.interaction.conftest import POLICY, ROOM, audience, comment, live_room, until
from tests.support.redis_server import SentinelDeployment

pytestmark = pytest.mark.slow

CALLBACK_KEY = "sched-callback-key"  # the live room's callback profile (tests/scheduling/conftest.py)


async def test_the_daemon_follows_a_sentinel_failover_and_loses_nothing_acknowledged(
    make_settings: Any, tmp_path: Path
) -> None:
    deployment = SentinelDeployment(replicas=2).start()

    def settings(**sections: Any) -> Any:
        sections["redis"] = {"url": deployment.url, "wait_replicas": 1, "wait_timeout_ms": 500}
        return make_settings(**sections)

    try:
        async with live_room(
            settings,
            tmp_path,
            report_window_ms=100,
            reply_in_flight=2,
            reply_max_pending=100,  # the failover's backlog is answered, not dropped as stale
            policy={**POLICY, "dedup_window_s": 0},
        ) as (
            daemon,
            box,
            job_id,
        ):
            callback_url = f"{daemon.url}/callbacks/metastudio/live-events"
            events_acked: set[int] = set()
            callbacks_acked: set[int] = set()
            first_ack_after_kill: list[float] = []
            killed_at = 0.0
            base_ms = int(time.time() * 1000)

            def acked_after_kill() -> None:
                if killed_at and not first_ack_after_kill:
                    first_ack_after_kill.append(time.monotonic())

            async def send_event(http: aiohttp.ClientSession, n: int) -> None:
                # A bridge: the same event (same message id) again until a 2xx.
                text = f"什么时候发货 #{n}" if n % 4 == 0 else f"好看 #{n}"
                body = {"events": [comment(text, user=f"v{n}", message_id=f"m{n}")]}
                while True:
                    status, _ = await daemon.api("POST", f"/api/rooms/{ROOM}/events", body)
                    if status == 200:
                        events_acked.add(n)
                        acked_after_kill()
                        return
                    assert status == 503, status
                    await asyncio.sleep(0.2)

            async def send_callback(http: aiohttp.ClientSession, n: int) -> None:
                # A vendor: the same signed callback again until a 2xx.
                signed = mss_a_url(callback_url, CALLBACK_KEY, base_ms + n)
                body = {"event_type": f"HA_{n}", "message": json.dumps({"room_id": ROOM, "job_id": job_id})}
                while True:
                    async with http.post(signed, json=body) as resp:
                        if resp.status == 200:
                            callbacks_acked.add(n)
                            return
                    await asyncio.sleep(0.2)

            async with aiohttp.ClientSession() as http:
                senders: list[asyncio.Task[None]] = []
                started = time.monotonic()
                for n in range(300):  # 15 s at 20 a second, each kind
                    senders.append(asyncio.create_task(send_event(http, n)))
                    senders.append(asyncio.create_task(send_callback(http, n)))
                    if n == 60:
                        old_master = deployment.master_port()
                        deployment.master.kill()
                        killed_at = time.monotonic()
                    await asyncio.sleep(max(0.0, started + (n + 1) * 0.05 - time.monotonic()))
                async with asyncio.timeout(60):
                    await asyncio.gather(*senders)

            # Sentinel promoted the replica, and the daemon works against it.
            promoted = deployment.master_port()
            assert promoted != old_master
            assert promoted in {r.port for r in deployment.replicas}
            outage_s = first_ack_after_kill[0] - killed_at
            assert outage_s < 10, outage_s  # down-after 1 s, the election, the daemon's next connection

            client = create_redis(RedisSettings.model_validate({"url": deployment.url}))
            try:
                # Every acknowledged callback was applied, once.
                async def callbacks_applied() -> bool:
                    entries = await client.xrange(keys.room_events(ROOM), count=100_000)
                    outcomes = Counter(
                        e[b"event_type"].decode()
                        for _, e in entries
                        if e.get(b"kind") == b"callback" and e[b"event_type"].startswith(b"HA_")
                        and e.get(b"outcome") != b"duplicate"
                    )  # fmt: skip
                    assert all(count == 1 for count in outcomes.values()), outcomes.most_common(3)
                    return {f"HA_{n}" for n in callbacks_acked} <= set(outcomes)

                await until(callbacks_applied, 30)  # the journal's part is replayed once Redis answers

                # Every acknowledged event reached the vendor, once.
                job = box.world.jobs[job_id]

                async def events_reported() -> bool:
                    texts = Counter(
                        json.loads(e["content"]).get("content", "") for e in job.reported if e["type"] == 1
                    )
                    assert all(count == 1 for count in texts.values()), texts.most_common(3)
                    return all(
                        (f"什么时候发货 #{n}" if n % 4 == 0 else f"好看 #{n}") in texts for n in events_acked
                    )

                await until(events_reported, 30)
                assert len(events_acked) == 300 and len(callbacks_acked) == 300

                # Replies were decided and said after the failover too: one per shipping question.
                async def replied() -> bool:
                    said = [i for i in job.inserts if "明天发货" in i.text]
                    return len(said) == 75 and not await audience(daemon).queue.pending(ROOM)

                await until(replied, 30)

                # The scheduler still acts: a failed job is replaced.
                box.world.fail(job, "MSS.45000010", "RTMP stream push failed.")

                async def restarted() -> bool:
                    state = await daemon.store.state(ROOM) or {}
                    new = box.world.jobs.get(state.get("job_id", ""))
                    return new is not None and new.job_id != job_id and new.state.value == "PROCESSING"

                await until(restarted, 30)
            finally:
                await client.aclose()
    finally:
        deployment.close()
