"""State fields as record attributes: written by ingest, carried down the tiers, and recall's
`where=` filters, exact on a real Redis."""

from __future__ import annotations

import dataclasses
import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from click.testing import CliRunner
from test_ingest import wait_for, xadd_states
from test_tiers import NO_RULES

from memory_tiers import EmbeddingEngine, Keys, Settings
from memory_tiers.attributes import attribute_name, attribute_values, state_attributes
from memory_tiers.cli import main
from memory_tiers.client import MemoryClient
from memory_tiers.features import default_schema
from memory_tiers.ingest import Ingestor
from memory_tiers.server import EmbeddedRedis
from memory_tiers.sim import simulate_states
from memory_tiers.store import MemoryRecord, TierStore
from memory_tiers.tiers import consolidate

KEYS = Keys()
AGENT, OTHER = "agent-1", "agent-2"
STATUSES = ("idle", "active", "resting")


def test_attribute_names_are_prefixed_and_distinct() -> None:
    assert attribute_name("health") == "s_health"
    odd = [attribute_name(n) for n in ("a b", "a-b", "a.b")]
    assert len(set(odd)) == 3 and all(n.startswith("s_a_b_") for n in odd)


def test_a_state_gives_the_attributes_it_can_index() -> None:
    attributes = state_attributes(default_schema())
    state = {"health": 80, "energy": float("nan"), "resources": True, "status": "idle",
             "agent_type": "a\x1fb", "current_action": 3, "x_position": -2.5}  # fmt: skip
    assert attribute_values(attributes, state) == {
        "s_health": 80.0,
        "s_x_position": -2.5,
        "s_status": "idle",
    }  # NaN, a bool, a control character and a number for a category are left out


def test_records_keep_their_attributes_from_ingest_down_to_ltm(
    redis_client: redis.Redis, store: TierStore, settings: Settings, engine: EmbeddingEngine
) -> None:
    states = simulate_states(6, num_agents=2, seed=3)
    ids = xadd_states(redis_client, states)
    ingestor = Ingestor(redis_client, engine, settings, "c1", store=store)
    ingestor.ensure_group()
    ingestor.process(ingestor.read_new())
    expected = {
        entry_id: attribute_values(store.state_attributes, state)
        for entry_id, state in zip(ids, states, strict=True)
    }
    assert all(len(values) == 8 for values in expected.values())  # 5 numbers, 3 categories

    numeric = {a.name for a in store.state_attributes if a.numeric}
    names = [a.name for a in store.state_attributes]

    def stored(tier: str) -> dict[str, dict[str, Any]]:
        found = {}
        for entry_id in ids:
            values = redis_client.hmget(KEYS.record(tier, entry_id), names)
            found[entry_id] = {
                name: float(value) if name in numeric else value
                for name, value in zip(names, values, strict=True)
                if value is not None
            }
        return found

    assert stored("stm") == expected
    assert {redis_client.hget(KEYS.record("stm", i), "kind") for i in ids} == {"state"}
    policy = dataclasses.replace(settings, **{**NO_RULES, "stm_max_age_s": 0, "im_max_age_s": 0})
    later = int(time.time() * 1000) + 60_000  # every record is older than 0 s then
    assert consolidate(redis_client, store, engine, policy, "stm", now_ms=later).moved == 6
    assert stored("im") == expected  # the state is dropped, its attributes are not
    assert consolidate(redis_client, store, engine, policy, "im", now_ms=later).moved == 6
    assert stored("ltm") == expected
    assert {redis_client.hget(KEYS.record("ltm", i), "kind") for i in ids} == {"state"}


def test_kinds_keep_actions_out_or_in(
    redis_client: redis.Redis, store: TierStore, settings: Settings, engine: EmbeddingEngine
) -> None:
    client = MemoryClient(redis_client, settings, engine)
    state = simulate_states(1, seed=4)[0]
    action = {"action_type": "gather", "action_params": {"amount": 3}, "outcome": {"ok": 1}}
    ids = {
        "state": client.remember(AGENT, state, step=1),
        "action": client.remember(AGENT, action, step=2, kind="action"),
    }
    ingestor = Ingestor(redis_client, engine, settings, "c1", store=store)
    ingestor.ensure_group()
    assert ingestor.process(ingestor.read_new())[1].stored == 2

    def found(**options: Any) -> set[str]:
        return {m.hit.entry_id for m in client.recall(AGENT, state, k=5, **options).merged}

    assert found() == set(ids.values())  # actions are recalled like states by default
    assert found(kinds=("state",)) == {ids["state"]}
    assert found(kinds=["action"]) == {ids["action"]}
    with pytest.raises(ValueError, match="kinds \\['thought'\\]: expected some of state, action"):
        client.recall(AGENT, state, kinds=["thought"])


def seed(engine: EmbeddingEngine, store: TierStore, tier: str = "stm") -> list[dict[str, Any]]:
    """60 memories of AGENT with health = step, status cycling, every 7th without health;
    and 20 of OTHER, all matching any filter below."""
    base = simulate_states(1, seed=1)[0]
    states = []
    for i in range(80):
        state = {**base, "health": float(i % 60), "status": STATUSES[i % 3]}
        if i < 60 and i % 7 == 0:
            del state["health"]
        states.append(state)
    vectors = engine.encode_states(states)[tier]
    store.write(
        tier,
        [
            MemoryRecord(
                entry_id=f"{1000 + i}-0", agent_id=AGENT if i < 60 else OTHER,
                agent_type="explorer", step=i % 60, ts=1000 + i,
                model_version=engine.version, vector=vectors[i],
                state_json=json.dumps(state) if tier == "stm" else None,
                attributes=attribute_values(store.state_attributes, state),
            )
            for i, state in enumerate(states)
        ],
    )  # fmt: skip
    return states[:60]


def every_candidate(
    redis_client: redis.Redis, settings: Settings, engine: EmbeddingEngine
) -> MemoryClient:
    """A client whose KNN fetches all 60 memories of the agent, so a filter's result is exact."""
    return MemoryClient(redis_client, dataclasses.replace(settings, recall_candidates=100), engine)


def steps(client: MemoryClient, tier: str = "stm", **options: Any) -> set[int]:
    query = simulate_states(1, seed=2)[0]
    recall = client.recall(AGENT, query, k=100, tiers=(tier,), **options)
    assert all(h.agent_id == AGENT for h in recall.by_tier[tier])
    return {h.step for h in recall.by_tier[tier]}


@pytest.mark.parametrize("tier", ["stm", "ltm"])
def test_where_filters_are_exact_alone_and_combined(
    redis_client: redis.Redis,
    store: TierStore,
    settings: Settings,
    engine: EmbeddingEngine,
    tier: str,
) -> None:
    states = seed(engine, store, tier)
    client = MemoryClient(
        redis_client, dataclasses.replace(settings, recall_candidates=100), engine
    )
    has = {i for i, s in enumerate(states) if "health" in s}

    assert steps(client, tier, where={"health": (10, 20)}) == {i for i in has if 10 <= i <= 20}
    assert steps(client, tier, where={"health": (None, 5)}) == {i for i in has if i <= 5}
    assert steps(client, tier, where={"health": (50, None)}) == {i for i in has if i >= 50}
    assert steps(client, tier, where={"health": (None, None)}) == has  # given at all
    assert steps(client, tier, where={"status": "idle"}) == set(range(0, 60, 3))
    assert steps(client, tier, where={"status": ["idle", "resting"]}) == {
        i for i in range(60) if i % 3 != 1
    }
    assert steps(
        client, tier, where={"health": (10, 40), "status": "active"}, step_range=(0, 30)
    ) == {i for i in has if 10 <= i <= 30 and i % 3 == 1}


def test_a_hostile_value_cannot_widen_a_filter(
    redis_client: redis.Redis, store: TierStore, settings: Settings, engine: EmbeddingEngine
) -> None:
    seed(engine, store)
    client = MemoryClient(
        redis_client, dataclasses.replace(settings, recall_candidates=100), engine
    )
    for hostile in ("idle}|@s_status:{active", "idle | active", "*", "idle)|(@s_health:[0 100]"):
        assert steps(client, where={"status": hostile}) == set()


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ({"mood": "happy"}, "'mood' is not a filterable field"),
        ({"health": 20}, "'health' takes a (low, high) range"),
        ({"health": (30, 20)}, "'health' range (30, 20) has low above high"),
        ({"health": (0, float("inf"))}, "'health' range ends must be finite numbers"),
        ({"status": []}, "'status' takes a value or a non-empty list"),
        ({"status": ["idle", 3]}, "'status' value 3 is not a string"),
    ],
)
def test_bad_conditions_are_refused_naming_the_field(
    redis_client: redis.Redis,
    settings: Settings,
    engine: EmbeddingEngine,
    where: dict[str, Any],
    message: str,
) -> None:
    client = MemoryClient(redis_client, settings, engine)
    with pytest.raises(ValueError, match=re.escape("where: " + message)):
        client.recall(AGENT, simulate_states(1)[0], where=where)


def test_an_index_made_before_the_attributes_gets_them_and_indexes_old_records(
    redis_client: redis.Redis, settings: Settings, engine: EmbeddingEngine
) -> None:
    old = TierStore(redis_client, settings)  # no schema: indexes as before this change
    old.ensure_indexes()
    writer = TierStore(redis_client, settings, engine.schema)
    seed(engine, writer)  # the hash fields exist, the index does not know them yet
    client = MemoryClient(
        redis_client, dataclasses.replace(settings, recall_candidates=100), engine
    )

    # The first recall runs ensure_indexes: FT.ALTER declares them, Redis scans the records.
    wanted = set(range(2, 60, 3))
    assert steps(client, where={"status": "resting"}) <= wanted
    wait_for(lambda: steps(client, where={"status": "resting"}) == wanted, 10, "old records")


def test_query_command_filters_with_where(
    redis_server: EmbeddedRedis, store: TierStore, engine: EmbeddingEngine, model_path: Path
) -> None:
    seed(engine, store)
    env = {"MT_REDIS_URL": redis_server.url, "MT_MODEL_PATH": str(model_path)}
    query = ["query", "--agent", AGENT, "--state", json.dumps(simulate_states(1)[0]), "--k", "30"]

    found = CliRunner().invoke(main, [*query, "--where", '{"health": [null, 9.5]}'], env=env)
    bad = CliRunner().invoke(main, [*query, "--where", '{"mood": "happy"}'], env=env)
    states_only = CliRunner().invoke(main, [*query, "--kinds", "state"], env=env)
    bad_kind = CliRunner().invoke(main, [*query, "--kinds", "state,thought"], env=env)

    assert found.exit_code == 0, found.output
    rows = [line for line in found.stdout.splitlines()[1:] if line.strip()]
    assert len(rows) == len([i for i in range(10) if i % 7])  # health 0..9, given
    assert bad.exit_code == 2
    assert "'mood' is not a filterable field" in bad.output
    assert states_only.exit_code == 0, states_only.output
    assert "no memories of agent" in states_only.output  # seeded records have no kind
    assert bad_kind.exit_code == 2
    assert "expected some of state, action" in bad_kind.output


def masked_distance(engine: EmbeddingEngine, state: dict[str, Any], query: dict[str, Any]) -> float:
    """Mean squared feature difference over the slots of the query's fields alone."""
    schema = engine.schema
    slots = np.concatenate([np.arange(schema.input_dim)[schema.slices()[f]] for f in query])
    given = schema.extract({f: state[f] for f in query if f in state})
    return float(np.mean((given - schema.extract(query))[slots] ** 2))


def test_a_partial_state_is_ranked_on_its_given_fields_alone_in_every_tier(
    redis_client: redis.Redis, store: TierStore, settings: Settings, engine: EmbeddingEngine
) -> None:
    stm = seed(engine, store, "stm")
    ltm = seed(engine, store, "ltm")
    client = MemoryClient(redis_client, settings, engine)
    query = {"health": 30.4, "status": "resting"}

    recall = client.recall(AGENT, query, k=8, tiers=("stm", "ltm"))

    for tier, states in (("stm", stm), ("ltm", ltm)):
        truth = sorted(masked_distance(engine, s, query) for s in states)[:8]
        hits = recall.by_tier[tier]
        assert [masked_distance(engine, states[h.step], query) for h in hits] == pytest.approx(
            truth, abs=1e-9
        )
        assert all(h.agent_id == AGENT for h in hits)
    assert [m.feature_distance for m in recall.merged] == pytest.approx(
        sorted(masked_distance(engine, s, query) for s in stm + ltm)[:8], abs=1e-9
    )
    assert all(m.exact for m in recall.merged)
    # health 29 or 32 and resting rank first: a missing field pulls toward no default
    assert {recall.by_tier["stm"][0].step, recall.by_tier["stm"][1].step} == {29, 32}


def test_a_query_with_a_grid_or_every_field_keeps_the_vector_path(
    redis_client: redis.Redis, store: TierStore, settings: Settings, engine: EmbeddingEngine
) -> None:
    seed(engine, store, "ltm")
    client = MemoryClient(redis_client, settings, engine)
    full = simulate_states(1, seed=9)[0]
    observation = {"health": 30.0, "perception": full["perception"]}
    for query in (full, observation):
        recall = client.recall(AGENT, query, k=3, tiers=("ltm",))
        assert len(recall.merged) == 3
        assert not any(m.exact for m in recall.merged)  # reconstructions: the vector path
