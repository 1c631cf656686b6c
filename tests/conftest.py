"""One embedded Redis per test session, flushed before each test that asks for it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from memory_tiers import EmbeddedRedis, Settings


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    """The session's search-enabled Redis; the suite fails loudly if it cannot start."""
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture
def redis_client(redis_server: EmbeddedRedis) -> Iterator[redis.Redis]:
    """A client on a freshly flushed server (keys and indexes gone)."""
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def settings(redis_server: EmbeddedRedis, redis_client: redis.Redis) -> Settings:
    """Settings pointing at the flushed session server."""
    return Settings(redis_url=redis_server.url)
