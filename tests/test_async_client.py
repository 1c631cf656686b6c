"""AsyncMemoryClient against the real Redis and a running daemon: it writes what MemoryClient
writes, and recalls what MemoryClient recalls."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import redis
from test_ingest import daemon, make_settings, running, wait_for

from memory_tiers import EmbeddingEngine, EntryError, Keys, StoreError
from memory_tiers.async_client import AsyncMemoryClient
from memory_tiers.client import MemoryClient
from memory_tiers.server import EmbeddedRedis, free_port

KEYS = Keys()


def states(n: int) -> list[dict[str, Any]]:
    return [
        {"health": 95 - 6 * i, "energy": 30 + 5 * i, "agent_type": "builder", "status": "active"}
        for i in range(n)
    ]


def stream_fields(client: redis.Redis, ids: list[str]) -> list[dict[bytes, bytes]]:
    entries = dict(client.xrange(KEYS.stream))
    return [entries[i.encode()] for i in ids]


def test_writes_are_the_sync_clients_entries(
    redis_server: EmbeddedRedis, redis_client: redis.Redis, model_path: Path
) -> None:
    settings = make_settings(redis_server.url, model_path)
    raw = redis.Redis.from_url(redis_server.url)
    sync = MemoryClient(raw, settings)
    items = [{"agent_id": "a-1", "state": s, "step": i} for i, s in enumerate(states(3))]

    async def write() -> tuple[str, list[str]]:
        async with AsyncMemoryClient.from_settings(settings) as memory:
            one = await memory.remember("a-1", {"health": 5}, step=7, ts=1000, importance=0.5)
            return one, await memory.remember_many(items)

    one, many = asyncio.run(write())
    sync_one = sync.remember("a-1", {"health": 5}, step=7, ts=1000, importance=0.5)
    sync_many = sync.remember_many(items)
    assert stream_fields(raw, [one, *many]) == stream_fields(raw, [sync_one, *sync_many])
    assert raw.xlen(KEYS.stream) == 8


def test_bad_items_and_a_dead_server_raise_the_sync_clients_errors(
    redis_server: EmbeddedRedis, redis_client: redis.Redis, model_path: Path
) -> None:
    async def write(url: str, items: list[dict[str, Any]]) -> list[str]:
        async with AsyncMemoryClient.from_settings(make_settings(url, model_path)) as memory:
            return await memory.remember_many(items)

    good = {"agent_id": "a-1", "state": {"health": 1}}
    with pytest.raises(EntryError, match="item 1: agent_id ' a' has leading or trailing"):
        asyncio.run(write(redis_server.url, [good, {"agent_id": " a", "state": {}}]))
    assert redis_client.exists(KEYS.stream) == 0  # checked before anything was written
    with pytest.raises(StoreError, match="pipelined XADD of 1 entries to mt:states failed"):
        asyncio.run(write(f"redis://127.0.0.1:{free_port()}/0", [good]))


def test_recall_is_memory_client_recall(
    redis_server: EmbeddedRedis,
    redis_client: redis.Redis,
    model_path: Path,
    engine: EmbeddingEngine,
) -> None:
    settings = make_settings(redis_server.url, model_path)
    query = {"health": 70, "energy": 50, "agent_type": "builder"}

    async def remember_then_recall() -> list[Any]:
        async with AsyncMemoryClient.from_settings(settings, engine) as memory:
            ids = await memory.remember_many(
                [{"agent_id": "a-1", "state": s, "step": i} for i, s in enumerate(states(8))]
            )
            stored = KEYS.time_index("stm")
            wait_for(lambda: redis_client.zcard(stored) == len(ids), 30, "8 memories stored")
            recalls = await asyncio.gather(
                memory.recall("a-1", query, k=4),
                memory.recall("a-1", query, k=2, tiers=("stm",), step_range=(3, 7)),
                memory.recall("a-1", query, k=8, where={"health": (None, 70)}, kinds=["state"]),
                memory.recall("a-1", query, k=8, kinds=["action"]),
            )
            rebuilt = await memory.reconstruct(recalls[0].merged[0])
            return [*recalls, rebuilt]

    with running(daemon(settings, engine, "async-test", consolidate=False)):
        full, narrow, unhealthy, actions, rebuilt = asyncio.run(remember_then_recall())
    sync = MemoryClient(redis.Redis.from_url(redis_server.url), settings, engine)
    expected = sync.recall("a-1", query, k=4)
    assert [(m.tier, m.hit.key, m.exact) for m in full.merged] == [
        (m.tier, m.hit.key, m.exact) for m in expected.merged
    ]
    assert [m.feature_distance for m in full.merged] == pytest.approx(
        [m.feature_distance for m in expected.merged], rel=1e-6
    )
    narrow_sync = sync.recall("a-1", query, k=2, tiers=("stm",), step_range=(3, 7))
    assert [h.key for h in narrow.by_tier["stm"]] == [h.key for h in narrow_sync.by_tier["stm"]]
    assert all(3 <= h.step <= 7 for h in narrow.by_tier["stm"])
    assert sorted(h.step for h in unhealthy.by_tier["stm"]) == [5, 6, 7]  # health 65, 59, 53
    assert len(actions) == 0
    assert rebuilt.state == sync.reconstruct(expected.merged[0]).state
