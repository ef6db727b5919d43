"""Session-wide fixtures: a real Redis (private, or REDIS_URL), flushed before each test that uses it.

``ORCH_TEST_REDIS=cluster`` runs the tests against a private Redis Cluster instead (3 masters, 3 replicas,
on loopback): ``tests/test_redis_cluster.py`` runs a representative set of the suite that way."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from orchestrator.settings import RedisSettings, Settings, load_settings
from orchestrator.store.redis import create_redis
from tests.support.redis_server import ClusterDeployment, ExternalRedis, RedisServer


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer | ExternalRedis | ClusterDeployment]:
    url = os.environ.get("REDIS_URL")
    server: RedisServer | ExternalRedis | ClusterDeployment
    if os.environ.get("ORCH_TEST_REDIS") == "cluster":
        server = ClusterDeployment()
    else:
        server = ExternalRedis(url) if url else RedisServer()
    server.start()
    yield server
    server.close()


@pytest.fixture
def controllable_redis(redis_server: RedisServer | ExternalRedis | ClusterDeployment) -> RedisServer:
    """The private Redis, for tests that stop and restart it."""
    if isinstance(redis_server, ClusterDeployment):
        pytest.skip(
            "ORCH_TEST_REDIS=cluster: outages of a cluster have their own test (test_redis_cluster.py)"
        )
    if not isinstance(redis_server, RedisServer):
        pytest.skip("REDIS_URL is set: cannot stop someone else's Redis; unset it to run outage tests")
    return redis_server


@pytest.fixture
def redis_url(redis_server: RedisServer | ExternalRedis | ClusterDeployment) -> Iterator[str]:
    if isinstance(redis_server, ClusterDeployment):
        redis_server.flush()
        yield redis_server.url
        return
    redis_server.start()  # a previous test may have stopped it
    with redis.Redis.from_url(redis_server.url) as client:
        client.flushall()
    yield redis_server.url
    redis_server.start()


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A client of the test Redis as the daemon makes one (a cluster client under ORCH_TEST_REDIS=cluster)."""
    client = create_redis(RedisSettings.model_validate({"url": redis_url}))
    yield client
    await client.aclose()


@pytest.fixture
def make_settings(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Build Settings as the daemon would, with the test Redis and no ORCH_* leaking from the shell."""
    for name in list(os.environ):
        if name.startswith("ORCH_"):
            monkeypatch.delenv(name)

    def make(**overrides: Any) -> Settings:
        overrides.setdefault("redis", {}).setdefault("url", redis_url)
        return load_settings(None, **overrides)

    return make
