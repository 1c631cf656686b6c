"""Recall by what an agent knows: partial-state queries, per agent, per tier.

Each query keeps 2 to 4 of the schema's scalar fields of a held-out state, at random; truth
is the agent's stored states nearest over those fields alone (ties count). Two held-out sets
as in bench/model_quality.py (a simulated world the model never saw, and schema-wide agents),
each agent's memories written into every tier as ingest and consolidation leave them, then
recalled through `MemoryClient.recall` on an embedded Redis. Then the latency of a partial
recall over 3 tiers with --memories per tier over --latency-agents agents.

    python bench/partial_recall.py [--agents 5] [--stored 1000] [--queries 100]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import redis
from machine import fill_tiers, machine
from model_quality import heldout_trials

from memory_tiers import TIERS, EmbeddingEngine, MemoryClient, Settings
from memory_tiers.evaluation import partial_recall
from memory_tiers.server import EmbeddedRedis
from memory_tiers.sim import simulate_states


def latency(
    connection: redis.Redis, url: str, engine: EmbeddingEngine, memories: int, agents: int
) -> str:
    """p50/p99 of a 3-tier partial recall with `memories` per tier over `agents` agents."""
    settings = Settings(redis_url=url, prefix="plat")
    client = MemoryClient(connection, settings, engine)
    store = client.store
    states = simulate_states(memories + 300, num_agents=agents, seed=2)
    stored, probes = states[:memories], states[memories:]
    fill_tiers(store, engine, stored, agents)
    rng = np.random.default_rng(1)
    fields = ["health", "energy", "resources", "status", "current_action"]
    took = []
    for probe in probes:
        query = {f: probe[f] for f in rng.choice(fields, size=3, replace=False)}
        started = time.perf_counter()
        client.recall(probe["agent_id"], query, k=10)
        took.append(time.perf_counter() - started)
    ms = np.array(took) * 1000
    p50, p99 = np.percentile(ms, [50, 99])
    return (
        f"partial recall of 3 fields, 3 tiers, {memories:,} memories per tier over {agents:,} "
        f"agents: p50 {p50:.2f} ms, p99 {p99:.2f} ms (n={len(ms)})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="checkpoint (default: the packaged one)")
    parser.add_argument("--agents", type=int, default=5)
    parser.add_argument("--stored", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--memories", type=int, default=100_000, help="per tier, latency")
    parser.add_argument("--latency-agents", type=int, default=1000)
    args = parser.parse_args()
    settings = Settings() if args.model is None else Settings(model_path=args.model)
    engine = EmbeddingEngine.from_checkpoint(settings.model_file, expect_dims=settings.dims)
    print(
        f"model {engine.version}; {machine()}; {args.agents} agents x {args.stored} memories, "
        f"{args.queries} partial queries each (2-4 scalar fields), recall@{args.k}"
    )
    print(f"| set | {' | '.join(t.upper() for t in TIERS)} |\n|---|---|---|---|")
    with EmbeddedRedis() as server, redis.Redis.from_url(server.url) as connection:
        for n, kind in enumerate(("sim", "broad")):
            trials = heldout_trials(engine.schema, kind, args.agents, args.stored, args.queries)
            client = MemoryClient(
                connection, Settings(redis_url=server.url, prefix=f"p{n}"), engine
            )
            found = partial_recall(client, trials, k=args.k)
            print(f"| {kind} | {' | '.join(f'{found[t]:.3f}' for t in TIERS)} |", flush=True)
        print(latency(connection, server.url, engine, args.memories, args.latency_agents))


if __name__ == "__main__":
    main()
