"""The stream consumer against the embedded Redis: batches in, STM records and dead letters out.

Helpers here (settings, XADD, a daemon in a thread, polling) are shared with test_daemon.py.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from memory_tiers import EmbeddingEngine, Keys, Settings
from memory_tiers.daemon import Daemon
from memory_tiers.errors import StoreError
from memory_tiers.ingest import (
    DELETED_ERROR,
    STAGES,
    UNKNOWN_AGENT_TYPE,
    Ingestor,
    consumer_client,
    default_consumer_name,
)
from memory_tiers.protocol import action_to_state, encode_entry
from memory_tiers.server import EmbeddedRedis
from memory_tiers.sim import simulate_states
from memory_tiers.store import TierStore
from memory_tiers.stream import GroupReader

KEYS = Keys()


# -- helpers shared with test_daemon.py --------------------------------------------------------


def make_settings(url: str, model_path: Path | str, **overrides: Any) -> Settings:
    """Settings for a test daemon: short blocking reads so stops and polls are quick."""
    return Settings(redis_url=url, model_path=str(model_path), block_ms=100, **overrides)


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `condition` every 20 ms until it holds; fail naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.02)


def xadd_states(
    client: redis.Redis, states: Sequence[Mapping[str, Any]], first_step: int = 0
) -> list[str]:
    """XADD `states` with the protocol's fields, pipelined; their entry ids in order."""
    pipe = client.pipeline(transaction=False)
    for step, state in enumerate(states, first_step):
        pipe.xadd(KEYS.stream, dict(encode_entry(state["agent_id"], state, step=step)))
    return [_text(entry_id) for entry_id in pipe.execute()]


def xadd_raw(client: redis.Redis, fields: Mapping[Any, Any]) -> str:
    """XADD one entry with exactly these fields (bypassing the protocol's checks)."""
    return _text(client.xadd(KEYS.stream, dict(fields)))


def stored_ids(client: redis.Redis) -> list[str]:
    """Entry ids of every STM record, from the STM time index."""
    prefix = KEYS.record_prefix("stm")
    return [_text(key)[len(prefix) :] for key in client.zrange(KEYS.time_index("stm"), 0, -1)]


def stream_ids(client: redis.Redis) -> set[str]:
    """Every entry id in the state stream."""
    return {_text(entry_id) for entry_id, _ in client.xrange(KEYS.stream)}


def num_docs(client: redis.Redis) -> int:
    """FT.INFO num_docs of the STM index."""
    return int(client.ft(KEYS.index("stm")).info()["num_docs"])


def pending(client: redis.Redis, consumer: str | None = None) -> int:
    """Entries delivered and not acked, in the group or for one consumer."""
    if consumer is None:
        return int(client.xpending(KEYS.stream, KEYS.group)["pending"])
    rows = client.xpending_range(KEYS.stream, KEYS.group, "-", "+", 100_000, consumer)
    return len(rows)


def dead_letters(client: redis.Redis) -> dict[str, dict[str, str]]:
    """Dead letters by original entry id; fields read as bytes (some are not UTF-8), shown."""
    entries = client.execute_command("XRANGE", KEYS.dead_letters, "-", "+", NEVER_DECODE=True)
    letters = [{_show(k): _show(v) for k, v in fields.items()} for _, fields in entries]
    return {fields["entry_id"]: fields for fields in letters}


@contextmanager
def in_thread(daemon: Daemon, timeout: float = 30.0) -> Iterator[list[BaseException]]:
    """Run `daemon` in a thread without waiting for it to start; yield the list what run()
    raises lands in; stop the daemon when the block ends."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            daemon.run()
        except BaseException as e:
            errors.append(e)

    thread = threading.Thread(target=target, name="test-daemon", daemon=True)
    thread.start()
    try:
        yield errors
    finally:
        daemon.request_stop()
        thread.join(timeout)
    assert not thread.is_alive(), "daemon did not stop"


@contextmanager
def running(daemon: Daemon, timeout: float = 30.0) -> Iterator[Daemon]:
    """Run `daemon` in a thread until the block ends, once it started; re-raise what run()
    raised."""
    with in_thread(daemon, timeout) as errors:
        wait_for(lambda: daemon.wait_started(0) or bool(errors), timeout, "daemon start")
        if errors:
            raise errors[0]
        yield daemon
    if errors:
        raise errors[0]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _show(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture
def ingest_settings(
    redis_server: EmbeddedRedis, redis_client: redis.Redis, model_path: Path
) -> Settings:
    """Settings on the flushed session server with the session's trained model."""
    return make_settings(redis_server.url, model_path)


@pytest.fixture
def ingestor(ingest_settings: Settings, engine: EmbeddingEngine) -> Iterator[Ingestor]:
    """A consumer named 'me', group and indexes set up."""
    assert ingest_settings.redis_url
    client = consumer_client(ingest_settings.redis_url, ingest_settings)
    consumer = Ingestor(client, engine, ingest_settings, "me")
    consumer.store.ensure_indexes()
    consumer.ensure_group()
    yield consumer
    client.close()


def daemon(settings: Settings, engine: EmbeddingEngine, consumer: str, **kwargs: Any) -> Daemon:
    """An in-process daemon that leaves torch's thread count alone."""
    return Daemon(settings, consumer=consumer, engine=engine, torch_threads=None, **kwargs)


# -- group and naming --------------------------------------------------------------------------


def test_group_starts_at_zero_and_busygroup_is_fine(
    redis_client: redis.Redis, ingest_settings: Settings, engine: EmbeddingEngine
) -> None:
    ids = xadd_states(redis_client, simulate_states(3, seed=1))  # before any group exists
    assert ingest_settings.redis_url
    consumer = Ingestor(consumer_client(ingest_settings.redis_url, ingest_settings), engine,
                        ingest_settings, "first")  # fmt: skip
    assert consumer.ensure_group() is True
    assert consumer.ensure_group() is False
    assert [_text(entry_id) for entry_id, _ in consumer.read_new()] == ids


def test_default_consumer_names_are_unique_per_process() -> None:
    first, second = default_consumer_name(), default_consumer_name()
    assert first != second
    assert second.startswith(first.rsplit("-", 1)[0])


# -- good states -------------------------------------------------------------------------------


def test_every_state_is_stored_once_and_found_by_its_own_vector(
    redis_client: redis.Redis, ingest_settings: Settings, engine: EmbeddingEngine
) -> None:
    states = simulate_states(600, num_agents=20, seed=5)
    ids = xadd_states(redis_client, states[:300])  # before the daemon: the group starts at 0
    with running(daemon(ingest_settings, engine, "solo")) as d:
        ids += xadd_states(redis_client, states[300:], first_step=300)
        wait_for(lambda: d.stats.stored == len(states), 30, "600 records")
    assert redis_client.zcard(KEYS.time_index("stm")) == num_docs(redis_client) == 600
    assert sorted(stored_ids(redis_client)) == sorted(ids)
    assert pending(redis_client) == 0
    store = TierStore(redis_client, ingest_settings)
    records = store.read("stm", [KEYS.record("stm", entry_id) for entry_id in ids])
    features = engine.schema.extract_batch(states)
    vectors = engine.encode_features(features)["stm"]
    for i, (record, state) in enumerate(zip(records, states, strict=True)):
        assert (record.entry_id, record.agent_id, record.step) == (ids[i], state["agent_id"], i)
        assert (record.agent_type, record.model_version) == (state["agent_type"], engine.version)
        assert json.loads(record.state_json or "") == state
        assert record.features is not None
        np.testing.assert_array_equal(record.features, features[i])  # what recall re-sorts by
        np.testing.assert_allclose(record.vector, vectors[i], atol=1e-5)
        hits = store.search("stm", vectors[i], k=3, agent_id=state["agent_id"])
        assert hits[0].distance < 1e-3
        assert ids[i] in {h.entry_id for h in hits if h.distance < 1e-3}


def test_each_batch_is_timed_by_stage(redis_client: redis.Redis, ingestor: Ingestor) -> None:
    xadd_states(redis_client, simulate_states(50, seed=14))
    batch, outcome = ingestor.process(ingestor.read_new())
    assert outcome.stored == 50
    stages = ingestor.stats.stage_s
    assert list(stages) == list(STAGES)
    assert all(stages[s] > 0 for s in ("parse", "featurize", "encode", "pack", "send"))
    prepared = sum(batch.stage_cpu_s.values())  # one thread's CPU: at most its wall time
    assert 0 < prepared <= batch.prepare_s + 1e-3
    assert stages["send"] + stages["wait"] == pytest.approx(outcome.commit_s)


def test_actions_are_stored_through_their_state_form(
    redis_client: redis.Redis, ingestor: Ingestor, engine: EmbeddingEngine
) -> None:
    action = {"action_type": "gather", "action_params": {"amount": 3}, "outcome": {"ok": 1}}
    entry_id = xadd_raw(redis_client, encode_entry("a1", action, kind="action", step=4))
    batch, outcome = ingestor.process(ingestor.read_new())
    assert (outcome.stored, outcome.dead_letters, outcome.acked) == (1, 0, 1)
    (record,) = batch.records
    assert (record.entry_id, record.step, record.agent_type) == (entry_id, 4, UNKNOWN_AGENT_TYPE)
    assert json.loads(record.state_json or "") == action
    features = engine.schema.extract(action_to_state(action))
    expected = engine.encode_features(features[None, :])["stm"][0]
    np.testing.assert_allclose(record.vector, expected, atol=1e-6)
    # Recall measures it as it was encoded: by its state form's features, not the raw action.
    np.testing.assert_array_equal(record.features, features)


# -- bad entries -------------------------------------------------------------------------------


def huge_grid_json(side: int) -> str:
    """A state whose perception grid is side x side zeros, built as text (no Python lists)."""
    row = "[" + ",".join("0" * side) + "]"
    return '{"health": 50, "perception": [' + ",".join([row] * side) + "]}"


BAD_ENTRIES: list[tuple[dict[str, Any], str]] = [
    ({"state": '{"health": 50}'}, "agent_id is missing"),
    ({"agent_id": "a1", "state": "{health: 50"}, "state is not valid JSON"),
    ({"agent_id": "a1", "state": '{"health": NaN}'}, "state holds NaN"),
    ({"agent_id": "a1", "state": '{"health": "high"}'}, "field 'health': expected a number"),
    ({"agent_id": "a1", "state": '{"agent_type": 7}'}, "field 'agent_type': expected a string"),
    ({"agent_id": "a1", "state": '{"agent_type": "x\\n"}'}, "agent_type 'x\\n' has leading"),
    ({"agent_id": "a1", "state": huge_grid_json(300)}, "grid 300x300 exceeds the limit"),
    ({"agent_id": "a1", "state": '{"a": "' + "x" * 5_000_000 + '"}'}, "state is 5000009 char"),
    ({"agent_id": "a1", "state": "[" * 100_000 + "]" * 100_000}, "state is nested too deep"),
    ({"agent_id": b"a\xff", "state": "{}"}, "not UTF-8"),
    ({"agent_id": "a1", "state": "{}", "kind": "thought"}, "kind='thought'"),
    ({"agent_id": "a1", "state": "{}", "step": "soon"}, "step='soon': expected int"),
]


def test_bad_entries_become_dead_letters_and_good_ones_around_them_are_stored(
    redis_client: redis.Redis, ingest_settings: Settings, engine: EmbeddingEngine
) -> None:
    good_states = simulate_states(2 * len(BAD_ENTRIES) + 2, seed=2)
    good_ids: list[str] = []
    bad_ids: dict[str, tuple[dict[str, Any], str]] = {}
    for i, (fields, reason) in enumerate(BAD_ENTRIES):  # good, bad, good, bad, ... good
        good_ids += xadd_states(redis_client, good_states[2 * i : 2 * i + 2], first_step=2 * i)
        bad_ids[xadd_raw(redis_client, fields)] = (fields, reason)
    good_ids += xadd_states(redis_client, good_states[-2:], first_step=100)
    with running(daemon(ingest_settings, engine, "judge")) as d:
        wait_for(lambda: d.stats.entries == len(good_ids) + len(bad_ids), 30, "all entries")
        later = xadd_states(redis_client, simulate_states(5, seed=3))  # it keeps going
        wait_for(lambda: d.stats.stored == len(good_ids) + 5, 10, "entries after the bad ones")
    assert sorted(stored_ids(redis_client)) == sorted(good_ids + later)
    letters = dead_letters(redis_client)
    assert list(letters) == list(bad_ids)  # all of them, in stream order
    for entry_id, (fields, reason) in bad_ids.items():
        letter = letters[entry_id]
        assert reason in letter["error"], (entry_id, letter["error"])
        assert letter["consumer"] == "judge"
        if fields.get("state", "").startswith('{"health": 50, "perception"'):
            assert len(letter["state"]) == len(fields["state"])  # the original, all of it
            continue
        assert {k: letter[k] for k in fields if isinstance(fields[k], str)} == {
            k: v for k, v in fields.items() if isinstance(v, str)
        }
    assert pending(redis_client) == 0


def test_a_record_the_store_refuses_becomes_a_dead_letter(
    redis_client: redis.Redis, ingest_settings: Settings, model_path: Path
) -> None:
    engine = EmbeddingEngine.from_checkpoint(model_path)
    engine.version = "v 1\n"  # a model_version that is no TAG value: every record is refused
    ids = xadd_states(redis_client, simulate_states(3, seed=4))
    assert ingest_settings.redis_url
    client = consumer_client(ingest_settings.redis_url, ingest_settings)
    consumer = Ingestor(client, engine, ingest_settings, "strict")
    consumer.store.ensure_indexes()
    consumer.ensure_group()
    _, outcome = consumer.process(consumer.read_new())
    assert (outcome.stored, outcome.dead_letters, outcome.acked) == (0, 3, 3)
    letters = dead_letters(redis_client)
    assert set(letters) == set(ids)
    assert all("record refused by the store" in f["error"] for f in letters.values())
    assert all(json.loads(f["state"])["agent_id"] == f["agent_id"] for f in letters.values())


# -- pending, claimed and deleted entries ------------------------------------------------------


def test_own_pending_entries_are_resumed_first_and_deleted_ones_dead_lettered(
    redis_client: redis.Redis, ingestor: Ingestor
) -> None:
    ids = xadd_states(redis_client, simulate_states(6, seed=6))
    delivered = ingestor.read_new()  # read, then "crash" before the commit
    assert len(delivered) == 6
    redis_client.xdel(KEYS.stream, ids[1])
    resumed = ingestor.reader.read_pending("0")
    assert [_text(i) for i, _ in resumed] == ids
    assert not resumed[1][1]  # a deleted entry comes back without fields
    _, outcome = ingestor.process(resumed)
    assert (outcome.stored, outcome.dead_letters, outcome.acked) == (5, 1, 6)
    assert dead_letters(redis_client)[ids[1]]["error"] == DELETED_ERROR
    assert ingestor.reader.read_pending("0") == []
    assert pending(redis_client) == 0


def test_idle_entries_of_a_dead_consumer_are_claimed_deleted_ones_included(
    redis_client: redis.Redis, ingest_settings: Settings, engine: EmbeddingEngine
) -> None:
    ids = xadd_states(redis_client, simulate_states(300, seed=7))
    redis_client.xgroup_create(KEYS.stream, KEYS.group, id="0")
    redis_client.xreadgroup(KEYS.group, "dead", {KEYS.stream: ">"}, count=300)
    redis_client.xdel(KEYS.stream, ids[0], ids[299])
    settings = make_settings(ingest_settings.redis_url or "", ingest_settings.model_path,
                             batch_size=128, claim_idle_ms=50)  # fmt: skip
    assert settings.redis_url
    client = consumer_client(settings.redis_url, settings)
    heir = Ingestor(client, engine, settings, "heir")
    heir.store.ensure_indexes()
    time.sleep(0.06)  # the claim's condition is idle time itself
    cursor, batches = "0-0", []
    while True:
        cursor, messages = heir.claim_idle(cursor)
        batches.append(heir.process(messages)[1])
        if cursor == "0-0":
            break
    assert len(batches) >= 3  # 300 entries in pages of 128 (Redis scans count x 10)
    assert sum(o.stored for o in batches) == 298
    assert sum(o.dead_letters for o in batches) == heir.stats.claimed - 298 == 2
    assert {i: f["error"] for i, f in dead_letters(redis_client).items()} == {
        ids[0]: DELETED_ERROR,
        ids[299]: DELETED_ERROR,
    }
    assert sorted(stored_ids(redis_client)) == sorted(ids[1:299])
    assert pending(redis_client) == 0


def test_a_restart_under_the_same_name_resumes_its_pending_entries_without_claiming(
    redis_client: redis.Redis, ingest_settings: Settings, engine: EmbeddingEngine
) -> None:
    ids = xadd_states(redis_client, simulate_states(40, seed=8))
    redis_client.xgroup_create(KEYS.stream, KEYS.group, id="0")
    redis_client.xreadgroup(KEYS.group, "phoenix", {KEYS.stream: ">"}, count=25)
    with running(daemon(ingest_settings, engine, "phoenix")) as d:  # claim_idle_ms: 60 s
        wait_for(lambda: d.stats.stored == 40, 10, "40 records")
        assert d.stats.claimed == 0
    assert sorted(stored_ids(redis_client)) == sorted(ids)
    assert pending(redis_client) == 0


# -- several consumers and lost connections ----------------------------------------------------


def test_two_daemons_in_one_group_store_each_state_once(
    redis_client: redis.Redis, ingest_settings: Settings, engine: EmbeddingEngine
) -> None:
    states = simulate_states(3000, seed=9)
    ids: list[str] = []
    with (
        running(daemon(ingest_settings, engine, "left")) as left,
        running(daemon(ingest_settings, engine, "right")) as right,
    ):
        for start in range(0, len(states), 250):
            ids += xadd_states(redis_client, states[start : start + 250], first_step=start)
            time.sleep(0.01)  # arrivals over time, so both blocked readers get served
        wait_for(lambda: left.stats.stored + right.stats.stored >= 3000, 30, "3000 records")
    assert left.stats.stored > 0 and right.stats.stored > 0
    assert left.stats.stored + right.stats.stored == 3000
    assert redis_client.zcard(KEYS.time_index("stm")) == num_docs(redis_client) == 3000
    assert set(stored_ids(redis_client)) == set(ids) == stream_ids(redis_client)
    assert pending(redis_client) == 0


def kill_clients(client: redis.Redis, name_prefix: str) -> int:
    """CLIENT KILL every connection whose name starts with `name_prefix`; how many."""
    ids = [c["id"] for c in client.client_list() if c.get("name", "").startswith(name_prefix)]
    for client_id in ids:
        client.client_kill_filter(_id=client_id)
    return len(ids)


def blocked(client: redis.Redis, name: str) -> bool:
    """Whether the connection named `name` is blocked in a command (XREADGROUP BLOCK)."""
    return any(c.get("name") == name and "b" in c.get("flags", "") for c in client.client_list())


def test_killed_connections_are_survived_without_loss(
    redis_client: redis.Redis,
    ingest_settings: Settings,
    engine: EmbeddingEngine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="memory_tiers")
    states = simulate_states(4000, seed=10)
    ids: list[str] = []
    kills = 0
    with running(daemon(ingest_settings, engine, "rocky")) as d:
        for start in range(0, len(states), 400):
            ids += xadd_states(redis_client, states[start : start + 400], first_step=start)
            # Mid-batch: the pool replaces a connection killed while idle, or a command fails.
            wait_for(lambda n=start: d.stats.entries > n, 10, "ingest under way")
            kills += kill_clients(redis_client, "mt-ingest:rocky")
            # Drained: the kill lands on a blocked XREADGROUP, which fails.
            wait_for(lambda n=start: len(stored_ids(redis_client)) == n + 400, 10, "a drain")
            wait_for(lambda: blocked(redis_client, "mt-ingest:rocky"), 5, "a blocked read")
            kills += kill_clients(redis_client, "mt-ingest:rocky")
    assert kills >= 10
    assert redis_client.zcard(KEYS.time_index("stm")) == num_docs(redis_client) == 4000
    assert set(stored_ids(redis_client)) == set(ids)
    assert pending(redis_client) == 0
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("ingest interrupted (ConnectionError") for m in messages)
    assert any(m.startswith("ingest resumed after") for m in messages)


def test_a_redis_restart_is_waited_out_with_backoff(
    tmp_path: Path, model_path: Path, engine: EmbeddingEngine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="memory_tiers")
    server = EmbeddedRedis(data_dir=tmp_path / "redis").start()
    port = server.port
    client = redis.Redis(port=port)
    states = simulate_states(1000, seed=12)
    try:
        settings = make_settings(server.url, model_path)
        with running(daemon(settings, engine, "patient")) as d:
            ids = xadd_states(client, states[:500])
            wait_for(lambda: d.stats.stored == 500, 10, "the first 500")
            server.stop()  # SIGTERM: the AOF is flushed, the daemon loses its connection
            wait_for(lambda: "ingest interrupted" in caplog.text, 5, "the outage noticed")
            time.sleep(0.3)  # down a while longer: the 0.1 s retry fails too
            server = EmbeddedRedis(data_dir=tmp_path / "redis", port=port).start()
            ids += xadd_states(client, states[500:], first_step=500)
            wait_for(lambda: d.stats.stored == 1000, 20, "the other 500")
        assert client.zcard(KEYS.time_index("stm")) == num_docs(client) == 1000
        assert set(stored_ids(client)) == set(ids)
        assert pending(client) == 0
    finally:
        client.close()
        server.stop()
    outages = [r.getMessage() for r in caplog.records if "ingest interrupted" in r.getMessage()]
    resumed = [r.getMessage() for r in caplog.records if "ingest resumed after" in r.getMessage()]
    assert len(outages) == len(resumed) == 1  # once per outage, not once per attempt
    attempts = int(resumed[0].split("after ")[1].split(" ")[0])
    assert attempts >= 2


def test_entries_whose_read_reply_was_lost_are_read_again(
    monkeypatch: pytest.MonkeyPatch,
    redis_client: redis.Redis,
    ingest_settings: Settings,
    engine: EmbeddingEngine,
) -> None:
    lost: list[Any] = []
    read_new = GroupReader.read_new

    def read_then_lose_the_reply(self: GroupReader) -> list[Any]:
        messages = read_new(self)  # delivered: in this consumer's pending list now
        if messages and not lost:
            lost.extend(messages)
            raise StoreError("XREADGROUP failed") from redis.ConnectionError("reply lost")
        return messages

    monkeypatch.setattr(GroupReader, "read_new", read_then_lose_the_reply)
    ids = xadd_states(redis_client, simulate_states(50, seed=14))
    with running(daemon(ingest_settings, engine, "forgetful")) as d:
        wait_for(lambda: d.stats.stored == 50, 10, "50 records")
    assert lost and d.stats.claimed == 0
    assert sorted(stored_ids(redis_client)) == sorted(ids)
    assert pending(redis_client) == 0


def test_a_commit_whose_reply_was_lost_is_not_written_twice(
    monkeypatch: pytest.MonkeyPatch,
    redis_client: redis.Redis,
    ingest_settings: Settings,
    engine: EmbeddingEngine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="memory_tiers")
    lost: list[Any] = []
    commit = Ingestor.commit

    def commit_then_lose_the_reply(self: Ingestor, batch: Any) -> Any:
        outcome = commit(self, batch)  # MULTI/EXEC ran: records, dead letter, XACK
        if not lost:
            lost.append(outcome)
            raise StoreError("EXEC failed") from redis.ConnectionError("reply lost")
        return outcome

    monkeypatch.setattr(Ingestor, "commit", commit_then_lose_the_reply)
    ids = xadd_states(redis_client, simulate_states(20, seed=15))
    bad = xadd_raw(redis_client, {"agent_id": "a1", "state": "nope"})
    ids += xadd_states(redis_client, simulate_states(20, seed=16))
    with running(daemon(ingest_settings, engine, "unsure")) as d:
        wait_for(lambda: d.stats.entries == 41, 10, "41 entries")
        # Past the retry (own pending entries re-read): a second write would be done by now.
        wait_for(lambda: "ingest resumed after" in caplog.text, 10, "the retry")
    assert d.stats.entries == 41
    assert lost
    assert sorted(stored_ids(redis_client)) == sorted(ids)
    assert list(dead_letters(redis_client)) == [bad]
    assert redis_client.xlen(KEYS.dead_letters) == 1
    assert pending(redis_client) == 0


# -- stream retention --------------------------------------------------------------------------


def test_the_daemon_trims_what_it_stored_once_old_enough(
    redis_client: redis.Redis, ingest_settings: Settings, engine: EmbeddingEngine
) -> None:
    settings = dataclasses.replace(ingest_settings, stream_max_age_s=0.5)
    with running(daemon(settings, engine, "trimmer")):
        ids = xadd_states(redis_client, simulate_states(40, seed=12))
        wait_for(lambda: redis_client.xlen(KEYS.stream) == 0, 15, "the stream trimmed")
    assert sorted(stored_ids(redis_client)) == sorted(ids)
    assert pending(redis_client) == 0
