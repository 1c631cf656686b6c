"""Consolidation passes against the embedded Redis: policy, vectors, atomicity, crashes, races."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import redis
from click.testing import CliRunner
from engine_helpers import hooked

from memory_tiers import TIERS, ConfigError, EmbeddingEngine, Keys, Settings, tiers
from memory_tiers.cli import main
from memory_tiers.server import EmbeddedRedis
from memory_tiers.sim import simulate_states
from memory_tiers.store import MemoryRecord, TierStore
from memory_tiers.tiers import PassResult, TierPolicy, consolidate, scheduled_tiers

HOUR_MS = 3_600_000
NOW = 1_750_000_000_000
"""The passes' clock: records are placed relative to it."""
KEYS = Keys()
NO_RULES: dict[str, Any] = {
    f"{tier}_{rule}": None for tier in TIERS for rule in ("max_age_s", "max_per_agent")
}


def policy(settings: Settings, **rules: Any) -> Settings:
    """`settings` with every rule off except `rules` (e.g. stm_max_age_s=3600)."""
    return dataclasses.replace(settings, **{**NO_RULES, **rules})


def stm_records(
    engine: EmbeddingEngine, placed: Sequence[tuple[str, int]], seed: int = 0
) -> list[MemoryRecord]:
    """One STM record per (agent, ts), encoded from simulated states, the raw state and its
    features kept (as ingest writes them)."""
    states = simulate_states(len(placed), seed=seed)
    features = engine.schema.extract_batch(states)
    vectors = engine.encode_features(features)["stm"]
    return [
        MemoryRecord(
            entry_id=f"{ts}-{i}",
            agent_id=agent,
            agent_type=str(states[i]["agent_type"]),
            step=i,
            ts=ts,
            importance=i / len(placed),
            model_version=engine.version,
            vector=vectors[i],
            state_json=json.dumps(states[i]),
            features=features[i],
        )
        for i, (agent, ts) in enumerate(placed)
    ]


def aged(agent: str, hours: Sequence[float]) -> list[tuple[str, int]]:
    """(agent, ts) for memories this many hours before NOW."""
    return [(agent, NOW - round(h * HOUR_MS)) for h in hours]


def tiers_of(client: redis.Redis, records: Sequence[MemoryRecord]) -> dict[str, str]:
    """entry id -> the one tier holding it; fails if a memory is in none or in several."""
    pipe = client.pipeline(transaction=False)
    for record in records:
        for tier in TIERS:
            pipe.exists(KEYS.record(tier, record.entry_id))
    found = pipe.execute()
    where: dict[str, str] = {}
    for i, record in enumerate(records):
        holders = [t for j, t in enumerate(TIERS) if found[i * len(TIERS) + j]]
        assert len(holders) == 1, f"{record.entry_id} is in {holders}"
        where[record.entry_id] = holders[0]
    return where


def assert_indexes_match(client: redis.Redis, store: TierStore, total: int) -> None:
    """Each tier's time index counts exactly its record hashes, and they sum to `total`."""
    counts = [store.count(tier) for tier in TIERS]
    assert sum(counts) == total
    for tier, count in zip(TIERS, counts, strict=True):
        members = client.zrange(KEYS.time_index(tier), 0, -1)
        assert len(members) == count
        assert all(client.exists(m) for m in members)


def ids(records: Sequence[MemoryRecord]) -> set[str]:
    return {r.entry_id for r in records}


def run(
    client: redis.Redis,
    store: TierStore,
    engine: EmbeddingEngine,
    settings: Settings,
    tier: str,
    **kwargs: Any,
) -> PassResult:
    return consolidate(client, store, engine, settings, tier, now_ms=NOW, **kwargs)


# -- policy ------------------------------------------------------------------------------------


def test_age_rule_moves_exactly_the_memories_older_than_max_age(
    redis_client: redis.Redis, store: TierStore, settings: Settings, engine: EmbeddingEngine
) -> None:
    settings = policy(settings, stm_max_age_s=3600, consolidate_batch=3)
    old = stm_records(engine, aged("a", [5, 4, 2, 1.01]) + aged("b", [3]), seed=1)
    young = stm_records(engine, aged("a", [0.5, 0]) + aged("b", [1, 0.2]), seed=2)
    store.write("stm", old + young)  # b's 1 h memory is exactly max_age old: not older

    result = run(redis_client, store, engine, settings, "stm")

    assert (result.moved, result.deleted, result.batches) == (5, 0, 2)
    where = tiers_of(redis_client, old + young)
    assert {i for i, t in where.items() if t == "im"} == ids(old)
    assert {i for i, t in where.items() if t == "stm"} == ids(young)
    assert [store.count(t, "a") for t in TIERS] == [2, 4, 0]
    assert [store.count(t, "b") for t in TIERS] == [2, 1, 0]
    assert_indexes_match(redis_client, store, 9)
    again = run(redis_client, store, engine, settings, "stm")
    assert (again.moved, again.batches) == (0, 0)


def test_count_rule_moves_each_agents_oldest_beyond_the_limit(
    redis_client: redis.Redis, store: TierStore, settings: Settings, engine: EmbeddingEngine
) -> None:
    settings = policy(settings, stm_max_per_agent=3, consolidate_batch=2)
    a = stm_records(engine, aged("a", [0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1]), seed=1)
    b = stm_records(engine, aged("b", [0.9, 0.8]), seed=2)
    c = stm_records(engine, aged("c", [0.3, 0.2, 0.1]), seed=3)
    d = stm_records(engine, aged("d", [0.5, 0.4, 0.3, 0.2]), seed=4)
    store.write("stm", a + b + c + d)

    result = run(redis_client, store, engine, settings, "stm")

    assert result.moved == 5
    where = tiers_of(redis_client, a + b + c + d)
    assert {i for i, t in where.items() if t == "im"} == ids(a[:4] + d[:1])
    assert [store.count("stm", agent) for agent in "abcd"] == [3, 2, 3, 3]
    assert_indexes_match(redis_client, store, 16)


def test_both_rules_apply_age_first_then_count(
    redis_client: redis.Redis, store: TierStore, settings: Settings, engine: EmbeddingEngine
) -> None:
    settings = policy(settings, stm_max_age_s=3600, stm_max_per_agent=3)
    a_old = stm_records(engine, aged("a", [3, 2]), seed=1)
    a_young = stm_records(engine, aged("a", [0.5, 0.4, 0.3, 0.2, 0.1]), seed=2)
    b = stm_records(engine, aged("b", [0.4, 0.3, 0.2, 0.1]), seed=3)
    store.write("stm", a_old + a_young + b)

    result = run(redis_client, store, engine, settings, "stm")

    assert result.moved == 2 + 2 + 1
    where = tiers_of(redis_client, a_old + a_young + b)
    assert {i for i, t in where.items() if t == "im"} == ids(a_old + a_young[:2] + b[:1])
    assert [store.count("stm", agent) for agent in "ab"] == [3, 3]
    assert_indexes_match(redis_client, store, 11)


def test_disabled_policy_moves_nothing(
    redis_client: redis.Redis, store: TierStore, settings: Settings, engine: EmbeddingEngine
) -> None:
    settings = policy(settings)
    records = stm_records(engine, aged("a", [100, 50, 1]))
    store.write("stm", records)

    result = run(redis_client, store, engine, settings, "stm")

    assert (result.moved, result.deleted, result.batches) == (0, 0, 0)
    assert set(tiers_of(redis_client, records).values()) == {"stm"}
    assert scheduled_tiers(settings) == []
    assert not TierPolicy.from_settings(settings, "stm").enabled


def test_default_policy_schedules_stm_and_im_but_no_ltm_retention(settings: Settings) -> None:
    assert scheduled_tiers(settings) == ["stm", "im"]
    assert TierPolicy.from_settings(settings, "stm").describe() == "stm->im"
    with_retention = dataclasses.replace(settings, ltm_max_age_s=86_400.0 * 365)
    assert scheduled_tiers(with_retention) == ["stm", "im", "ltm"]
    assert TierPolicy.from_settings(with_retention, "ltm").describe() == "ltm retention"


def test_ltm_retention_deletes_by_age_and_count(
    redis_client: redis.Redis, store: TierStore, settings: Settings, engine: EmbeddingEngine
) -> None:
    records = stm_records(engine, aged("a", [9, 8, 7, 3, 2, 1]) + aged("b", [9, 1]))
    store.write("stm", records)
    down = policy(settings, stm_max_age_s=0, im_max_age_s=0)
    assert run(redis_client, store, engine, down, "stm").moved == 8
    assert run(redis_client, store, engine, down, "im").moved == 8
    off = run(redis_client, store, engine, settings, "ltm")  # default: retention off
    assert (off.deleted, store.count("ltm")) == (0, 8)

    retention = policy(settings, ltm_max_age_s=5 * 3600, ltm_max_per_agent=2)
    result = run(redis_client, store, engine, retention, "ltm")

    assert (result.moved, result.deleted) == (0, 3 + 1 + 1)
    left = {r.entry_id for r in records[4:6]} | {records[7].entry_id}
    assert {h.rsplit(":", 1)[1] for h in redis_client.zrange(KEYS.time_index("ltm"), 0, -1)} == left
    assert [store.count("ltm", agent) for agent in "ab"] == [2, 1]
    assert sum(redis_client.exists(KEYS.record(t, r.entry_id)) for t in TIERS for r in records) == 3


def test_max_batches_bounds_a_pass(
    redis_client: redis.Redis, store: TierStore, settings: Settings, engine: EmbeddingEngine
) -> None:
    settings = policy(settings, stm_max_age_s=0, consolidate_batch=3)
    records = stm_records(engine, aged("a", [float(h) for h in range(10, 0, -1)]))
    store.write("stm", records)

    result = run(redis_client, store, engine, settings, "stm", max_batches=2)

    assert (result.moved, result.batches) == (6, 2)
    assert [store.count(t) for t in TIERS] == [4, 6, 0]
    assert {i for i, t in tiers_of(redis_client, records).items() if t == "im"} == ids(records[:6])


# -- what a moved memory holds -----------------------------------------------------------------


def test_moved_vectors_equal_encoding_the_state_at_each_tier_and_knn_finds_them_first(
    redis_client: redis.Redis, store: TierStore, settings: Settings, engine: EmbeddingEngine
) -> None:
    settings = policy(settings, stm_max_age_s=0, im_max_age_s=0, consolidate_batch=7)
    placed = aged("a", [5, 4, 3, 2, 1]) + aged("b", [5, 4, 3, 2, 1]) + aged("c", [3, 2])
    records = stm_records(engine, placed, seed=5)
    store.write("stm", records)
    expected = engine.encode_states([json.loads(r.state_json or "{}") for r in records])

    assert run(redis_client, store, engine, settings, "stm").moved == 12
    im = store.read("im", [store.key("im", r.entry_id) for r in records])
    np.testing.assert_allclose(np.stack([r.vector for r in im]), expected["im"], atol=1e-4)
    assert_reconstructions(engine, "im", im)
    for source, moved in zip(records, im, strict=True):
        carried = ("entry_id", "agent_id", "agent_type", "step", "ts", "model_version")
        assert [getattr(moved, f) for f in carried] == [getattr(source, f) for f in carried]
        assert moved.importance == pytest.approx(source.importance)
    for i in (0, 6, 11):
        hits = store.search("im", expected["im"][i], k=3, agent_id=records[i].agent_id)
        assert hits[0].entry_id == records[i].entry_id
        assert hits[0].distance == pytest.approx(0.0, abs=1e-6)

    assert run(redis_client, store, engine, settings, "im").moved == 12
    ltm = store.read("ltm", [store.key("ltm", r.entry_id) for r in records])
    np.testing.assert_allclose(np.stack([r.vector for r in ltm]), expected["ltm"], atol=1e-4)
    assert_reconstructions(engine, "ltm", ltm)
    for i in (0, 6, 11):
        hits = store.search("ltm", expected["ltm"][i], k=3, agent_id=records[i].agent_id)
        assert hits[0].entry_id == records[i].entry_id
        assert hits[0].distance == pytest.approx(0.0, abs=1e-6)
    assert set(tiers_of(redis_client, records).values()) == {"ltm"}


def assert_reconstructions(
    engine: EmbeddingEngine, tier: str, records: Sequence[MemoryRecord]
) -> None:
    """Each record stores its vector decoded by `engine`, a byte a feature (1/510 at most off)."""
    rebuilt = [r.reconstruction for r in records]
    assert all(r is not None for r in rebuilt), "a record has no reconstruction"
    decoded = engine.decode(np.stack([r.vector for r in records]), tier)
    np.testing.assert_allclose(np.stack(rebuilt), decoded, atol=1 / 510 + 1e-6)  # type: ignore[arg-type]


def test_memories_of_another_model_are_encoded_again_from_their_raw_state(
    redis_client: redis.Redis,
    store: TierStore,
    settings: Settings,
    engine: EmbeddingEngine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """After a retrain: another model's vectors would mean nothing to this model's bottleneck."""
    settings = policy(settings, stm_max_age_s=0, im_max_age_s=0)
    fresh = stm_records(engine, aged("a", [4, 3, 2, 1]), seed=9)
    noise = np.random.default_rng(9).normal(size=(4, 384)).astype(np.float32)
    old = [
        dataclasses.replace(r, model_version="old-model", vector=v)
        for r, v in zip(fresh, noise, strict=True)
    ]
    old[3] = dataclasses.replace(old[3], state_json="{not json")  # no usable raw state
    store.write("stm", old)
    expected = engine.encode_states([json.loads(r.state_json or "") for r in fresh[:3]])

    result = run(redis_client, store, engine, settings, "stm")
    assert (result.moved, result.reencoded, result.without_state) == (4, 3, 1)
    im = store.read("im", [store.key("im", r.entry_id) for r in old])
    np.testing.assert_allclose(np.stack([r.vector for r in im[:3]]), expected["im"], atol=1e-4)
    np.testing.assert_allclose(im[3].vector, engine.compress(noise[3:], "stm")[0], atol=1e-5)
    assert [r.model_version for r in im] == [engine.version] * 3 + ["old-model"]
    assert_reconstructions(engine, "im", im)  # the last through this model's bottleneck
    assert "stm->im: 1 memories of another model have no usable raw state" in caplog.text

    # IM keeps no raw state (keep_state_after_stm off): those of another model move as they are.
    result = run(redis_client, store, engine, settings, "im")
    assert (result.moved, result.reencoded, result.without_state) == (4, 0, 1)
    ltm = store.read("ltm", [store.key("ltm", r.entry_id) for r in old])
    np.testing.assert_allclose(
        np.stack([r.vector for r in ltm]),
        engine.compress(np.stack([r.vector for r in im]), "im"),
        atol=1e-5,
    )
    assert [r.model_version for r in ltm] == [r.model_version for r in im]
    assert_reconstructions(engine, "ltm", ltm)


def old_model_records(
    engine: EmbeddingEngine, placed: Sequence[tuple[str, int]], seed: int
) -> list[MemoryRecord]:
    """STM records as another model wrote them: its version, vectors and features (of its own
    schema) this model never made."""
    records = stm_records(engine, placed, seed=seed)
    noise = np.random.default_rng(seed).normal(size=(len(records), 384)).astype(np.float32)
    return [
        dataclasses.replace(
            r, model_version="old-model", vector=v, features=np.ones(7, dtype=np.float32)
        )
        for r, v in zip(records, noise, strict=True)
    ]


def test_reencode_rewrites_other_models_memories_from_their_state_in_place(
    redis_client: redis.Redis, store: TierStore, settings: Settings, engine: EmbeddingEngine
) -> None:
    old = old_model_records(engine, aged("a", [4, 3, 2, 1]), seed=12)
    old[3] = dataclasses.replace(old[3], state_json=None)  # nothing to encode again
    current = stm_records(engine, aged("b", [4.5, 3.5]), seed=13)  # keys of their own
    store.write("stm", old + current)
    expected = engine.encode_states([json.loads(r.state_json or "") for r in old[:3]])["stm"]

    result = tiers.reencode(redis_client, store, engine, settings, "stm")

    assert (result.reencoded, result.without_state, result.skipped) == (3, 1, 0)
    after = store.read("stm", [store.key("stm", r.entry_id) for r in old + current])
    np.testing.assert_allclose(np.stack([r.vector for r in after[:3]]), expected, atol=1e-5)
    assert [r.model_version for r in after] == [engine.version] * 3 + ["old-model"] + [
        engine.version
    ] * 2
    assert [r.state_json for r in after] == [r.state_json for r in old + current]
    features = [r.features for r in after]
    np.testing.assert_array_equal(
        np.stack(features[:3]),
        engine.schema.extract_batch([json.loads(r.state_json or "") for r in old[:3]]),
    )  # the states' features under this model's schema, for recall's exact re-sort
    assert features[3] is None  # no state, no features
    np.testing.assert_array_equal(after[3].vector, old[3].vector)  # left as it was
    np.testing.assert_array_equal(after[4].vector, current[0].vector)
    hit = store.search("stm", expected[1], k=1, agent_id="a")[0]
    assert (hit.entry_id, hit.distance) == (old[1].entry_id, pytest.approx(0.0, abs=1e-6))
    assert_indexes_match(redis_client, store, 6)

    again = tiers.reencode(redis_client, store, engine, settings, "stm")
    assert (again.reencoded, again.without_state) == (0, 1)


def test_reencode_of_a_lower_tier_rewrites_the_reconstructions_it_encodes_again(
    redis_client: redis.Redis, store: TierStore, settings: Settings, engine: EmbeddingEngine
) -> None:
    # IM memories kept with their state (keep_state_after_stm), another model's, with that
    # model's reconstructions; one has no state to encode again.
    old = [
        dataclasses.replace(
            r, vector=engine.compress(r.vector[None, :], "stm")[0], reconstruction=np.ones(152)
        )
        for r in old_model_records(engine, aged("a", [4, 3, 2]), seed=14)
    ]
    old[2] = dataclasses.replace(old[2], state_json=None, features=None)
    store.write("im", old)

    result = tiers.reencode(redis_client, store, engine, settings, "im")

    assert (result.reencoded, result.without_state) == (2, 1)
    after = store.read("im", [store.key("im", r.entry_id) for r in old])
    expected = engine.encode_states([json.loads(r.state_json or "") for r in old[:2]])["im"]
    np.testing.assert_allclose(np.stack([r.vector for r in after[:2]]), expected, atol=1e-5)
    assert_reconstructions(engine, "im", after[:2])
    np.testing.assert_array_equal(after[2].reconstruction, np.ones(152))  # left as it was


def lower_records(
    engine: EmbeddingEngine, tier: str, placed: Sequence[tuple[str, int]], seed: int
) -> list[MemoryRecord]:
    """`tier` records as versions before stored reconstructions wrote them: none, no state."""
    records = stm_records(engine, placed, seed=seed)
    vectors = engine.encode_states([json.loads(r.state_json or "") for r in records])[tier]
    return [
        dataclasses.replace(r, vector=v, state_json=None, features=None)
        for r, v in zip(records, vectors, strict=True)
    ]


def test_reencode_gives_memories_stored_without_a_reconstruction_theirs(
    redis_client: redis.Redis, store: TierStore, settings: Settings, engine: EmbeddingEngine
) -> None:
    legacy = lower_records(engine, "ltm", aged("a", [5, 4, 3, 2]), seed=17)
    legacy[2] = dataclasses.replace(legacy[2], model_version="old-model")  # no state either
    legacy[3] = dataclasses.replace(legacy[3], reconstruction=np.ones(152))  # has its own
    store.write("ltm", legacy)

    result = tiers.reencode(redis_client, store, engine, settings, "ltm")

    assert (result.reconstructed, result.reencoded, result.without_state) == (3, 0, 1)
    after = store.read("ltm", [store.key("ltm", r.entry_id) for r in legacy])
    assert_reconstructions(engine, "ltm", after[:3])
    np.testing.assert_array_equal(np.stack([r.vector for r in after]), [r.vector for r in legacy])
    assert [r.model_version for r in after] == [r.model_version for r in legacy]
    np.testing.assert_array_equal(after[3].reconstruction, np.ones(152))
    again = tiers.reencode(redis_client, store, engine, settings, "ltm")
    assert (again.reconstructed, again.without_state) == (0, 1)


def test_reencode_and_a_consolidation_at_once_keep_every_memory_in_one_tier(
    redis_client: redis.Redis,
    redis_server: EmbeddedRedis,
    store: TierStore,
    settings: Settings,
    engine: EmbeddingEngine,
) -> None:
    old = old_model_records(engine, aged("a", [5, 4, 3, 2]), seed=14)
    store.write("stm", old)
    mover = redis.Redis.from_url(redis_server.url)
    moving = policy(settings, stm_max_age_s=0)

    class Racing:  # encodes like `engine`, but a consolidation moves everything first
        schema, version, dims = engine.schema, engine.version, engine.dims

        def encode_features(self, features: np.ndarray, tiers: Sequence[str]) -> Any:
            consolidate(mover, TierStore(mover, moving), engine, moving, "stm", now_ms=NOW)
            return engine.encode_features(features, tiers)

    result = tiers.reencode(redis_client, store, cast(EmbeddingEngine, Racing()), settings, "stm")
    mover.close()

    assert (result.reencoded, result.conflicts) == (0, 1)  # its batch was moved from under it
    assert set(tiers_of(redis_client, old).values()) == {"im"}
    im = store.read("im", [store.key("im", r.entry_id) for r in old])
    expected = engine.encode_states([json.loads(r.state_json or "") for r in old])["im"]
    np.testing.assert_allclose(np.stack([r.vector for r in im]), expected, atol=1e-4)
    assert_indexes_match(redis_client, store, 4)


def test_reencode_command_prints_what_it_did(
    redis_client: redis.Redis,
    store: TierStore,
    settings: Settings,
    engine: EmbeddingEngine,
    model_path: Path,
) -> None:
    store.write("stm", old_model_records(engine, aged("a", [2, 1]), seed=15))
    store.write("ltm", lower_records(engine, "ltm", aged("b", [3]), seed=16))
    assert settings.redis_url
    result = CliRunner().invoke(
        main,
        ["reencode", "--tiers", "ltm,stm"],
        env={"MT_REDIS_URL": settings.redis_url, "MT_MODEL_PATH": str(model_path)},
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"model {engine.version}"
    assert [line.split()[:5] for line in lines[1:]] == [
        ["tier", "re-encoded", "without", "state", "reconstructed"],
        ["stm", "2", "0", "0", "0"],  # re-encoded, without state, reconstructed, skipped
        ["ltm", "0", "0", "1", "0"],
    ]


@pytest.mark.parametrize("keep", [False, True])
def test_raw_state_is_dropped_after_stm_unless_kept(
    redis_client: redis.Redis,
    store: TierStore,
    settings: Settings,
    engine: EmbeddingEngine,
    keep: bool,
) -> None:
    settings = policy(settings, stm_max_age_s=0, im_max_age_s=0, keep_state_after_stm=keep)
    records = stm_records(engine, aged("a", [2, 1]))
    store.write("stm", records)
    keys = {tier: [store.key(tier, r.entry_id) for r in records] for tier in TIERS}

    run(redis_client, store, engine, settings, "stm")
    in_im = store.read("im", keys["im"])
    run(redis_client, store, engine, settings, "im")
    in_ltm = store.read("ltm", keys["ltm"])

    originals = [r.state_json for r in records]
    assert all(originals)
    expected = originals if keep else [None, None]
    assert [r.state_json for r in in_im] == expected
    assert [r.state_json for r in in_ltm] == expected
    assert redis_client.hexists(keys["ltm"][0], "state") is keep
    for moved in (in_im, in_ltm):  # the state's features go wherever the state goes
        for record, original in zip(moved, records, strict=True):
            if keep:
                assert record.features is not None and original.features is not None
                np.testing.assert_array_equal(record.features, original.features)
            else:
                assert record.features is None


# -- the agent set the count rule reads --------------------------------------------------------


def test_writes_add_agents_to_the_tier_set_and_passes_prune_emptied_agents(
    redis_client: redis.Redis, store: TierStore, settings: Settings, engine: EmbeddingEngine
) -> None:
    records = stm_records(engine, aged("a", [3, 2]) + aged("b", [3, 0.1]) + aged("c", [0.1]))
    store.write("stm", records)
    assert redis_client.smembers(KEYS.agents("stm")) == {"a", "b", "c"}

    result = run(redis_client, store, engine, policy(settings, stm_max_age_s=3600), "stm")

    assert result.moved == 3
    assert redis_client.smembers(KEYS.agents("im")) == {"a", "b"}
    # The age rule emptied 'a' in STM; the count rule's walk of the set drops it.
    run(redis_client, store, engine, policy(settings, stm_max_per_agent=10), "stm")
    assert redis_client.smembers(KEYS.agents("stm")) == {"b", "c"}


# -- atomicity, races and damage ---------------------------------------------------------------


def test_failure_between_batches_then_rerun_loses_and_duplicates_nothing(
    redis_client: redis.Redis, store: TierStore, settings: Settings, engine: EmbeddingEngine
) -> None:
    settings = policy(settings, stm_max_age_s=0, consolidate_batch=5)
    records = stm_records(engine, aged("a", range(20, 10, -1)) + aged("b", range(10, 0, -1)))
    store.write("stm", records)

    def fail_second(call: int) -> None:
        if call == 2:
            raise RuntimeError("injected: model failed")

    with pytest.raises(RuntimeError, match="injected"):
        run(redis_client, store, hooked(engine, fail_second), settings, "stm")
    assert Counter(tiers_of(redis_client, records).values()) == {"im": 5, "stm": 15}
    assert_indexes_match(redis_client, store, 20)

    result = run(redis_client, store, engine, settings, "stm")

    assert result.moved == 15
    assert set(tiers_of(redis_client, records).values()) == {"im"}
    assert_indexes_match(redis_client, store, 20)


@pytest.mark.parametrize(("chunk", "conflicts"), [(1000, 1), (3, 1), (2, 2)])
def test_a_source_moved_away_during_a_batch_is_not_resurrected(
    redis_client: redis.Redis,
    redis_server: EmbeddedRedis,
    store: TierStore,
    settings: Settings,
    engine: EmbeddingEngine,
    monkeypatch: pytest.MonkeyPatch,
    chunk: int,
    conflicts: int,
) -> None:
    """Records 1 and 2 change under the pass; chunks of 3 leave record 3's chunk to commit."""
    monkeypatch.setattr(tiers, "WATCH_CHUNK", chunk)
    settings = policy(settings, stm_max_age_s=0)
    records = stm_records(engine, aged("a", [5, 4, 3, 2]))
    store.write("stm", records)
    gone, rewritten = records[1], dataclasses.replace(records[2], importance=0.99)
    racer = TierStore(redis.Redis.from_url(redis_server.url), settings)

    def race(call: int) -> None:
        if call == 1:  # after the pass read the batch, before its EXEC
            with racer.client.pipeline() as pipe:  # another pass took it further down
                for command in racer.delete_commands("stm", [gone]):
                    pipe.execute_command(*command)
                pipe.execute()
            racer.write("ltm", [dataclasses.replace(gone, vector=np.zeros(32, np.float32))])
            racer.write("stm", [rewritten])  # a replay re-wrote it

    result = run(redis_client, store, hooked(engine, race), settings, "stm")
    racer.client.close()

    assert result.conflicts == conflicts
    assert (result.moved, result.batches) == (3, 1)
    where = tiers_of(redis_client, records)
    assert where == {r.entry_id: "ltm" if r is gone else "im" for r in records}
    moved = store.read("im", [store.key("im", rewritten.entry_id)])[0]
    assert moved.importance == pytest.approx(0.99)
    assert_indexes_match(redis_client, store, 4)


def test_stale_index_members_are_dropped_and_corrupt_records_left_in_place(
    redis_client: redis.Redis, store: TierStore, settings: Settings, engine: EmbeddingEngine
) -> None:
    settings = policy(settings, stm_max_age_s=0, consolidate_batch=2)
    records = stm_records(engine, aged("a", [6, 5, 4, 3, 2, 1]))
    store.write("stm", records)
    stale, corrupt = (store.key("stm", r.entry_id) for r in records[1:3])
    redis_client.delete(stale)  # evicted: its index members stay behind
    redis_client.hset(corrupt, "vec", b"short")

    result = run(redis_client, store, engine, settings, "stm")

    assert (result.moved, result.skipped) == (4, 1)
    assert redis_client.zrange(KEYS.time_index("stm"), 0, -1) == [corrupt]
    assert redis_client.exists(corrupt) == 1
    assert store.count("im") == 4
    assert stale not in redis_client.zrange(KEYS.time_index("stm"), 0, -1)


CRASH_SCRIPT = textwrap.dedent(
    """
    import sys, time
    import redis
    from memory_tiers import EmbeddingEngine, Settings
    from memory_tiers.store import TierStore
    from memory_tiers.tiers import consolidate

    url, model = sys.argv[1], sys.argv[2]
    settings = Settings(redis_url=url, stm_max_age_s=0, stm_max_per_agent=None,
                        consolidate_batch=10)
    client = redis.Redis.from_url(url)
    engine = EmbeddingEngine.from_checkpoint(model)
    print("ready", flush=True)
    consolidate(client, TierStore(client, settings), engine, settings, "stm",
                keep_going=lambda: time.sleep(0.02) is None)
    print("finished", flush=True)
    """
)


def test_kill_9_during_a_pass_then_rerun_loses_and_duplicates_nothing(
    redis_client: redis.Redis,
    redis_server: EmbeddedRedis,
    store: TierStore,
    settings: Settings,
    engine: EmbeddingEngine,
    model_path: Path,
) -> None:
    records = stm_records(engine, [(f"agent-{i % 7}", NOW - 1000 + i) for i in range(600)])
    store.write("stm", records)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(
        [sys.executable, "-c", CRASH_SCRIPT, redis_server.url, str(model_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        deadline = time.monotonic() + 60
        while store.count("im") < 100:
            assert proc.poll() is None, "the pass ended before it was killed"
            assert time.monotonic() < deadline, "the pass never got going"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    placed = Counter(tiers_of(redis_client, records).values())
    assert placed["stm"] > 0 and placed["im"] >= 100
    assert_indexes_match(redis_client, store, 600)

    settings = policy(settings, stm_max_age_s=0)
    result = consolidate(redis_client, store, engine, settings, "stm")

    assert result.moved == placed["stm"]
    assert set(tiers_of(redis_client, records).values()) == {"im"}
    assert_indexes_match(redis_client, store, 600)
    im = store.read("im", [store.key("im", r.entry_id) for r in records])
    expected = engine.compress(np.stack([r.vector for r in records]), "stm")
    np.testing.assert_allclose(np.stack([r.vector for r in im]), expected, atol=1e-4)


def test_engine_dims_that_do_not_fit_the_tiers_are_refused(
    redis_client: redis.Redis, store: TierStore, settings: Settings, engine: EmbeddingEngine
) -> None:
    odd = dataclasses.replace(settings, im_dim=64)
    with pytest.raises(ConfigError, match="im vectors have 128 dims, the im index 64"):
        consolidate(redis_client, TierStore(redis_client, odd), engine, odd, "stm")
