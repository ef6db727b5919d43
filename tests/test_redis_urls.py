"""``redis.url`` names one Redis, a Sentinel-watched master or a Cluster; ``redis.wait_replicas`` makes an
acknowledgement wait for replicas (here a Redis with none: every write is refused as not replicated, and
nothing acknowledged is lost)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from pydantic import ValidationError

from orchestrator.app import create_app
from orchestrator.appkeys import ROOM_STORE
from orchestrator.settings import RedisSettings, RedisTarget, parse_redis_url, redacted_url
from orchestrator.store import keys
from orchestrator.store.redis import NotReplicated, is_cluster
from orchestrator.store.rooms import RoomStore
from tests.support.server import serving

NO_REPLICAS = "the test cluster's masters have replicas: refusing a write needs a Redis without any"


def test_sentinel_url_with_passwords_tls_and_defaults() -> None:
    target = parse_redis_url(
        "rediss+sentinel://app:s%40cret@h1,h2:26380,[::1]:26381/mymaster/2"
        "?sentinel_password=sp&sentinel_username=watch&ssl_ca_certs=/etc/ca.pem"
    )
    assert target == RedisTarget(
        "sentinel",
        target.url,
        hosts=(("h1", 26379), ("h2", 26380), ("::1", 26381)),
        service="mymaster",
        db=2,
        username="app",
        password="s@cret",
        sentinel_username="watch",
        sentinel_password="sp",
        ssl=True,
        ssl_ca_certs="/etc/ca.pem",
    )
    plain = parse_redis_url("redis+sentinel://10.0.0.1/cache")
    assert (plain.hosts, plain.service, plain.db, plain.password, plain.ssl) == (
        (("10.0.0.1", 26379),),
        "cache",
        0,
        None,
        False,
    )


def test_cluster_and_standalone_urls() -> None:
    cluster = parse_redis_url("redis+cluster://:pw@n1:7000,n2:7001")
    assert (cluster.mode, cluster.hosts, cluster.password) == ("cluster", (("n1", 7000), ("n2", 7001)), "pw")
    assert parse_redis_url("redis+cluster://n1/0").hosts == (("n1", 6379),)
    for url in ("redis://127.0.0.1:6379/0", "rediss://h:6380", "unix:///run/redis.sock"):
        assert parse_redis_url(url) == RedisTarget("standalone", url)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://h:6379", "unknown scheme 'http'"),
        ("127.0.0.1:6379", "must be a URL"),
        ("redis+sentinel://h1,h2", "names the master after the hosts"),
        ("redis+sentinel://h1/m/x", "database number"),
        ("redis+sentinel://h1,,h2/m", "empty host"),
        ("redis+sentinel://h1:99999/m", "bad port"),
        ("redis+sentinel://h1/m?sentinel_pasword=x", "unknown option 'sentinel_pasword'"),
        ("redis+cluster://n1/3", "database 0 only"),
    ],
)
def test_a_bad_url_is_refused_at_load_saying_why(url: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        RedisSettings.model_validate({"url": url})


def test_passwords_are_masked_wherever_the_url_is_shown() -> None:
    shown = redacted_url("redis+sentinel://app:pw1@h1,h2/m/0?sentinel_password=pw2&ssl_ca_certs=/ca")
    assert "pw1" not in shown and "pw2" not in shown
    assert shown == "redis+sentinel://app:***@h1,h2/m/0?sentinel_password=***&ssl_ca_certs=/ca"


async def test_a_write_no_replica_confirms_is_not_acknowledged(redis_client: aioredis.Redis) -> None:
    if is_cluster(redis_client):
        pytest.skip(NO_REPLICAS)
    store = RoomStore(redis_client, wait_replicas=1, wait_timeout_ms=20)
    await store.register_room("wait-room")
    with pytest.raises(NotReplicated, match="0 of 1 Redis replicas"):
        await store.ingest("wait-room", [{"type": 3, "timestamp": 1, "content": {"user": {"userId": "u"}}}])
    assert await redis_client.xlen(keys.room_ingest("wait-room")) == 1  # on the master, not acknowledged
    event = {"type": 3, "timestamp": 2, "content": {"user": {"userId": "u"}}}
    assert (await RoomStore(redis_client).ingest("wait-room", [event])).written == 1  # no wait: as before


async def test_with_wait_replicas_a_bridge_is_asked_again_and_a_callback_is_journaled(
    make_settings: Any, redis_url: str, tmp_path: Path
) -> None:
    """A Redis without replicas cannot confirm: the bridge gets 503 NOT_REPLICATED with Retry-After (its
    events were written: a resend with the same message ids is taken once), the vendor's callback is
    journaled (200) and replayed later -- nothing acknowledged rests on the master alone."""
    if redis_url.startswith("redis+cluster"):
        pytest.skip(NO_REPLICAS)
    journal = tmp_path / "j.jsonl"
    settings = make_settings(
        admin={"token": "wait-token"},
        callbacks={"journal_path": str(journal)},
        redis={"wait_replicas": 1, "wait_timeout_ms": 20},
        metastudio={
            "callback_profiles": {
                "default": {
                    "public_url": "http://127.0.0.1/callbacks/metastudio/live-events",
                    "auth_type": "NONE",
                }
            }
        },
    )
    app = create_app(settings)
    headers = {"Authorization": "Bearer wait-token"}
    async with serving(app, settings) as url, aiohttp.ClientSession(headers=headers) as http:
        await app[ROOM_STORE].register_room("wait-room")
        await app[ROOM_STORE].set_current_job("wait-room", "job-1")
        comment = {"type": "comment", "user": {"userId": "u1"}, "text": "多少钱", "message_id": "m1"}
        async with http.post(f"{url}/api/rooms/wait-room/events", json={"events": [comment]}) as resp:
            body = await resp.json()
            assert (resp.status, body["error_code"], resp.headers["Retry-After"]) == (
                503,
                "NOT_REPLICATED",
                "1",
            )
            assert "redis.wait_replicas" in body["error_msg"]
        callback = {
            "event_type": "SHOOT_SCRIPT_SWITCH",
            "message": json.dumps({"room_id": "wait-room", "job_id": "job-1"}),
        }
        async with http.post(f"{url}/callbacks/metastudio/live-events", json=callback) as resp:
            assert resp.status == 200
        assert "SHOOT_SCRIPT_SWITCH" in journal.read_text()
