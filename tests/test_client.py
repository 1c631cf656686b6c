"""MemoryClient against the embedded Redis: stream writes, per-agent handles, recall, the CLI.

Tiers are filled the way the daemon and consolidation will: STM records hold the engine's
STM vectors and the raw state; IM and LTM records hold those vectors compressed, and their
reconstructions.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from click.testing import CliRunner
from redisvl.query.filter import Num

import memory_tiers.store as store_module
from memory_tiers import TIERS, EmbeddingEngine, EntryError, Keys, ModelError, Settings, StoreError
from memory_tiers.cli import main
from memory_tiers.client import MemoryClient, MemoryItem, MergedHit, Recall
from memory_tiers.protocol import encode_entry
from memory_tiers.server import EmbeddedRedis
from memory_tiers.sim import simulate_states
from memory_tiers.store import Hit, MemoryRecord, TierStore
from memory_tiers.tiers import reconstructions

T0 = 1_732_600_000_000
AGENT = "agent-7"
OTHER = "agent-8"
HOSTILE = "a}|@x:{"


@pytest.fixture
def client(redis_client: redis.Redis, settings: Settings, engine: EmbeddingEngine) -> MemoryClient:
    return MemoryClient(redis_client, settings, engine)


@pytest.fixture(scope="module")
def states() -> list[dict[str, Any]]:
    """30 distinct simulated states (different agents and ticks)."""
    return [dict(s) for s in simulate_states(30, num_agents=30, seed=5)]


def seed_tiers(
    engine: EmbeddingEngine,
    store: TierStore,
    agent_id: str,
    states: Sequence[Mapping[str, Any]],
    first_id: int = 0,
) -> dict[str, list[MemoryRecord]]:
    """Split `states` into thirds: STM (as ingested), IM and LTM (as consolidated).

    Memory i has step i, ts T0 + first_id + i and entry id `{ts}-0`.
    """
    features = engine.schema.extract_batch(states)
    stm = engine.encode_features(features)["stm"]  # (N, 384)
    third = len(states) // 3
    parts = {
        "stm": range(0, third),
        "im": range(third, 2 * third),
        "ltm": range(2 * third, len(states)),
    }
    vectors = {
        "stm": stm,
        "im": engine.compress(stm, "stm"),
        "ltm": engine.compress(engine.compress(stm, "stm"), "im"),
    }
    written: dict[str, list[MemoryRecord]] = {}
    for tier, indices in parts.items():
        rebuilt = reconstructions(engine, tier, vectors[tier])
        written[tier] = [
            MemoryRecord(
                entry_id=f"{T0 + first_id + i}-0",
                agent_id=agent_id,
                agent_type=str(states[i]["agent_type"]),
                step=i,
                ts=T0 + first_id + i,
                model_version=engine.version,
                vector=vectors[tier][i],
                state_json=json.dumps(states[i]) if tier == "stm" else None,
                features=features[i] if tier == "stm" else None,
                reconstruction=rebuilt[i],
            )
            for i in indices
        ]
        store.write(tier, written[tier])
    return written


def stored(features: np.ndarray) -> np.ndarray:
    """Features as a record's reconstruction keeps them: a byte each, steps of 1/255."""
    return np.round(np.clip(features, 0, 1) * 255) / 255


QUANTIZATION = (1 / 510) ** 2
"""The most a stored reconstruction moves a mean squared feature distance to itself."""


def stream_entries(redis_client: redis.Redis) -> list[tuple[str, dict[str, str]]]:
    """(entry id, fields) of every stream entry, oldest first (the client decodes replies)."""
    entries: list[tuple[str, dict[str, str]]] = redis_client.xrange(Keys().stream)  # type: ignore[assignment]
    return [(entry_id, dict(fields)) for entry_id, fields in entries]


def all_hits(recall: Recall) -> list[Hit]:
    return [hit for hits in recall.by_tier.values() for hit in hits]


# -- writes ------------------------------------------------------------------------------------


def test_remember_xadds_exactly_the_protocol_fields(
    client: MemoryClient, redis_client: redis.Redis
) -> None:
    state = {"health": 50.5, "agent_type": "explorer", "perception": [[0, 1], [2, 3]]}
    first = client.remember(AGENT, state, step=4, ts=T0, importance=0.75)
    second = client.remember(AGENT, {"health": 1}, kind="action")

    entries = stream_entries(redis_client)
    assert [entry_id for entry_id, _ in entries] == [first, second]
    assert entries[0][1] == encode_entry(AGENT, state, 4, T0, "state", 0.75)
    assert entries[0][1]["state"] == json.dumps(state, separators=(",", ":"))
    assert entries[1][1] == {"agent_id": AGENT, "state": '{"health":1}', "kind": "action"}


def test_remember_many_writes_in_order_and_returns_the_ids(
    client: MemoryClient, redis_client: redis.Redis
) -> None:
    items: list[MemoryItem] = [
        {"agent_id": f"a{i}", "state": {"health": i}, "step": i, "ts": T0 + i} for i in range(5)
    ]
    items.append({"agent_id": "z", "state": {"x": 1}, "kind": "action", "importance": 2.5})

    ids = client.remember_many(items)

    entries = stream_entries(redis_client)
    assert [entry_id for entry_id, _ in entries] == ids
    assert len(set(ids)) == 6
    expected = [encode_entry(**item) for item in items]
    assert [fields for _, fields in entries] == expected
    assert entries[2][1] == {
        "agent_id": "a2",
        "state": '{"health":2}',
        "kind": "state",
        "step": "2",
        "ts": str(T0 + 2),
    }
    assert client.remember_many([]) == []


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ({"agent_id": AGENT, "state": {"health": math.nan}}, "NaN"),
        ({"agent_id": AGENT, "state": [1, 2]}, "state must be a dict"),
        ({"agent_id": "", "state": {"health": 1}}, "agent_id"),
        ({"agent_id": AGENT, "state": {}, "kind": "dream"}, "kind"),
        ({"agent_id": AGENT, "state": {}, "stpe": 3}, "unknown keys ['stpe']"),
        ({"state": {}}, "missing agent_id"),
    ],
)
def test_invalid_items_raise_entry_error_and_write_nothing(
    client: MemoryClient, redis_client: redis.Redis, item: dict[str, Any], message: str
) -> None:
    client.remember(AGENT, {"health": 1})
    good = {"agent_id": AGENT, "state": {"health": 2}}

    with pytest.raises(EntryError, match="item 1: ") as caught:
        client.remember_many([good, item, good])
    assert message in str(caught.value)
    if "agent_id" in item and "stpe" not in item:
        with pytest.raises(EntryError):
            client.remember(**item)
    assert redis_client.xlen(Keys().stream) == 1


def test_agent_memory_logs_states_and_actions_for_its_agent(
    client: MemoryClient, redis_client: redis.Redis
) -> None:
    memory = client.agent(AGENT)
    action = {"action_type": "gather", "action_params": {"amount": 3}}
    state_id = memory.log_state({"health": 80}, step=1, ts=T0)
    action_id = memory.log_action(action, step=1, importance=0.5)

    entries = dict(stream_entries(redis_client))
    assert entries[state_id] == encode_entry(AGENT, {"health": 80}, 1, T0, "state")
    assert entries[action_id] == encode_entry(AGENT, action, 1, None, "action", 0.5)
    assert entries[action_id]["kind"] == "action"
    with pytest.raises(EntryError, match="empty"):
        client.agent("")
    with pytest.raises(EntryError, match="whitespace"):
        client.agent(" a")


def test_a_writer_never_loads_the_model(
    redis_server: EmbeddedRedis, redis_client: redis.Redis, tmp_path: Path
) -> None:
    missing = tmp_path / "absent.pt"
    with MemoryClient.from_url(redis_server.url, model_path=str(missing)) as client:
        entry_id = client.agent(AGENT).log_state({"health": 3})
        assert redis_client.xrange(Keys().stream) == [
            (entry_id, {"agent_id": AGENT, "state": '{"health":3}', "kind": "state"})
        ]
        with pytest.raises(ModelError, match=r"absent\.pt"):
            client.recall(AGENT, {"health": 3})


def test_the_model_is_loaded_on_first_recall(
    redis_server: EmbeddedRedis, redis_client: redis.Redis, model_path: Path, states: list[Any]
) -> None:
    settings = Settings(redis_url=redis_server.url, model_path=str(model_path))
    with MemoryClient.from_settings(settings) as client:
        recall = client.recall(AGENT, states[0])  # indexes created, nothing stored yet
        assert recall.by_tier == {"stm": [], "im": [], "ltm": []}
        assert recall.merged == []
        assert client.engine.dims == {"stm": 384, "im": 128, "ltm": 32}


# -- recall ------------------------------------------------------------------------------------


def test_recall_of_a_stored_state_finds_it_first(
    client: MemoryClient, engine: EmbeddingEngine, store: TierStore, states: list[Any]
) -> None:
    written = seed_tiers(engine, store, AGENT, states)
    target = written["stm"][3]

    recall = client.recall(AGENT, states[3], k=5)

    stm = recall.by_tier["stm"]
    assert stm[0].key == store.key("stm", target.entry_id)
    assert stm[0].distance == pytest.approx(0.0, abs=1e-6)
    assert stm[0].state == states[3]
    assert (stm[0].step, stm[0].ts, stm[0].agent_id) == (3, target.ts, AGENT)
    assert recall.merged[0].hit.key == stm[0].key
    assert recall.merged[0].tier == "stm"
    assert recall.merged[0].exact
    assert recall.merged[0].feature_distance == 0.0
    assert recall.query_tier is None
    np.testing.assert_array_equal(recall.reference, engine.schema.extract(states[3]))


def expected_distance(engine: EmbeddingEngine, query: Mapping[str, Any], item: MergedHit) -> float:
    """What a state query's recall ranks `item` by: exact on a state, else its reconstruction
    against the midpoint of the query's features and its reconstruction at the tier."""
    if item.hit.state is not None:
        diff = engine.schema.extract(item.hit.state) - engine.schema.extract(query)
    else:
        assert item.hit.vector is not None
        features = engine.schema.extract(query)
        query_vector = engine.encode_features(features[None, :])[item.tier]
        midpoint = (engine.decode(query_vector, item.tier) + features) / 2
        diff = stored(engine.decode(item.hit.vector, item.tier)) - midpoint
    return float(np.mean(diff.astype(np.float64) ** 2))


def test_a_state_query_ranks_states_exactly_and_vectors_by_their_reconstruction(
    client: MemoryClient, engine: EmbeddingEngine, store: TierStore, states: list[Any]
) -> None:
    seed_tiers(engine, store, AGENT, states)

    recall = client.agent(AGENT).recall(states[14], k=30)

    assert len(recall.merged) == 30
    for item in recall.merged:
        assert item.exact == (item.tier == "stm")
        assert item.feature_distance == pytest.approx(
            expected_distance(engine, states[14], item), rel=1e-5, abs=1e-9
        )
    distances = [m.feature_distance for m in recall.merged]
    assert distances == sorted(distances)
    # Its own IM memory reconstructs as the query does: a quarter of its reconstruction error.
    own = next(m for m in recall.merged if m.hit.step == 14)
    assert own.hit.vector is not None
    error = engine.decode(own.hit.vector, "im")[0] - engine.schema.extract(states[14])
    # (Its reconstruction stored a byte a feature moves that by well under 1%.)
    assert own.feature_distance == pytest.approx(float(np.mean(error**2)) / 4, rel=0.01)


def test_stored_features_are_read_only_where_the_serving_model_wrote_them(
    client: MemoryClient, engine: EmbeddingEngine, store: TierStore, states: list[Any]
) -> None:
    # Four STM memories of the same state: features as ingest writes them, features that
    # are plainly wrong (all 1), wrong features of another model's schema, and none at all
    # (a record written before features were stored).
    true = engine.schema.extract(states[3])
    ones = np.ones_like(true)
    vector = engine.encode_features(true[None, :])["stm"][0]
    kinds = {"own": (engine.version, true), "wrong": (engine.version, ones),
             "older": ("older-model", ones), "none": (engine.version, None)}  # fmt: skip
    store.write(
        "stm",
        [
            MemoryRecord(
                entry_id=f"{T0 + i}-0", agent_id=AGENT, agent_type="explorer", step=i,
                ts=T0 + i, model_version=version, vector=vector,
                state_json=json.dumps(states[3]), features=features,
            )
            for i, (version, features) in enumerate(kinds.values())
        ],
    )  # fmt: skip
    query = states[5]

    recall = client.recall(AGENT, query, k=4, tiers="stm")

    measured = {list(kinds)[m.hit.step]: m.feature_distance for m in recall.merged}
    exact = float(np.mean((true - engine.schema.extract(query)) ** 2))
    wrong = float(np.mean((ones - engine.schema.extract(query)) ** 2))
    assert measured == pytest.approx({"own": exact, "wrong": wrong, "older": exact, "none": exact})
    assert all(m.exact for m in recall.merged)


def test_lower_tiers_rank_by_the_reconstruction_each_record_stores(
    client: MemoryClient, engine: EmbeddingEngine, store: TierStore, states: list[Any]
) -> None:
    # Four IM memories with one vector: one stores the query's own reference as its
    # reconstruction, one a reconstruction of all 1s, one none (stored before records kept
    # them: its vector is decoded at recall), one a reconstruction of another schema's width.
    query = states[5]
    features = engine.schema.extract(query)
    query_im = engine.encode_features(features[None, :])["im"]
    reference = (engine.decode(query_im, "im")[0] + features) / 2
    vector = engine.encode_states([states[9]])["im"][0]
    kinds = {
        "reference": reference, "ones": np.ones_like(reference), "none": None,
        "other width": np.ones(100, np.float32),
    }  # fmt: skip
    store.write(
        "im",
        [
            MemoryRecord(
                entry_id=f"{T0 + i}-0", agent_id=AGENT, agent_type="explorer", step=i,
                ts=T0 + i, model_version=engine.version, vector=vector, reconstruction=rebuilt,
            )
            for i, rebuilt in enumerate(kinds.values())
        ],
    )  # fmt: skip

    recall = client.recall(AGENT, query, k=4, tiers="im")

    measured = {list(kinds)[m.hit.step]: m.feature_distance for m in recall.merged}
    decoded = engine.decode(vector[None, :], "im")[0]
    assert measured == pytest.approx(
        {
            "reference": float(np.mean((stored(reference) - reference) ** 2)),
            "ones": float(np.mean((1 - reference) ** 2)),
            "none": float(np.mean((decoded - reference) ** 2)),
            "other width": math.inf,
        },
        rel=1e-4,
    )
    assert measured["reference"] <= QUANTIZATION
    assert [m.hit.step for m in recall.merged][::3] == [0, 3]  # first, and last
    assert not any(m.exact for m in recall.merged)


def test_a_vector_query_ranks_every_tier_by_reconstruction(
    client: MemoryClient, engine: EmbeddingEngine, store: TierStore, states: list[Any]
) -> None:
    seed_tiers(engine, store, AGENT, states)
    stm_vector = engine.encode_states([states[4]])["stm"][0]

    recall = client.recall(AGENT, stm_vector, k=8)

    assert not any(m.exact for m in recall.merged)
    assert recall.merged[0].hit.step == 4
    assert recall.merged[0].feature_distance == pytest.approx(0.0, abs=1e-9)
    for item in recall.merged:
        assert item.hit.vector is not None
        query = engine.decode(stm_vector[None, :], "stm")
        rebuilt = engine.decode(item.hit.vector, item.tier)
        if item.tier != "stm":
            query = engine.decode(recall_vector(engine, stm_vector, item.tier), item.tier)
            rebuilt = stored(rebuilt)
        diff = rebuilt - query
        assert item.feature_distance == pytest.approx(float(np.mean(diff**2)), rel=1e-5, abs=1e-9)


def recall_vector(engine: EmbeddingEngine, stm_vector: np.ndarray, tier: str) -> np.ndarray:
    """An STM vector compressed down to `tier`, as recall reaches lower tiers exactly."""
    im = engine.compress(stm_vector[None, :], "stm")
    return im if tier == "im" else engine.compress(im, "im")


def test_recall_over_fetches_candidates_and_keeps_the_k_nearest_states(
    redis_client: redis.Redis,
    settings: Settings,
    engine: EmbeddingEngine,
    store: TierStore,
    states: list[Any],
) -> None:
    stm = seed_tiers(engine, store, AGENT, states)["stm"]
    query = states[20]  # stored in LTM only: its STM neighbours are other states
    exact = engine.schema.extract_batch([states[r.step] for r in stm])
    nearest = np.argsort(np.mean((exact - engine.schema.extract(query)) ** 2, axis=1))[:3]
    knn = store.search("stm", engine.encode_states([query])["stm"][0], 3, agent_id=AGENT)

    recall = MemoryClient(redis_client, settings, engine).recall(AGENT, query, k=3, tiers="stm")
    plain = MemoryClient(
        redis_client, dataclasses.replace(settings, recall_candidates=3), engine
    ).recall(AGENT, query, k=3, tiers="stm")

    # 10 STM memories, 50 candidates: every one was re-sorted, so the 3 kept are the nearest.
    assert [h.step for h in recall.by_tier["stm"]] == [stm[i].step for i in nearest]
    # Without over-fetching, the same 3 that KNN found, re-sorted.
    assert {h.key for h in plain.by_tier["stm"]} == {h.key for h in knn}


def test_recall_returns_typed_hits_of_every_tier_and_a_sorted_merge(
    client: MemoryClient, engine: EmbeddingEngine, store: TierStore, states: list[Any]
) -> None:
    written = seed_tiers(engine, store, AGENT, states)

    recall = client.recall(AGENT, states[0], k=4)

    assert set(recall.by_tier) == set(TIERS)
    for tier in TIERS:
        hits = recall.by_tier[tier]
        assert len(hits) == 4
        assert all(h.tier == tier and h.agent_id == AGENT for h in hits)
        ranked = [
            expected_distance(engine, states[0], MergedHit(tier, h, 0.0, False)) for h in hits
        ]
        assert ranked == sorted(ranked)
        keys = {store.key(tier, r.entry_id) for r in written[tier]}
        assert {h.key for h in hits} <= keys
        assert all(h.vector is not None and h.vector.shape == (client.dims[tier],) for h in hits)
        if tier == "stm":
            assert all(h.state == states[h.step] for h in hits)
        else:
            assert all(h.state is None for h in hits)
        assert all(isinstance(h.step, int) and isinstance(h.ts, int) for h in hits)
    assert len(recall.merged) == len(recall) == 4
    distances = [m.feature_distance for m in recall.merged]
    assert distances == sorted(distances)
    assert all(isinstance(m, MergedHit) and m.tier == m.hit.tier for m in recall.merged)
    some = recall.merged[-1]
    assert some.feature_distance == pytest.approx(
        expected_distance(engine, states[0], some), rel=1e-5, abs=1e-9
    )


def test_merged_list_ranks_all_tiers_together(
    client: MemoryClient, engine: EmbeddingEngine, store: TierStore, states: list[Any]
) -> None:
    seed_tiers(engine, store, AGENT, states)

    recall = client.recall(AGENT, states[0], k=30)

    assert len(recall.merged) == 30
    assert {m.tier for m in recall.merged} == set(TIERS)
    assert [m.feature_distance for m in recall.merged] == sorted(
        m.feature_distance for m in recall.merged
    )


def test_recall_returns_only_the_agents_own_memories(
    client: MemoryClient, engine: EmbeddingEngine, store: TierStore, states: list[Any]
) -> None:
    mine = seed_tiers(engine, store, AGENT, states)
    theirs = seed_tiers(engine, store, OTHER, states, first_id=1000)  # identical states

    recall = client.recall(AGENT, states[2], k=30)

    assert recall.by_tier["stm"][0].key == store.key("stm", mine["stm"][2].entry_id)
    assert {h.agent_id for h in all_hits(recall)} == {AGENT}
    own = {store.key(t, r.entry_id) for t, records in mine.items() for r in records}
    assert {h.key for h in all_hits(recall)} == own
    other = client.agent(OTHER).recall(states[2], k=1, tiers=("stm",))
    assert [h.key for h in other.by_tier["stm"]] == [store.key("stm", theirs["stm"][2].entry_id)]


def test_hostile_agent_ids_get_only_their_own_memories(
    client: MemoryClient, engine: EmbeddingEngine, store: TierStore, states: list[Any]
) -> None:
    agents = (HOSTILE, "a", "x", "@agent_id:{a}", "a*")
    written = {
        agent: seed_tiers(engine, store, agent, states[:9], first_id=100 * n)
        for n, agent in enumerate(agents)
    }

    for agent in agents:
        recall = client.agent(agent).recall(states[1], k=9)
        keys = {h.key for h in all_hits(recall)}
        own = {store.key(t, r.entry_id) for t, recs in written[agent].items() for r in recs}
        assert keys == own, agent
        assert recall.by_tier["stm"][0].key == store.key("stm", written[agent]["stm"][1].entry_id)


def test_a_search_filter_that_widened_still_returns_only_the_agents_own_memories(
    client: MemoryClient,
    engine: EmbeddingEngine,
    store: TierStore,
    states: list[Any],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    mine = seed_tiers(engine, store, AGENT, states)
    seed_tiers(engine, store, OTHER, states, first_id=1000)  # identical states, nearer ties
    monkeypatch.setattr(store_module, "_filter", lambda agent_id, step_range, extra: None)

    recall = client.recall(AGENT, states[2], k=30)

    own = {store.key(t, r.entry_id) for t, records in mine.items() for r in records}
    assert {h.agent_id for h in all_hits(recall)} == {AGENT}
    assert {h.key for h in all_hits(recall)} <= own
    assert recall.by_tier["stm"], "the agent's own nearest memories are still found"
    assert "returned other agents' keys" in caplog.text


def test_step_range_and_filters_narrow_the_search(
    client: MemoryClient, engine: EmbeddingEngine, store: TierStore, states: list[Any]
) -> None:
    seed_tiers(engine, store, AGENT, states)

    recall = client.recall(AGENT, states[0], k=30, step_range=(5, 14))

    assert sorted(h.step for h in all_hits(recall)) == list(range(5, 15))
    assert {h.step for h in recall.by_tier["stm"]} == set(range(5, 10))
    assert {h.step for h in recall.by_tier["im"]} == set(range(10, 15))
    assert recall.by_tier["ltm"] == []
    late = client.recall(AGENT, states[0], k=30, filters=Num("ts") >= T0 + 25)
    assert sorted(h.step for h in all_hits(late)) == [25, 26, 27, 28, 29]


def test_tiers_argument_limits_the_searched_tiers(
    client: MemoryClient, engine: EmbeddingEngine, store: TierStore, states: list[Any]
) -> None:
    ltm = seed_tiers(engine, store, AGENT, states)["ltm"]

    recall = client.recall(AGENT, ltm[5].vector, k=3, tiers=("ltm",))  # step 25's

    assert list(recall.by_tier) == ["ltm"]
    assert {m.tier for m in recall.merged} == {"ltm"}
    assert recall.by_tier["ltm"][0].step == 25
    with pytest.raises(ValueError, match="expected some of stm, im, ltm"):
        client.recall(AGENT, states[0], tiers=("stm", "mtm"))
    with pytest.raises(ValueError, match="k=0"):
        client.recall(AGENT, states[0], k=0)


@pytest.mark.parametrize("tier", TIERS)
def test_vector_queries_of_each_tier_size(
    client: MemoryClient, engine: EmbeddingEngine, store: TierStore, states: list[Any], tier: str
) -> None:
    written = seed_tiers(engine, store, AGENT, states)
    target = written[tier][2]

    recall = client.recall(AGENT, target.vector, k=3)

    assert recall.query_tier == tier
    hits = recall.by_tier[tier]
    assert hits[0].key == store.key(tier, target.entry_id)
    assert hits[0].distance == pytest.approx(0.0, abs=1e-6)
    assert all(len(recall.by_tier[t]) == 3 for t in TIERS)
    np.testing.assert_allclose(
        recall.reference, engine.decode(target.vector[None, :], tier)[0], rtol=1e-6
    )
    # Its own memory decodes to exactly the query features (IM and LTM: to their stored bytes).
    alone = client.recall(AGENT, target.vector, k=10, tiers=(tier,))
    own = next(m for m in alone.merged if m.hit.key == hits[0].key)
    assert own.feature_distance == pytest.approx(0.0, abs=QUANTIZATION if tier != "stm" else 1e-9)


def test_an_stm_vector_reaches_its_consolidated_copies_exactly(
    client: MemoryClient, engine: EmbeddingEngine, store: TierStore, states: list[Any]
) -> None:
    written = seed_tiers(engine, store, AGENT, states)
    ltm_target = written["ltm"][0]  # state 20, consolidated twice
    stm_vector = engine.encode_states([states[ltm_target.step]])["stm"][0]

    recall = client.recall(AGENT, list(stm_vector), k=2, tiers=("stm", "ltm"))

    assert recall.by_tier["ltm"][0].key == store.key("ltm", ltm_target.entry_id)
    assert recall.by_tier["ltm"][0].distance == pytest.approx(0.0, abs=1e-4)


@pytest.mark.parametrize("size", [0, 31, 100, 385])
def test_a_vector_of_no_tier_size_is_refused(client: MemoryClient, size: int) -> None:
    with pytest.raises(ValueError, match=r"384 \(stm\) or 128 \(im\) or 32 \(ltm\)"):
        client.recall(AGENT, np.zeros(size, dtype=np.float32))


def test_bad_queries_are_refused_with_a_reason(client: MemoryClient) -> None:
    with pytest.raises(ValueError, match="1-D"):
        client.recall(AGENT, np.zeros((2, 32)))
    with pytest.raises(ValueError, match="NaN"):
        client.recall(AGENT, np.full(32, np.nan))
    with pytest.raises(ValueError, match="health"):
        client.recall(AGENT, {"health": "very"})
    with pytest.raises(EntryError, match="empty"):
        client.recall("", {"health": 1})


def test_hits_of_every_tier_reconstruct_to_readable_states(
    client: MemoryClient, engine: EmbeddingEngine, store: TierStore, states: list[Any]
) -> None:
    seed_tiers(engine, store, AGENT, states)

    recall = client.agent(AGENT).recall(states[0], k=2)

    for tier in TIERS:
        hit = recall.by_tier[tier][0]
        rebuilt = client.reconstruct(hit)
        assert rebuilt.tier == tier
        assert set(rebuilt.state) >= {"health", "energy", "perception"}
        assert 0.0 <= rebuilt.state["health"] <= 100.0
    first = recall.merged[0]
    assert first.hit.vector is not None
    np.testing.assert_allclose(
        client.reconstruct(first).features, engine.decode(first.hit.vector, first.tier)[0]
    )


# -- CLI ---------------------------------------------------------------------------------------


def test_query_command_prints_the_merged_hits_as_a_table(
    redis_server: EmbeddedRedis,
    engine: EmbeddingEngine,
    store: TierStore,
    model_path: Path,
    states: list[Any],
) -> None:
    written = seed_tiers(engine, store, AGENT, states)
    env = {"MT_REDIS_URL": redis_server.url, "MT_MODEL_PATH": str(model_path)}

    result = CliRunner().invoke(
        main,
        ["query", "--agent", AGENT, "--state", json.dumps(states[4]), "--k", "6"],
        env=env,
    )

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    header = lines[0].split()
    assert header[:4] == ["rank", "tier", "feature_dist", "tier_dist"]
    rows = [line.split() for line in lines[1:] if line.strip()]
    assert len(rows) == 6
    key = store.key("stm", written["stm"][4].entry_id)
    assert rows[0][:2] == ["1", "stm"]
    assert key in lines[1]
    assert states[4]["agent_type"] in lines[1]
    assert [int(r[0]) for r in rows] == list(range(1, 7))


def test_query_command_needs_a_redis_url(model_path: Path) -> None:
    env = {"MT_REDIS_URL": None, "MT_MODEL_PATH": str(model_path)}

    result = CliRunner().invoke(main, ["query", "--agent", AGENT, "--state", "{}"], env=env)

    assert result.exit_code == 2
    assert "MT_REDIS_URL" in result.output
    assert "empty" in result.output


def test_query_command_refuses_bad_json(redis_server: EmbeddedRedis, model_path: Path) -> None:
    env = {"MT_REDIS_URL": redis_server.url, "MT_MODEL_PATH": str(model_path)}

    result = CliRunner().invoke(main, ["query", "--agent", AGENT, "--state", "[1"], env=env)

    assert result.exit_code == 2
    assert "--state" in result.output


def test_redis_failures_are_store_errors_with_context() -> None:
    with MemoryClient.from_url("redis://127.0.0.1:1/0") as client:
        with pytest.raises(StoreError, match=r"XADD to mt:states for agent 'agent-7'"):
            client.remember(AGENT, {"health": 1})
        with pytest.raises(StoreError, match="pipelined XADD of 2 entries"):
            client.remember_many([{"agent_id": AGENT, "state": {}}] * 2)


def test_a_client_of_a_hung_redis_fails_after_its_socket_timeout(
    redis_server: EmbeddedRedis,
) -> None:
    import socket

    from memory_tiers.client import SOCKET_CONNECT_TIMEOUT_S, SOCKET_TIMEOUT_S

    with MemoryClient.from_url(redis_server.url) as healthy:
        options = healthy.redis.connection_pool.connection_kwargs
        assert (options["socket_timeout"], options["socket_connect_timeout"]) == (
            SOCKET_TIMEOUT_S, SOCKET_CONNECT_TIMEOUT_S,
        )  # fmt: skip
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never answers
        port = silent.getsockname()[1]
        url = f"redis://127.0.0.1:{port}/0?socket_timeout=0.2"
        with MemoryClient.from_url(url) as hung:
            started = time.monotonic()
            with pytest.raises(StoreError, match="Timeout"):
                hung.remember("a", {"health": 1})
            assert time.monotonic() - started < 5  # the URL's 0.2 s, a few retries
