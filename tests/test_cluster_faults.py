"""Faults on a Redis Cluster while the service works: a master killed during ingest, a bucket's
slots moved to another master during ingest (a prepared reshard), a recall during the move.
Each checks what matters to an agent: every state remembered is stored once, and recalled."""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import pytest
import redis
from redis.crc import key_slot
from test_cluster import BUCKETS, DAEMON_SETTINGS, master_port, node_client, port_of, reshard
from test_cluster_commands import consuming
from test_ingest import wait_for

from memory_tiers import EmbeddingEngine, Keys, MemoryClient, Settings
from memory_tiers.buckets import agent_keys, bucket_keys
from memory_tiers.cluster import finish, owners, prepare
from memory_tiers.errors import StoreError
from memory_tiers.resp import text
from memory_tiers.server import EmbeddedCluster
from memory_tiers.sim import simulate_states
from memory_tiers.store import TierStore


def fault_settings() -> Settings:
    """Short waits, so a fault is noticed and got over within seconds; small batches, so a
    fault finds the daemon in the middle of its work."""
    return replace(DAEMON_SETTINGS, heartbeat_ttl_s=3.0, batch_size=16)


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


def test_a_prepared_reshard_of_a_third_of_the_slots_during_ingest_keeps_each_memory_once(
    embedded_cluster: EmbeddedCluster, cluster_client: redis.RedisCluster, engine: EmbeddingEngine
) -> None:
    settings = fault_settings()
    states = simulate_states(600, num_agents=12, seed=22)
    agents = sorted({str(s["agent_id"]) for s in states})
    expected = sorted((str(s["agent_id"]), step) for step, s in enumerate(states))
    memory = MemoryClient(redis.RedisCluster.from_url(embedded_cluster.url), settings, engine)
    watched = agents[0]  # the agent whose bucket is recalled from during its move
    moving = agent_keys(settings.keys, watched, BUCKETS).stream
    source = node_client(cluster_client, moving)
    other, destination = (
        n.redis_connection for n in cluster_client.get_primaries() if n.port != port_of(source)
    )
    # Half of each other master's slots go to `destination`: a third of the 16,384.
    move = key_slot(moving.encode())
    halves = [halve(owned_slots(node), keep=move) for node in (source, other)]
    assert sum(len(h) for h in halves) in range(5460, 5463)

    with consuming(embedded_cluster.url, engine, settings, "d"):
        remember(memory, states[:300], 0)
        wait_for(lambda: len(stored_steps(memory, [watched])) > 0, 30, "some states stored")
        producing = threading.Thread(target=remember_in_batches, args=(memory, states, 300))
        prepare(destination, [*halves[0], *halves[1]], settings, engine.schema, BUCKETS)
        producing.start()
        try:
            reshard_slots(cluster_client, other, destination, halves[1])
            reshard_slots(cluster_client, source, destination, [s for s in halves[0] if s != move])
            begin_move(source, destination, move)
            migrate(source, destination, move, count=5)  # a few keys only: mid-move
            with pytest.raises(StoreError, match="being moved to another node"):
                memory.recall(watched, states[0], k=10)  # never from half the bucket
            migrate(source, destination, move)
            end_move(cluster_client, destination, move)
        finally:
            producing.join(60)
        for node in (source, other):
            assert finish(node, settings, BUCKETS)  # each dropped the indexes it gave away
        wait_for(lambda: len(stored_steps(memory, agents)) >= len(states), 60, "every state stored")
    assert stored_steps(memory, agents) == expected  # none lost, none twice
    assert move in owned_slots(destination)
    for step, state in enumerate(states):
        (best,) = memory.recall(str(state["agent_id"]), state, k=1, tiers=("stm",)).merged
        assert (best.hit.step, best.hit.state) == (step, state)


def remember_in_batches(memory: MemoryClient, states: Sequence[dict[str, Any]], first: int) -> None:
    """The producer: states[first:] in batches of 20, as the cluster moves under it."""
    for start in range(first, len(states), 20):
        remember(memory, states[start : start + 20], start)


def reshard_slots(
    client: redis.RedisCluster, source: redis.Redis, destination: redis.Redis, slots: list[int]
) -> None:
    """Move `slots` as redis-cli's reshard does; the empty ones straight to `destination`,
    all in one round trip per master (SETSLOT NODE needs no migration for a slot without keys)."""
    counts = source.pipeline(transaction=False)
    for slot in slots:
        counts.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot)
    empty = [slot for slot, n in zip(slots, counts.execute(), strict=True) if n == 0]
    for slot in sorted(set(slots) - set(empty)):
        reshard(client, source, destination, slot)
    destination_id = text(destination.execute_command("CLUSTER", "MYID"))
    others = [n.redis_connection for n in client.get_primaries()]
    others = [n for n in others if port_of(n) not in (port_of(source), port_of(destination))]
    for node in (destination, source, *others):
        assign = node.pipeline(transaction=False)
        for slot in empty:
            assign.execute_command("CLUSTER", "SETSLOT", slot, "NODE", destination_id)
        assign.execute()


def halve(slots: list[int], keep: int) -> list[int]:
    """The half of `slots` (a master's, in order) that holds slot `keep`, if either does."""
    middle = len(slots) // 2
    return slots[middle:] if keep in slots[middle:] else slots[:middle]


def owned_slots(node: redis.Redis) -> list[int]:
    """The slots `node` is the master of."""
    me = text(node.execute_command("CLUSTER", "MYID"))
    return sorted(slot for slot, owner in owners(node).items() if owner == me)


def begin_move(source: redis.Redis, destination: redis.Redis, slot: int) -> None:
    source_id = text(source.execute_command("CLUSTER", "MYID"))
    destination_id = text(destination.execute_command("CLUSTER", "MYID"))
    destination.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
    source.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", destination_id)


def migrate(source: redis.Redis, destination: redis.Redis, slot: int, count: int = 0) -> None:
    """MIGRATE the slot's keys from `source` (`count` of them, or all), 5 at a time."""
    port, moved = port_of(destination), 0
    while (not count or moved < count) and (
        keys := source.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 5)
    ):
        source.execute_command("MIGRATE", "127.0.0.1", port, "", 0, 5000, "KEYS", *keys)
        moved += len(keys)


def end_move(client: redis.RedisCluster, destination: redis.Redis, slot: int) -> None:
    destination_id = text(destination.execute_command("CLUSTER", "MYID"))
    for node in client.get_primaries():
        node.redis_connection.execute_command("CLUSTER", "SETSLOT", slot, "NODE", destination_id)


def test_each_bucket_is_kept_up_a_dropped_index_made_again_and_its_stream_trimmed(
    embedded_cluster: EmbeddedCluster, cluster_client: redis.RedisCluster, engine: EmbeddingEngine
) -> None:
    settings = replace(fault_settings(), stream_max_age_s=0.5)
    states = simulate_states(120, num_agents=12, seed=23)
    agents = sorted({str(s["agent_id"]) for s in states})
    memory = MemoryClient(redis.RedisCluster.from_url(embedded_cluster.url), settings, engine)
    streams = [bucket_keys(settings.keys, b, BUCKETS).stream for b in range(BUCKETS)]
    lost = agent_keys(settings.keys, agents[0], BUCKETS)
    node = node_client(cluster_client, lost.stream)
    with consuming(embedded_cluster.url, engine, settings, "d"):
        remember(memory, states, 0)
        wait_for(lambda: len(stored_steps(memory, agents)) == len(states), 30, "all stored")
        wait_for(lambda: sum(map(cluster_client.xlen, streams)) == 0, 15, "the streams trimmed")
        node.execute_command("FT.DROPINDEX", lost.index("stm"))  # records stay
        wait_for(lambda: indexed(node, lost.index("stm")) == held(node, lost), 15, "reindexed")
    state = next(s for s in states if s["agent_id"] == agents[0])
    (best,) = memory.recall(agents[0], state, k=1, tiers=("stm",)).merged
    assert best.hit.state == state


def indexed(node: redis.Redis, index: str) -> int:
    """num_docs of `index` on `node`; -1 while it does not exist."""
    try:
        info = node.ft(index).info()
    except redis.ResponseError:
        return -1
    return int(info["num_docs"])


def held(node: redis.Redis, keys: Keys) -> int:
    """The STM records of bucket `keys` (its time index)."""
    return int(node.zcard(keys.time_index("stm")))
