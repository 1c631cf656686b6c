"""Integrity under hostile input and failures: bounded numbers, truthful commits, owned writes,
self-healing indexes (issue 11). Against the embedded Redis, through the real daemon."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from click.testing import CliRunner, Result
from test_ingest import (
    KEYS,
    daemon,
    dead_letters,
    make_settings,
    pending,
    running,
    stored_ids,
    wait_for,
    xadd_raw,
    xadd_states,
)

from memory_tiers import TIERS, EmbeddingEngine, Settings
from memory_tiers.cli import main
from memory_tiers.client import MemoryClient
from memory_tiers.daemon import INDEX_CHECK_INTERVAL_S
from memory_tiers.ingest import Ingestor, consumer_client
from memory_tiers.protocol import encode_entry
from memory_tiers.scheduler import ConsolidationScheduler
from memory_tiers.server import EmbeddedRedis
from memory_tiers.sim import simulate_states
from memory_tiers.status import Heartbeat, beat
from memory_tiers.store import Candidate, Candidates, MemoryRecord, TierStore, index_states

HOSTILE_NUMBERS: list[tuple[dict[str, str], str]] = [
    ({"step": "9" * 400}, "step="),
    ({"ts": "9" * 400}, "ts="),
    ({"step": str(2**63 - 1)}, "step="),
    ({"ts": "-5"}, "ts="),
    ({"ts": "1732600000000000"}, "ts="),  # microseconds
    ({"importance": "NaN"}, "importance="),
    ({"importance": "-inf"}, "importance="),
    ({"importance": "1e999"}, "importance="),
]


@pytest.fixture
def ingest_settings(
    redis_server: EmbeddedRedis, redis_client: redis.Redis, model_path: Path
) -> Settings:
    """Settings on the flushed session server with the session's trained model."""
    return make_settings(redis_server.url, model_path)


def ft_info(client: redis.Redis, tier: str = "stm") -> dict[str, Any]:
    """FT.INFO of one tier's index as a dict."""
    info: dict[str, Any] = client.ft(KEYS.index(tier)).info()
    return info


def test_hostile_numbers_are_dead_lettered_and_every_valid_entry_is_indexed(
    redis_client: redis.Redis, ingest_settings: Settings, engine: EmbeddingEngine
) -> None:
    states = simulate_states(50 * len(HOSTILE_NUMBERS), num_agents=25, seed=21)
    valid: list[str] = []
    hostile: dict[str, str] = {}
    for i, (override, field) in enumerate(HOSTILE_NUMBERS):  # 50 valid, 1 hostile, ...
        valid += xadd_states(redis_client, states[50 * i : 50 * (i + 1)], first_step=50 * i)
        fields = {**encode_entry("hostile", {"health": 1}, step=1), **override}
        hostile[xadd_raw(redis_client, fields)] = field
    with running(daemon(ingest_settings, engine, "strict")) as d:
        wait_for(lambda: d.stats.entries == len(valid) + len(hostile), 30, "every entry")
    assert sorted(stored_ids(redis_client)) == sorted(valid)
    by_agent: defaultdict[str, set[str]] = defaultdict(set)
    for entry_id, state in zip(valid, states, strict=True):
        by_agent[state["agent_id"]].add(KEYS.record("stm", entry_id))
    for agent, keys in by_agent.items():
        assert set(redis_client.zrange(KEYS.agent_time_index("stm", agent), 0, -1)) == keys
    assert not redis_client.exists(KEYS.agent_time_index("stm", "hostile"))
    info = ft_info(redis_client)
    assert (int(info["num_docs"]), int(info["hash_indexing_failures"])) == (len(valid), 0)
    letters = dead_letters(redis_client)
    assert set(letters) == set(hostile)
    for entry_id, field in hostile.items():
        assert letters[entry_id]["error"].startswith(field), letters[entry_id]["error"]
    assert pending(redis_client) == 0


def test_a_partly_applied_commit_is_logged_as_it_happened(
    redis_client: redis.Redis,
    ingest_settings: Settings,
    engine: EmbeddingEngine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    redis_client.set(KEYS.time_index("stm"), "not a sorted set")  # its ZADD fails inside EXEC
    ids = xadd_states(redis_client, simulate_states(5, seed=7))
    with caplog.at_level(logging.WARNING), running(daemon(ingest_settings, engine, "honest")):
        wait_for(lambda: "partly applied" in caplog.text, 10, "the failed commit's log line")
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    (line,) = [message for message in errors if "partly applied" in message]
    assert f"ZADD {KEYS.time_index('stm')}: WRONGTYPE" in line
    assert "5 entries acked, not read again" in line
    assert pending(redis_client) == 0  # as the log says
    assert all(redis_client.exists(KEYS.record("stm", entry_id)) for entry_id in ids)
    assert "stay pending" not in caplog.text


# -- ownership at commit -----------------------------------------------------------------------


def consumer(settings: Settings, engine: EmbeddingEngine, name: str) -> Ingestor:
    """An Ingestor named `name` on its own client, indexes and group made."""
    assert settings.redis_url
    ingestor = Ingestor(consumer_client(settings.redis_url, settings), engine, settings, name)
    ingestor.store.ensure_indexes()
    ingestor.ensure_group()
    return ingestor


def tiers_of(client: redis.Redis, entry_id: str) -> list[str]:
    """The tiers holding a record of `entry_id`, read in one MULTI/EXEC."""
    pipe = client.pipeline(transaction=True)
    for tier in TIERS:
        pipe.exists(KEYS.record(tier, entry_id))
    return [tier for tier, found in zip(TIERS, pipe.execute(), strict=True) if found]


def test_a_consumer_frozen_past_the_claim_time_writes_nothing_another_took(
    redis_client: redis.Redis,
    ingest_settings: Settings,
    engine: EmbeddingEngine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = dataclasses.replace(
        ingest_settings, claim_idle_ms=100, stm_max_age_s=0, stm_max_per_agent=None
    )
    ids = xadd_states(redis_client, simulate_states(40, num_agents=4, seed=51))
    bad = xadd_raw(redis_client, {"agent_id": "a", "state": "[]"})
    frozen, taker = consumer(settings, engine, "frozen"), consumer(settings, engine, "taker")
    batch = frozen.prepare(frozen.read_new())  # read and prepared, then frozen before commit
    claimed: list[Any] = []
    wait_for(lambda: bool(claimed.extend(taker.claim_idle()[1]) or claimed), 5, "the claim")
    assert len(claimed) == 41
    assert taker.process(claimed)[1].stored == 40
    ConsolidationScheduler(redis_client, settings, engine).run_now()  # STM -> IM
    assert [tiers_of(redis_client, entry_id) for entry_id in ids] == [["im"]] * 40

    with caplog.at_level(logging.WARNING):
        outcome = frozen.commit(batch)  # it resumes
    assert (outcome.stored, outcome.dead_letters, outcome.acked) == (0, 0, 0)
    assert [tiers_of(redis_client, entry_id) for entry_id in ids] == [["im"]] * 40
    assert redis_client.zcard(KEYS.time_index("stm")) == 0
    assert list(dead_letters(redis_client)) == [bad]  # the taker's, once
    assert "41 of 41 entries were no longer this consumer's" in caplog.text
    assert pending(redis_client) == 0


# -- self-healing indexes ----------------------------------------------------------------------


def check(url: str) -> Result:
    """`memory-tiers check` against `url`, in process."""
    return CliRunner().invoke(main, ["check"], env={"MT_REDIS_URL": url})


def test_an_index_dropped_under_a_running_daemon_is_recreated_and_found_again(
    redis_client: redis.Redis, ingest_settings: Settings, engine: EmbeddingEngine
) -> None:
    assert ingest_settings.redis_url
    states = simulate_states(200, num_agents=4, seed=31)
    store = TierStore(redis_client, ingest_settings)
    with running(daemon(ingest_settings, engine, "healer", consolidate=False)) as d:
        ids = xadd_states(redis_client, states)
        wait_for(lambda: d.stats.stored == 200, 30, "200 stored")
        redis_client.ft(KEYS.index("stm")).dropindex()  # the records stay
        dropped = time.monotonic()
        wait_for(lambda: index_states(redis_client, KEYS)["stm"] is not None, 10, "a new index")
        healed_s = time.monotonic() - dropped
        wait_for(lambda: int(ft_info(redis_client)["num_docs"]) == 200, 10, "every record indexed")
        assert check(ingest_settings.redis_url).exit_code == 0
    assert healed_s <= INDEX_CHECK_INTERVAL_S + 5
    vector = engine.encode_states(states[:1])["stm"][0]
    hits = store.search("stm", vector, k=1, agent_id=states[0]["agent_id"])
    assert (hits[0].entry_id, hits[0].distance < 1e-3) == (ids[0], True)


def test_a_search_on_a_missing_index_recreates_it(
    redis_client: redis.Redis, ingest_settings: Settings, engine: EmbeddingEngine
) -> None:
    store = TierStore(redis_client, ingest_settings)
    store.ensure_indexes()
    vector = np.ones(ingest_settings.im_dim, np.float32)
    record = MemoryRecord(
        entry_id="1-0", agent_id="a", agent_type="t", step=1, ts=1, model_version="v",
        vector=vector,
    )  # fmt: skip
    store.write("im", [record])
    redis_client.ft(KEYS.index("im")).dropindex()
    store.search("im", vector, k=1)  # no "no such index": recreated, indexing in the background
    wait_for(lambda: [h.entry_id for h in store.search("im", vector, k=1)] == ["1-0"], 10, "hit")


def test_a_recall_on_a_missing_index_recreates_it(
    redis_client: redis.Redis, ingest_settings: Settings, engine: EmbeddingEngine
) -> None:
    client = MemoryClient(redis_client, ingest_settings, engine)
    state = simulate_states(1, seed=3)[0]
    vector = engine.encode_states([state])["im"][0]
    client.store.ensure_indexes()
    record = MemoryRecord(
        entry_id="1-0", agent_id="a", agent_type="t", step=1, ts=1, model_version="v",
        vector=vector,
    )  # fmt: skip
    client.store.write("im", [record])
    redis_client.ft(KEYS.index("im")).dropindex()

    client.recall("a", state, k=1)  # all tiers in one round trip; no "no such index"

    found = lambda: [h.entry_id for h in client.recall("a", state, k=1).by_tier["im"]]  # noqa: E731
    wait_for(lambda: found() == ["1-0"], 10, "the IM hit")


def test_a_recall_after_redis_dropped_the_clients_connections_reconnects(
    redis_client: redis.Redis, ingest_settings: Settings, engine: EmbeddingEngine
) -> None:
    client = MemoryClient(redis_client, ingest_settings, engine)
    state = simulate_states(1, seed=3)[0]
    client.store.ensure_indexes()
    record = MemoryRecord(
        entry_id="1-0", agent_id="a", agent_type="t", step=1, ts=1, model_version="v",
        vector=engine.encode_states([state])["im"][0],
    )  # fmt: skip
    client.store.write("im", [record])
    found = lambda: [h.entry_id for h in client.recall("a", state, k=1).by_tier["im"]]  # noqa: E731
    wait_for(lambda: found() == ["1-0"], 10, "the IM hit")
    assert ingest_settings.redis_url
    with redis.Redis.from_url(ingest_settings.redis_url) as other:  # closes the client's ones
        assert other.client_kill_filter(_type="normal", skipme=True) >= 1

    assert found() == ["1-0"]


def test_a_recall_abandoned_midway_leaves_no_unread_reply_behind(
    redis_client: redis.Redis, ingest_settings: Settings, engine: EmbeddingEngine
) -> None:
    # The recall sends every tier's KNN at once; if it stops after reading the first reply,
    # the others must not be read later as the answers to another command.
    store = TierStore(redis_client, ingest_settings)
    store.ensure_indexes()
    state = simulate_states(1, seed=3)[0]
    vectors = engine.encode_states([state])
    for tier in ("stm", "im", "ltm"):
        record = MemoryRecord(
            entry_id=f"{tier}-1", agent_id="a", agent_type="t", step=1, ts=1, model_version="v",
            vector=vectors[tier][0],
        )  # fmt: skip
        store.write(tier, [record])

    def give_up(tier: str, found: Candidates) -> list[Candidate]:
        raise RuntimeError(f"stopped at {tier}")

    query = {tier: vectors[tier][0] for tier in ("stm", "im", "ltm")}
    with pytest.raises(RuntimeError, match="stopped at stm"):
        store.recall_round(query, 5, give_up, agent_id="a")

    for _ in range(3):  # the pool hands out the same connection again, if it kept it
        for tier in ("ltm", "im", "stm"):
            assert [h.entry_id for h in store.search(tier, query[tier], k=1)] == [f"{tier}-1"]
        assert redis_client.ping()


def test_check_is_unhealthy_while_an_index_is_missing_or_failing(
    redis_client: redis.Redis, ingest_settings: Settings
) -> None:
    assert ingest_settings.redis_url
    store = TierStore(redis_client, ingest_settings)
    store.ensure_indexes()
    beat(redis_client, KEYS, Heartbeat("x", "h", 1, "v", time.time(), time.time(), 0, 0, 30.0))
    assert check(ingest_settings.redis_url).exit_code == 0

    redis_client.ft(KEYS.index("ltm")).dropindex()
    missing = check(ingest_settings.redis_url)
    assert missing.exit_code == 1
    assert missing.output.startswith(f"unhealthy: index {KEYS.index('ltm')} missing: searches")

    store.ensure_indexes()
    bad_key = KEYS.record("stm", "2-0")
    redis_client.hset(bad_key, mapping={"agent_id": "a", "step": "9" * 400})  # not indexable
    wait_for(lambda: index_states(redis_client, KEYS)["stm"].failures == 1, 10, "the failure")
    failing = check(ingest_settings.redis_url)
    assert failing.exit_code == 1
    assert failing.output.startswith(
        f"unhealthy: index {KEYS.index('stm')} has 1 hash_indexing_failures: records no search "
        f"finds (last: {bad_key}: "
    )
    stats = CliRunner().invoke(main, ["stats"], env={"MT_REDIS_URL": ingest_settings.redis_url})
    assert stats.output.splitlines()[1].split() == ["stm", "0", "0", "0", "1"]


# -- group hygiene -----------------------------------------------------------------------------


def consumers(client: redis.Redis) -> dict[str, int]:
    """The group's consumers and their pending entries."""
    return {c["name"]: int(c["pending"]) for c in client.xinfo_consumers(KEYS.stream, KEYS.group)}


def test_idle_consumers_with_nothing_pending_leave_the_group(
    redis_client: redis.Redis, ingest_settings: Settings, engine: EmbeddingEngine
) -> None:
    ids = xadd_states(redis_client, simulate_states(3, seed=41))
    redis_client.xgroup_create(KEYS.stream, KEYS.group, id="0")
    redis_client.xreadgroup(KEYS.group, "holder", {KEYS.stream: ">"}, count=1)  # keeps ids[0]
    redis_client.xreadgroup(KEYS.group, "ghost", {KEYS.stream: ">"}, count=1)
    redis_client.xack(KEYS.stream, KEYS.group, ids[1])
    assert consumers(redis_client) == {"holder": 1, "ghost": 0}
    settings = dataclasses.replace(ingest_settings, consumer_max_idle_s=0.5)
    with running(daemon(settings, engine, "tidy", consolidate=False)):
        wait_for(lambda: set(consumers(redis_client)) == {"holder", "tidy"}, 10, "the cleanup")
        time.sleep(1.0)  # twice the idle limit: the live daemon, reading, is never removed
        assert consumers(redis_client) == {"holder": 1, "tidy": 0}


def test_a_claim_between_the_ownership_check_and_the_exec_aborts_the_commit(
    redis_client: redis.Redis, ingest_settings: Settings, engine: EmbeddingEngine
) -> None:
    settings = dataclasses.replace(ingest_settings, claim_idle_ms=50)
    ids = xadd_states(redis_client, simulate_states(10, seed=61))
    slow, taker = consumer(settings, engine, "slow"), consumer(settings, engine, "taker")
    batch = slow.prepare(slow.read_new())
    time.sleep(0.1)  # its entries are idle past claim_idle_ms
    checks: list[set[str]] = []
    check_ownership = slow._owned

    def check_then_lose_them(connection: Any, entry_ids: Any) -> set[str]:
        owned = check_ownership(connection, entry_ids)
        checks.append(owned)
        if len(checks) == 1:
            claimed = taker.claim_idle()[1]  # between the check and the EXEC
            assert taker.process(claimed)[1].stored == 10
        return owned

    slow._owned = check_then_lose_them  # type: ignore[method-assign]
    outcome = slow.commit(batch)
    assert [len(owned) for owned in checks] == [10, 0]  # the EXEC aborted, checked again
    assert (outcome.stored, outcome.acked) == (0, 0)
    assert sorted(stored_ids(redis_client)) == sorted(ids)  # the taker's, once
    assert redis_client.hget(KEYS.record("stm", ids[0]), "agent_id")
    assert pending(redis_client) == 0
