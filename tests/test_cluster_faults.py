"""Faults on a Redis Cluster while the service works: a master killed during ingest, a bucket's
slots moved to another master during ingest (a prepared reshard), a recall during the move.
Each checks what matters to an agent: every state remembered is stored once, and recalled."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import redis
from test_cluster import master_port
from test_cluster_commands import consuming
from test_ingest import wait_for

from memory_tiers import EmbeddingEngine, MemoryClient, Settings
from memory_tiers.buckets import agent_keys, bucket_keys
from memory_tiers.server import EmbeddedCluster
from memory_tiers.sim import simulate_states
from memory_tiers.store import TierStore

BUCKETS = 6


def fault_settings() -> Settings:
    """Short waits, so a fault is noticed and got over within seconds; small batches, so a
    fault finds the daemon in the middle of its work."""
    return Settings(
        buckets=BUCKETS, block_ms=50, heartbeat_ttl_s=3.0, claim_idle_ms=1000,
        consumer_max_idle_s=60, batch_size=16,
    )  # fmt: skip


def stored_steps(memory: MemoryClient, agents: Sequence[str]) -> list[tuple[str, int]]:
    """(agent, step) of every STM memory of `agents`, one per record (a duplicate shows)."""
    found = []
    for agent in agents:
        found += memory.in_bucket(agent, functools.partial(steps_of, agent))
    return sorted(found)


def steps_of(agent: str, store: TierStore) -> list[tuple[str, int]]:
    keys = store.oldest_keys("stm", 1_000_000, agent_id=agent)
    return [(agent, record.step) for record in store.read("stm", keys)]


def remember(memory: MemoryClient, states: Sequence[dict[str, Any]], first_step: int) -> None:
    memory.remember_many(
        {"agent_id": s["agent_id"], "state": s, "step": step}
        for step, s in enumerate(states, first_step)
    )


def test_a_master_killed_during_ingest_loses_and_duplicates_nothing(
    engine: EmbeddingEngine,
) -> None:
    settings = fault_settings()
    states = simulate_states(600, num_agents=12, seed=21)
    agents = sorted({str(s["agent_id"]) for s in states})
    expected = sorted((str(s["agent_id"]), step) for step, s in enumerate(states))
    with EmbeddedCluster(masters=3, replicas=1) as cluster:
        memory = MemoryClient(redis.RedisCluster.from_url(cluster.url), settings, engine)
        with consuming(cluster.url, engine, settings, "d") as daemon:
            wait_for(lambda: len(daemon.buckets) == BUCKETS, 20, "every bucket leased")
            remember(memory, states[:400], 0)
            for node in memory.redis.get_primaries():  # the entries are on the replicas too
                assert node.redis_connection.execute_command("WAIT", 1, 5000) == 1
            doomed = agent_keys(settings.keys, agents[0], BUCKETS).stream
            victim = next(n for n in cluster.nodes if n.port == master_port_of(memory, doomed))
            assert victim.process is not None
            wait_for(lambda: daemon.stats.stored > 0, 20, "the daemon to store some")
            victim.process.kill()  # kill -9 while the daemon works through the 400
            assert daemon.stats.stored < 400

            alive = redis.Redis(port=next(n.port for n in cluster.nodes if n is not victim))
            wait_for(lambda: master_port(alive, doomed) not in (None, victim.port), 20, "failover")
            wait_for(lambda: writable(memory), 20, "the producer's client to find the new master")
            remember(memory, states[400:], 400)
            wait_for(
                lambda: len(stored_steps(memory, agents)) >= len(states), 60, "every state stored"
            )
        assert stored_steps(memory, agents) == expected  # none lost, none twice
        for bucket in range(BUCKETS):
            keys = bucket_keys(settings.keys, bucket, BUCKETS)
            assert memory.redis.xpending(keys.stream, keys.group)["pending"] == 0
            assert memory.redis.xlen(keys.dead_letters) == 0


def master_port_of(memory: MemoryClient, key: str) -> int:
    port: int = memory.redis.get_node_from_key(key).port
    return port


def writable(memory: MemoryClient) -> bool:
    """Whether every bucket's stream takes a write now (an XLEN through the cluster client)."""
    try:
        for bucket in range(BUCKETS):
            memory.redis.xlen(bucket_keys(memory.settings.keys, bucket, BUCKETS).stream)
    except redis.RedisError:
        return False
    return True
