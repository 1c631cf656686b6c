"""Recall quality per agent and reconstruction error, per tier, against PCA of the same size.

Two held-out sets, each a few agents with `--stored` memories and `--queries` held-out query
states apiece (a query is never among the memories it searches):
  - sim: agents of a simulated world the model never saw (seed 10,000);
  - broad: agents sampled across the whole feature schema (sampling.py, seed 20,000): other
    grid sizes, missing and unknown keys, unknown categories, values over the whole range.
Per tier it prints reconstruction MSE; recall@k of plain KNN over the tier's vectors; of
recall as the client does it (over-fetch, re-sort), in memory; through the real
`MemoryClient.recall` on an embedded Redis with default settings, and with the raw state kept
in every tier (MT_KEEP_STATE_AFTER_STM); and of PCA's projections. PCA is fitted on (a sample
of) the data the checkpoint was trained on, regenerated from its recorded seeds.

    python bench/model_quality.py [--model models/state_autoencoder.pt] [--agents 5]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import redis
from machine import machine

from memory_tiers import TIERS, EmbeddingEngine, Keys, MemoryClient, Settings
from memory_tiers.checkpoint import load_checkpoint
from memory_tiers.evaluation import (
    AgentStates,
    AgentTrial,
    TierQuality,
    client_recall,
    evaluate,
)
from memory_tiers.features import FeatureSchema
from memory_tiers.sampling import sample_states
from memory_tiers.server import EmbeddedRedis
from memory_tiers.sim import simulate_states
from memory_tiers.train import broad_agents, split_data

HELDOUT_SEED = 10_000
"""Seed of the held-out simulated world: far from any seed a training run uses by default."""

BROAD_SEED = 20_000
"""Seed of the held-out schema-wide agents."""

PCA_SAMPLE = 60_000
"""Training rows PCA is fitted on at most (an even sample)."""


def heldout_trials(
    schema: FeatureSchema, kind: str, agents: int, stored: int, queries: int
) -> list[AgentTrial]:
    """`agents` agents of a held-out set, each `stored` memories and `queries` queries."""
    per_agent = stored + queries
    if kind == "sim":  # a 50-agent world, as trained on; the first `agents` agents kept
        states = simulate_states(per_agent * 50, num_agents=50, seed=HELDOUT_SEED)
    else:
        states = sample_states(schema, per_agent * agents, num_agents=agents, seed=BROAD_SEED)
    rng = np.random.default_rng(0)
    trials = []
    for agent_id in list(dict.fromkeys(str(s["agent_id"]) for s in states))[:agents]:
        mine = [s for s in states if s["agent_id"] == agent_id]
        held = np.zeros(len(mine), dtype=bool)
        held[rng.choice(len(mine), size=queries, replace=False)] = True
        trials.append(
            AgentTrial(
                agent_id,
                [s for s, h in zip(mine, held, strict=True) if not h],
                [s for s, h in zip(mine, held, strict=True) if h],
            )
        )
    return trials


def training_features(schema: FeatureSchema, data: Mapping[str, Any], val: float) -> np.ndarray:
    """The training part of the checkpoint's training data, regenerated, sampled evenly."""
    if data.get("kind") != "simulation":
        sys.exit(f"the model was not trained on the simulation ({data}); cannot refit PCA")
    sim = simulate_states(data["states"], seed=data["seed"], worlds=data["worlds"])
    parts = [split_data(schema.extract_batch(sim), val)[0]]
    broad = int(data.get("broad", 0))
    if broad:
        sampled = sample_states(schema, broad, num_agents=broad_agents(broad), seed=data["seed"])
        parts.append(split_data(schema.extract_batch(sampled), val)[0])
    rows = np.concatenate(parts)
    step = max(1, len(rows) // PCA_SAMPLE)
    return rows[::step]


def through_redis(
    engine: EmbeddingEngine, sets: Mapping[str, list[AgentTrial]], k: int
) -> tuple[dict[tuple[str, bool], dict[str, float]], dict[tuple[str, bool], dict[str, float]]]:
    """On a fresh embedded Redis, per (set, state kept): {tier: MemoryClient recall@k} and
    {tier: mean MEMORY USAGE of a record, bytes}."""
    recall, sizes = {}, {}
    with EmbeddedRedis() as server, redis.Redis.from_url(server.url) as connection:
        for n, (name, trials) in enumerate(sets.items()):
            for keep in (False, True):
                settings = Settings(
                    redis_url=server.url, prefix=f"q{n}{int(keep)}", keep_state_after_stm=keep
                )
                client = MemoryClient(connection, settings, engine)
                recall[name, keep] = client_recall(client, trials, k=k)
                sizes[name, keep] = record_sizes(connection, settings.keys)
    return recall, sizes


def record_sizes(client: redis.Redis, keys: Keys, sample: int = 200) -> dict[str, float]:
    """Mean MEMORY USAGE of `sample` records per tier: the hash alone, no index overhead.
    SAMPLES 0 counts every field: the default samples 5 and extrapolates, which misjudges a
    record whose fields differ in size as much as a state and a step do."""
    sizes = {}
    for tier in TIERS:
        members = client.zrange(keys.time_index(tier), 0, sample - 1)
        sizes[tier] = float(np.mean([client.memory_usage(m, samples=0) for m in members]))
    return sizes


def table(
    rows: Sequence[TierQuality], client: Mapping[str, float], kept: Mapping[str, float], k: int
) -> list[str]:
    lines = [
        f"| tier | dim | AE MSE | PCA MSE | KNN recall@{k} | re-sorted (in memory) "
        f"| MemoryClient | MemoryClient, state kept | PCA recall@{k} |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.tier.upper()} | {r.dim} | {r.mse:.5f} | {r.pca_mse:.5f} "
            f"| {r.vector_recall:.3f} | {r.recall:.3f} | {client[r.tier]:.3f} "
            f"| {kept[r.tier]:.3f} | {r.pca_recall:.3f} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="models/state_autoencoder.pt")
    parser.add_argument("--agents", type=int, default=5)
    parser.add_argument("--stored", type=int, default=1000, help="memories per agent")
    parser.add_argument("--queries", type=int, default=200, help="held-out queries per agent")
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()
    started = time.perf_counter()
    checkpoint = load_checkpoint(args.model)
    engine = EmbeddingEngine.from_loaded(checkpoint, device="cpu")
    schema = engine.schema
    val = checkpoint.metrics["config"]["val_fraction"]
    pca_rows = training_features(schema, checkpoint.metrics.get("data", {}), val)
    sets = {
        kind: heldout_trials(schema, kind, args.agents, args.stored, args.queries)
        for kind in ("sim", "broad")
    }
    redis_recall, sizes = through_redis(engine, sets, args.k)
    print(
        f"model {engine.version}; {machine()}; per set {args.agents} agents x {args.stored} "
        f"memories, {args.queries} held-out queries each; candidates "
        f"{Settings().candidates(args.k)}; PCA fitted on {len(pca_rows)} training rows"
    )
    for name, trials in sets.items():
        agents = [
            AgentStates(t.agent_id, schema.extract_batch(t.stored), schema.extract_batch(t.queries))
            for t in trials
        ]
        rows = evaluate(
            engine, agents, pca_rows, k=args.k, candidates=Settings().candidates(args.k)
        )
        print(f"\n{name}:")
        print("\n".join(table(rows, redis_recall[name, False], redis_recall[name, True], args.k)))
        print(
            "bytes per record (MEMORY USAGE): "
            + ", ".join(
                f"{t.upper()} {sizes[name, False][t]:,.0f} (state kept {sizes[name, True][t]:,.0f})"
                for t in TIERS
            )
        )
    print(f"\n({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
