"""Recall quality: schema-wide samples, the evaluation figures, `memory-tiers evaluate`, drift."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from click.testing import CliRunner

from memory_tiers import TIERS, EmbeddingEngine, Keys, MemoryClient, Settings
from memory_tiers.cli import main
from memory_tiers.drift import ReconstructionDrift
from memory_tiers.evaluation import (
    AgentStates,
    AgentTrial,
    client_recall,
    evaluate,
    nearest,
    recall_at_k,
    split_agents,
    verdict,
)
from memory_tiers.features import DEFAULT_SCHEMA, OTHER, feature_distances
from memory_tiers.protocol import encode_entry
from memory_tiers.sampling import sample_states
from memory_tiers.sim import simulate_states
from memory_tiers.status import Heartbeat, beat
from memory_tiers.store import MemoryRecord, TierStore

DEFAULT_MODEL = Path(__file__).parent.parent / "models" / "state_autoencoder.pt"

# -- schema-wide samples -----------------------------------------------------------------------


def test_samples_cover_the_whole_schema_and_stay_seeded() -> None:
    states = sample_states(DEFAULT_SCHEMA, 3000, num_agents=60, seed=3)
    assert states == sample_states(DEFAULT_SCHEMA, 3000, num_agents=60, seed=3)
    assert states != sample_states(DEFAULT_SCHEMA, 3000, num_agents=60, seed=4)
    assert [s["agent_id"] for s in states[:61]] == [
        *(f"sampled-{i:04d}" for i in range(60)),
        "sampled-0000",
    ]
    features = DEFAULT_SCHEMA.extract_batch(states)  # every one is valid
    slices = DEFAULT_SCHEMA.slices()
    for f in DEFAULT_SCHEMA.numeric:
        values = features[:, slices[f.name]].ravel()
        assert values.min() == 0.0 and values.max() == 1.0  # the range's ends, clipped beyond
        assert sum(f.name not in s for s in states) >= 50  # some agents never send it
    for c in DEFAULT_SCHEMA.categorical:
        described = [DEFAULT_SCHEMA.describe(row).get(c.name) for row in features]
        assert set(described) >= {*c.values, OTHER}, c.name
    shapes = {(len(s["perception"]), len(s["perception"][0])) for s in states if "perception" in s}
    assert len(shapes) >= 10 and (11, 11) in shapes
    codes = {cell for s in states[:200] if "perception" in s for r in s["perception"] for cell in r}
    assert codes == {0, 1, 2, 3}
    unknown = {key for s in states for key in s} - {"agent_id", *slices}
    assert len(unknown) >= 6  # numbers for the hashed slots and strings the schema ignores


def test_a_sampled_agent_moves_through_its_states() -> None:
    states = sample_states(DEFAULT_SCHEMA, 2000, num_agents=10, seed=1)
    features = DEFAULT_SCHEMA.extract_batch(states)
    mine = features[0::10]  # agent 0's 200 states in time order
    steps = np.mean((mine[1:] - mine[:-1]) ** 2, axis=1)
    strangers = np.mean((features[0::10][:199] - features[5::10][:199]) ** 2, axis=1)
    assert np.median(steps) < np.median(strangers) / 5  # neighbours in time are neighbours


# -- the figures -------------------------------------------------------------------------------


def test_nearest_and_recall_at_k() -> None:
    points = np.array([[0.0], [1.0], [3.0], [6.0]], dtype=np.float32)
    queries = np.array([[2.9], [0.4]], dtype=np.float32)
    assert nearest(points, queries, 2).tolist() == [[2, 1], [0, 1]]
    assert recall_at_k(np.array([[2, 1], [0, 1]]), np.array([[1, 3], [0, 1]])) == 0.75
    assert feature_distances([0.0, 0.0], [[1.0, 1.0], [0.0, 2.0]]).tolist() == [1.0, 2.0]


def test_split_agents_holds_out_queries_per_agent() -> None:
    features = np.arange(200, dtype=np.float32).reshape(100, 2)
    ids = ["a"] * 60 + ["b"] * 30 + ["c"] * 10
    agents = split_agents(features, ids, queries=8, min_stored=20)
    assert [(a.agent_id, len(a.stored), len(a.queries)) for a in agents] == [
        ("a", 52, 8),
        ("b", 24, 6),  # at most a fifth held out; c is too small
    ]
    stored_and_queries = np.concatenate([agents[0].stored, agents[0].queries])
    assert sorted(stored_and_queries[:, 0].tolist()) == features[:60, 0].tolist()


def test_evaluate_gives_exact_figures_where_they_are_known(engine: EmbeddingEngine) -> None:
    states = simulate_states(600, num_agents=3, seed=21)
    # Distinct states only: between equal ones, which is "nearest" is a coin toss.
    _, first = np.unique(engine.schema.extract_batch(states), axis=0, return_index=True)
    states = [states[i] for i in sorted(first)]
    features = engine.schema.extract_batch(states)
    agents = split_agents(features, [str(s["agent_id"]) for s in states], queries=20)
    rows = evaluate(engine, agents, features, candidates=1000)
    by_tier = {row.tier: row for row in rows}
    # Every memory is a candidate and STM keeps the state: the exact 10 nearest come back.
    assert by_tier["stm"].recall == 1.0 and by_tier["stm"].keeps_state
    # PCA with as many components as features (384 > 152) reconstructs and ranks exactly.
    assert by_tier["stm"].pca_mse == pytest.approx(0.0, abs=1e-9)
    assert by_tier["stm"].pca_recall == 1.0
    for row in rows:
        assert row.dim == engine.dims[row.tier]
        vectors = np.concatenate(
            [engine.encode_features(a.stored, (row.tier,))[row.tier] for a in agents]
        )
        stored = np.concatenate([a.stored for a in agents])
        expected = float(((engine.decode(vectors, row.tier) - stored) ** 2).mean())
        assert row.mse == pytest.approx(expected, rel=1e-5)
        assert 0.0 < row.vector_recall <= 1.0 and 0.0 < row.recall <= 1.0
    kept = evaluate(engine, agents, features, candidates=1000, state_tiers=TIERS)
    assert [row.recall for row in kept] == [1.0, 1.0, 1.0]


def test_the_verdict_names_what_falls_short(engine: EmbeddingEngine) -> None:
    agents = [
        AgentStates("a", engine.schema.extract_batch(simulate_states(120, seed=2)[:100]),
                    engine.schema.extract_batch(simulate_states(120, seed=2)[100:]))
    ]  # fmt: skip
    rows = evaluate(engine, agents, agents[0].stored, candidates=1000, state_tiers=TIERS)
    assert verdict(rows, None).startswith("ok:")
    held_out = {tier: row.mse / 10 for tier, row in zip(TIERS, rows, strict=True)}
    line = verdict(rows, held_out)
    assert line.startswith("retrain: STM error") and "10x the model's held-out error" in line
    assert "memory-tiers reencode" in line


# -- recall quality of the default model, through Redis ---------------------------------------


def heldout_trials(states: Sequence[dict[str, Any]], agents: int, stored: int) -> list[AgentTrial]:
    """Each of the first `agents` agents: every 11th of its states a query, the rest stored."""
    trials = []
    for agent_id in list(dict.fromkeys(str(s["agent_id"]) for s in states))[:agents]:
        mine = [s for s in states if s["agent_id"] == agent_id]
        mine = mine[: stored + stored // 10]
        trials.append(AgentTrial(agent_id, [s for i, s in enumerate(mine) if i % 11], mine[::11]))
    return trials


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sim", "broad"])
def test_the_default_model_recalls_the_true_nearest_memories(
    redis_client: redis.Redis, settings: Settings, kind: str
) -> None:
    # The acceptance figures of bench/model_quality.py at a small scale (3 agents x 400
    # memories, 120 queries), with margins for it: plain KNN gives STM 0.82 / 0.92 here.
    engine = EmbeddingEngine.from_checkpoint(DEFAULT_MODEL)
    if kind == "sim":
        states = simulate_states(50 * 440, num_agents=50, seed=10_001)
        floor = {"stm": 0.97, "im": 0.85, "ltm": 0.55}  # PCA-32: about 0.52
    else:
        states = sample_states(engine.schema, 3 * 440, num_agents=3, seed=20_001)
        floor = {"stm": 0.97, "im": 0.80, "ltm": 0.70}
    client = MemoryClient(redis_client, settings, engine)
    recall = client_recall(client, heldout_trials(states, agents=3, stored=400))
    assert all(recall[tier] >= floor[tier] for tier in TIERS), recall


# -- memory-tiers evaluate ---------------------------------------------------------------------


def evaluate_output(args: list[str], env: dict[str, str]) -> list[str]:
    result = CliRunner().invoke(main, ["--log-level", "WARNING", "evaluate", *args], env=env)
    assert result.exit_code == 0, result.output
    return result.output.splitlines()


def test_evaluate_reads_a_file_the_stream_and_a_tier_alike(
    tmp_path: Path,
    redis_client: redis.Redis,
    settings: Settings,
    store: TierStore,
    model_path: Path,
    engine: EmbeddingEngine,
) -> None:
    assert settings.redis_url
    states = [dict(s) for s in simulate_states(300, num_agents=3, seed=23)]
    data = tmp_path / "states.jsonl"
    data.write_text("\n".join(json.dumps(s) for s in states) + "\n")
    pipe = redis_client.pipeline()
    for step, state in enumerate(states):
        pipe.xadd(Keys().stream, encode_entry(str(state["agent_id"]), state, step=step))
    pipe.execute()
    store.write("stm", [
        MemoryRecord(
            entry_id=f"{1000 + i}-0", agent_id=str(s["agent_id"]), agent_type="x", step=i,
            ts=1000 + i, model_version=engine.version, vector=np.zeros(384, np.float32),
            state_json=json.dumps(s),
        )
        for i, s in enumerate(states)
    ])  # fmt: skip
    env = {"MT_REDIS_URL": settings.redis_url, "MT_MODEL_PATH": str(model_path)}

    from_file = evaluate_output(["--jsonl", str(data), "--queries", "10"], env)
    from_stream = evaluate_output(["--from-stream", "--queries", "10"], env)
    from_tier = evaluate_output(["--tier", "stm", "--queries", "10"], env)

    assert from_file[0].startswith(f"model {engine.version} on 300 states of states.jsonl")
    assert "3 agents, recall@10 over 30 held-out queries, 50 candidates re-sorted" in from_file[0]
    assert from_file[1].split() == [
        "tier", "dim", "AE_mse", "PCA_mse", "KNN_recall", "recall", "PCA_recall", "state",
    ]  # fmt: skip
    # The same states, split the same way: the same figures from every source.
    assert from_file[1:] == from_stream[1:] == from_tier[1:]
    agents = split_agents(
        engine.schema.extract_batch(states), [str(s["agent_id"]) for s in states], 10
    )
    features = engine.schema.extract_batch(states)
    rows = evaluate(engine, agents, features)
    for line, row in zip(from_file[2:5], rows, strict=True):
        assert line.split() == [
            row.tier.upper(), str(row.dim), f"{row.mse:.5f}", f"{row.pca_mse:.5f}",
            f"{row.vector_recall:.3f}", f"{row.recall:.3f}", f"{row.pca_recall:.3f}",
            "kept" if row.tier == "stm" else "-",
        ]  # fmt: skip
    assert from_file[5] == verdict(rows, engine.validation_mse)


def test_evaluate_needs_one_source(settings: Settings) -> None:
    result = CliRunner().invoke(main, ["evaluate", "--from-stream", "--tier", "stm"])
    assert result.exit_code == 2
    assert "exactly one of --jsonl FILE, --from-stream, --tier TIER" in result.output


# -- drift -------------------------------------------------------------------------------------


def test_drift_samples_one_in_every_state_across_batches(engine: EmbeddingEngine) -> None:
    features = engine.schema.extract_batch(simulate_states(25, seed=4))
    drift = ReconstructionDrift(engine, every=4)
    assert drift.mse() is None
    for start in (0, 7, 13):  # batches of 7, 6 and 12 rows
        drift.sample(features[start : {0: 7, 7: 13, 13: 25}[start]])
    sampled = features[::4]  # rows 0, 4, 8, ... 24: seven of them
    assert drift.samples == 0  # waiting to be measured together
    vectors = engine.encode_features(sampled)
    mse = drift.mse()  # measures what waits
    assert mse is not None and drift.samples == 7
    for tier in TIERS:
        expected = float(((engine.decode(vectors[tier], tier) - sampled) ** 2).mean())
        assert mse[tier] == pytest.approx(expected, rel=1e-5)


def test_stats_says_when_live_states_are_far_off_what_the_model_knows(
    redis_client: redis.Redis, settings: Settings
) -> None:
    assert settings.redis_url
    now = time.time()
    for consumer, live in (("calm", 0.002), ("drifted", 0.05)):
        beat(redis_client, Keys(), Heartbeat(
            consumer=consumer, host="h", pid=1, model_version="m", started_at=now, at=now,
            stored=1, dead_letters=0, ttl_s=60,
            reconstruction_mse=dict.fromkeys(TIERS, live),
            validation_mse={"stm": 0.001, "im": 0.001, "ltm": 0.02},
        ))  # fmt: skip
    result = CliRunner().invoke(
        main, ["stats", "--top", "0"], env={"MT_REDIS_URL": settings.redis_url}
    )
    assert result.exit_code == 0, result.output
    section = next(s for s in result.output.split("\n\n") if s.split()[:2] == ["daemon", "tier"])
    lines = section.splitlines()
    assert lines[1].split() == ["calm", "stm", "0.00200", "0.00100", "2.0x"]
    assert lines[6].split() == ["drifted", "ltm", "0.05000", "0.02000", "2.5x"]
    assert lines[7:] == [
        "far off: the states drifted encodes reconstruct over 3x worse than its model's held-out "
        "states (STM, IM). Recall suffers: run `memory-tiers evaluate --tier stm`, then retrain "
        "(README, 'When to retrain')"
    ]


def test_drift_measures_once_enough_rows_wait(engine: EmbeddingEngine) -> None:
    features = engine.schema.extract_batch(simulate_states(40, seed=5))
    drift = ReconstructionDrift(engine, every=1)
    drift.sample(features[:31])
    assert drift.samples == 0
    drift.sample(features[31:])  # 40 waiting >= BATCH_ROWS: measured on the ingest thread
    assert drift.samples == 40
