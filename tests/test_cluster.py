"""A Redis Cluster of embedded nodes (server.EmbeddedCluster): each bucket's tier indexes and
records live on the node that owns the bucket's slot, and the store works there as on one
Redis (buckets.py, DESIGN "Scaling beyond one Redis")."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
from collections import Counter

import numpy as np
import pytest
import redis
from redis.crc import key_slot
from test_ingest import wait_for

from memory_tiers import (
    AsyncMemoryClient,
    ConfigError,
    EmbeddingEngine,
    MemoryClient,
    Settings,
)
from memory_tiers.buckets import agent_keys, bucket_keys, bucket_of
from memory_tiers.cluster import finish, prepare
from memory_tiers.cluster_daemon import ClusterDaemon
from memory_tiers.daemon import Daemon
from memory_tiers.errors import StoreError
from memory_tiers.ingest import Ingestor
from memory_tiers.leases import BucketLeases
from memory_tiers.protocol import encode_entry
from memory_tiers.resp import text
from memory_tiers.server import EmbeddedCluster
from memory_tiers.sim import simulate_states
from memory_tiers.store import MemoryRecord, TierStore
from memory_tiers.stream import GroupReader, read_ready_together
from memory_tiers.tiers import consolidate

BUCKETS = 6
DAEMON_SETTINGS = Settings(
    buckets=BUCKETS, block_ms=50, heartbeat_ttl_s=1.5, claim_idle_ms=1000, consumer_max_idle_s=60
)
"""A cluster daemon's settings for tests: quick to lease, claim and notice a dead daemon."""
AGENTS = [f"agent-{i}" for i in range(24)]
PER_AGENT = 20
T0 = 1_700_000_000_000


def node_client(cluster_client: redis.RedisCluster, key: str) -> redis.Redis:
    """A plain client of the master that owns `key`'s slot."""
    node = cluster_client.get_node_from_key(key)
    return redis.Redis(host=node.host, port=node.port)


def records_of(agent: str, vectors: np.ndarray) -> list[MemoryRecord]:
    return [
        MemoryRecord(
            entry_id=f"{T0 + i}-{AGENTS.index(agent)}",
            agent_id=agent,
            agent_type="explorer",
            step=i,
            ts=T0 + i,
            model_version="v1",
            vector=vector,
        )
        for i, vector in enumerate(vectors)
    ]


def test_each_bucket_is_stored_and_searched_on_the_node_that_owns_its_slot(
    cluster_client: redis.RedisCluster,
) -> None:
    settings = Settings()
    rng = np.random.default_rng(7)
    vectors = {
        a: rng.standard_normal((PER_AGENT, settings.ltm_dim)).astype(np.float32) for a in AGENTS
    }
    stores: dict[str, TierStore] = {}
    for agent in AGENTS:
        keys = agent_keys(settings.keys, agent, BUCKETS)
        store = TierStore(node_client(cluster_client, keys.index("ltm")), settings, keys=keys)
        store.ensure_indexes()  # once per bucket would do; a second time is a no-op
        store.write("ltm", records_of(agent, vectors[agent]))  # one MULTI/EXEC in one slot
        stores[agent] = store

    for agent in AGENTS:
        for i in (0, PER_AGENT - 1):
            hits = stores[agent].search("ltm", vectors[agent][i], k=3, agent_id=agent)
            assert [h.agent_id for h in hits] == [agent] * 3
            assert hits[0].entry_id == f"{T0 + i}-{AGENTS.index(agent)}"
            assert hits[0].distance == pytest.approx(0.0, abs=1e-4)
            assert hits[0].step == i  # fields read back, not the nil fields of a foreign slot

    per_node: dict[str, int] = {}
    for node in cluster_client.get_primaries():
        names = [n.decode() for n in node.redis_connection.execute_command("FT._LIST")]
        assert all("{" in name for name in names), names  # every index is a bucket's
        per_node[node.name] = sum(
            int(node.redis_connection.ft(n).info()["num_docs"]) for n in names if ":ltm:" in n
        )
    buckets_used = {bucket_of(a, BUCKETS) for a in AGENTS}
    assert len(buckets_used) == BUCKETS
    assert sum(per_node.values()) == len(AGENTS) * PER_AGENT
    assert sum(1 for count in per_node.values() if count) >= 2  # buckets spread over nodes


def test_the_layout_of_one_redis_on_a_cluster_fails_with_a_clear_error(
    cluster_client: redis.RedisCluster,
) -> None:
    settings = Settings()
    keys = settings.keys
    node = node_client(cluster_client, keys.index("ltm"))
    store = TierStore(node, settings)
    rng = np.random.default_rng(1)
    records = records_of(AGENTS[0], rng.standard_normal((2, settings.ltm_dim)).astype(np.float32))
    with pytest.raises(StoreError, match="a node of a Redis Cluster that does not hold"):
        store.write("ltm", records)


def test_each_buckets_stream_is_ingested_into_its_own_tiers_on_its_node(
    cluster_client: redis.RedisCluster, engine: EmbeddingEngine
) -> None:
    settings = Settings()
    states = simulate_states(240, num_agents=12, seed=4)
    produced: dict[str, list[dict[str, object]]] = {}
    for state in states:
        agent = str(state["agent_id"])
        stream = agent_keys(settings.keys, agent, BUCKETS).stream
        cluster_client.xadd(stream, encode_entry(agent, state))  # routed by the stream's slot
        produced.setdefault(agent, []).append(state)
    broken = agent_keys(settings.keys, "agent-x", BUCKETS)
    cluster_client.xadd(broken.stream, {"agent_id": "agent-x", "state": "{not json"})

    dead_letters = 0
    for bucket in range(BUCKETS):
        keys = bucket_keys(settings.keys, bucket, BUCKETS)
        node = node_client(cluster_client, keys.stream)
        ingestor = Ingestor(node, engine, settings, "daemon-1", keys=keys)
        ingestor.store.ensure_indexes()
        ingestor.ensure_group()
        while messages := ingestor.reader.read_ready():
            _, outcome = ingestor.process(messages)  # one MULTI/EXEC in the bucket's slot
            assert outcome.acked == len(messages)
            dead_letters += outcome.dead_letters
        assert node.xpending(keys.stream, keys.group)["pending"] == 0

    assert dead_letters == 1
    assert cluster_client.xlen(broken.dead_letters) == 1
    for agent, agent_states in produced.items():
        keys = agent_keys(settings.keys, agent, BUCKETS)
        store = TierStore(node_client(cluster_client, keys.index("stm")), settings, keys=keys)
        assert store.count("stm", agent) == len(agent_states)
        vector = engine.encode_states([agent_states[-1]])["stm"][0]
        (hit,) = store.search("stm", vector, k=1, agent_id=agent)
        assert hit.agent_id == agent and hit.state == agent_states[-1]


def test_each_bucket_consolidates_on_its_node_by_both_rules(
    cluster_client: redis.RedisCluster, engine: EmbeddingEngine
) -> None:
    settings = dataclasses.replace(
        Settings(),
        stm_max_age_s=None, stm_max_per_agent=5,  # the count rule: agent set, SSCAN, Lua prune
        im_max_age_s=1.0, im_max_per_agent=None,  # the age rule: the time index
    )  # fmt: skip
    states = simulate_states(160, num_agents=8, seed=5)
    vectors = engine.encode_states(states)["stm"]
    by_agent: dict[str, list[MemoryRecord]] = {}
    for i, (state, vector) in enumerate(zip(states, vectors, strict=True)):
        agent = str(state["agent_id"])
        by_agent.setdefault(agent, []).append(
            MemoryRecord(
                entry_id=f"{T0 + i}-0", agent_id=agent, agent_type="explorer", step=i,
                ts=T0 + i, model_version=engine.version, vector=vector,
            )
        )  # fmt: skip
    stores: dict[int, tuple[redis.Redis, TierStore]] = {}
    for agent, records in by_agent.items():
        bucket = bucket_of(agent, BUCKETS)
        if bucket not in stores:
            keys = bucket_keys(settings.keys, bucket, BUCKETS)
            node = node_client(cluster_client, keys.index("stm"))
            stores[bucket] = node, TierStore(node, settings, keys=keys)
            stores[bucket][1].ensure_indexes()
        stores[bucket][1].write("stm", records)

    for bucket, (node, store) in stores.items():
        moved = consolidate(node, store, engine, settings, "stm")
        aged = consolidate(node, store, engine, settings, "im")
        agents = [a for a in by_agent if bucket_of(a, BUCKETS) == bucket]
        assert moved.moved == sum(len(by_agent[a]) - 5 for a in agents)
        assert aged.moved == moved.moved
    for agent, records in by_agent.items():
        store = stores[bucket_of(agent, BUCKETS)][1]
        assert (store.count("stm", agent), store.count("im", agent)) == (5, 0)
        assert store.count("ltm", agent) == len(records) - 5
        newest = {r.entry_id for r in records[-5:]}
        kept = store.search("stm", records[-1].vector, k=10, agent_id=agent)
        assert {h.entry_id for h in kept} == newest  # the count rule kept the newest


def test_a_buckets_indexes_and_memories_survive_the_kill_of_its_master() -> None:
    settings = Settings()
    rng = np.random.default_rng(3)
    shape = (PER_AGENT, settings.ltm_dim)
    vectors = {a: rng.standard_normal(shape).astype(np.float32) for a in AGENTS}
    with EmbeddedCluster(masters=3, replicas=1) as cluster:
        client = redis.RedisCluster.from_url(cluster.url)
        for agent in AGENTS:
            keys = agent_keys(settings.keys, agent, BUCKETS)
            node = node_client(client, keys.index("ltm"))
            store = TierStore(node, settings, keys=keys)
            store.ensure_indexes()
            store.write("ltm", records_of(agent, vectors[agent]))
            assert node.execute_command("WAIT", 1, 5000) == 1  # on the replica too
        doomed = agent_keys(settings.keys, AGENTS[0], BUCKETS).index("ltm")
        victim = next(n for n in cluster.nodes if n.port == client.get_node_from_key(doomed).port)
        client.close()
        assert victim.process is not None
        victim.process.kill()  # kill -9: its replica must take over its slots

        alive = next(n for n in cluster.nodes[: cluster.masters] if n is not victim)
        survivor = redis.Redis(port=alive.port)
        wait_for(lambda: master_port(survivor, doomed) not in (None, victim.port), 20, "failover")
        client = redis.RedisCluster.from_url(alive.url)
        for agent in AGENTS:
            keys = agent_keys(settings.keys, agent, BUCKETS)
            store = TierStore(node_client(client, keys.index("ltm")), settings, keys=keys)
            assert store.count("ltm", agent) == PER_AGENT
            for i in (0, PER_AGENT - 1):
                (hit,) = store.search("ltm", vectors[agent][i], k=1, agent_id=agent)
                assert hit.entry_id == f"{T0 + i}-{AGENTS.index(agent)}"
        client.close()
        survivor.close()


def master_port(node: redis.Redis, key: str) -> int | None:
    """The port of the master that `node` says owns `key`'s slot (None: no answer, no owner)."""
    slot = key_slot(key.encode())
    with contextlib.suppress(redis.RedisError):
        for first, last, master, *_ in node.execute_command("CLUSTER", "SLOTS"):
            if first <= slot <= last:
                return int(master[1])
    return None


def test_a_prepared_reshard_keeps_every_memory_recallable_once_and_finish_drops_orphans(
    embedded_cluster: EmbeddedCluster, cluster_client: redis.RedisCluster
) -> None:
    settings = Settings()
    rng = np.random.default_rng(11)
    shape = (PER_AGENT, settings.ltm_dim)
    vectors = {a: rng.standard_normal(shape).astype(np.float32) for a in AGENTS}
    for agent in AGENTS:
        keys = agent_keys(settings.keys, agent, BUCKETS)
        store = TierStore(node_client(cluster_client, keys.index("ltm")), settings, keys=keys)
        store.ensure_indexes()
        store.write("ltm", records_of(agent, vectors[agent]))
    moving = agent_keys(settings.keys, AGENTS[0], BUCKETS)
    slot = key_slot(moving.stream.encode())
    source = node_client(cluster_client, moving.stream)
    destination = next(
        n.redis_connection for n in cluster_client.get_primaries() if n.port != port_of(source)
    )

    created = prepare(destination, [slot], settings, None, BUCKETS)
    assert sorted(created) == sorted(moving.index(t) for t in ("stm", "im", "ltm"))
    assert prepare(destination, [slot], settings, None, BUCKETS) == []  # done already
    source.execute_command("FT.DROPINDEX", moving.index("im"))  # lost on its owner
    assert prepare(source, [slot], settings, None, BUCKETS) == [moving.index("im")]
    reshard(cluster_client, source, destination, slot)  # as redis-cli --cluster reshard does
    assert sorted(finish(source, settings, BUCKETS)) == sorted(created)
    for node in cluster_client.get_primaries():
        assert finish(node.redis_connection, settings, BUCKETS) == []

    after = redis.RedisCluster.from_url(embedded_cluster.url)  # knows the slot's new owner
    for agent in AGENTS:
        keys = agent_keys(settings.keys, agent, BUCKETS)
        node = node_client(after, keys.index("ltm"))
        assert keys != moving or port_of(node) == port_of(destination)
        store = TierStore(node, settings, keys=keys)
        assert store.count("ltm", agent) == PER_AGENT
        hits = store.search("ltm", vectors[agent][3], k=PER_AGENT + 5, agent_id=agent)
        assert sorted(h.step for h in hits) == list(range(PER_AGENT))  # each memory once
    after.close()


def port_of(node: redis.Redis) -> int:
    return int(node.connection_pool.connection_kwargs["port"])


def reshard(
    client: redis.RedisCluster, source: redis.Redis, destination: redis.Redis, slot: int
) -> None:
    """Move one slot's keys from `source` to `destination`, the steps of redis-cli's reshard."""
    source_id = text(source.execute_command("CLUSTER", "MYID"))
    destination_id = text(destination.execute_command("CLUSTER", "MYID"))
    port = port_of(destination)
    destination.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
    source.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", destination_id)
    while keys := source.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
        source.execute_command("MIGRATE", "127.0.0.1", port, "", 0, 5000, "KEYS", *keys)
    for node in client.get_primaries():
        node.redis_connection.execute_command("CLUSTER", "SETSLOT", slot, "NODE", destination_id)


def test_leases_live_in_their_buckets_slots_and_renew_through_the_cluster(
    cluster_client: redis.RedisCluster,
) -> None:
    settings = Settings()
    a = BucketLeases(cluster_client, settings.keys, "daemon-a", BUCKETS, 30_000)
    b = BucketLeases(cluster_client, settings.keys, "daemon-b", BUCKETS, 30_000)
    assert a.acquire(3) | b.acquire(3) == set(range(BUCKETS))
    assert a.renew() == set() and b.renew() == set()
    for bucket, holder in a.holders().items():
        keys = bucket_keys(settings.keys, bucket, BUCKETS)
        assert key_slot(keys.lease.encode()) == key_slot(keys.stream.encode())
        assert holder == ("daemon-a" if bucket in a.held else "daemon-b")


def test_a_client_with_buckets_remembers_into_and_recalls_from_each_agents_bucket(
    cluster_client: redis.RedisCluster, engine: EmbeddingEngine
) -> None:
    settings = Settings(buckets=BUCKETS)
    memory = MemoryClient(cluster_client, settings, engine)
    states = simulate_states(120, num_agents=10, seed=6)
    memory.remember_many({"agent_id": s["agent_id"], "state": s} for s in states[:60])
    for state in states[60:]:
        memory.remember(str(state["agent_id"]), state)
    per_bucket = Counter(bucket_of(str(s["agent_id"]), BUCKETS) for s in states)
    for bucket, count in per_bucket.items():
        assert cluster_client.xlen(bucket_keys(settings.keys, bucket, BUCKETS).stream) == count

    for bucket in per_bucket:  # the daemon's part, per bucket (leases come with the daemon)
        keys = bucket_keys(settings.keys, bucket, BUCKETS)
        ingestor = Ingestor(
            node_client(cluster_client, keys.stream), engine, settings, "d", keys=keys
        )
        ingestor.store.ensure_indexes()
        ingestor.ensure_group()
        while messages := ingestor.reader.read_ready():
            ingestor.process(messages)

    for state in states[::7]:
        agent = str(state["agent_id"])
        found = memory.recall(agent, state, k=3, tiers=("stm",))
        best = found.by_tier["stm"][0]
        assert best.agent_id == agent and best.state == state
        assert memory.store_for(agent).keys == agent_keys(settings.keys, agent, BUCKETS)
    with pytest.raises(ConfigError, match="not yet on a Redis Cluster"):
        memory.store  # noqa: B018 (the one-Redis store)


def test_daemons_share_the_buckets_and_one_takes_over_when_the_other_stops(
    embedded_cluster: EmbeddedCluster, cluster_client: redis.RedisCluster, engine: EmbeddingEngine
) -> None:
    settings = DAEMON_SETTINGS
    memory = MemoryClient(cluster_client, settings, engine)
    states = simulate_states(360, num_agents=12, seed=8)

    def stored() -> int:
        return sum(
            memory.store_for(a).count("stm", a) for a in {str(s["agent_id"]) for s in states}
        )

    daemons = [
        ClusterDaemon(redis.RedisCluster.from_url(embedded_cluster.url), engine, settings, name)
        for name in ("daemon-a", "daemon-b")
    ]
    threads = [threading.Thread(target=d.run) for d in daemons]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: all(len(d.buckets) == BUCKETS // 2 for d in daemons), 20, "a fair split")
        assert set(daemons[0].buckets).isdisjoint(daemons[1].buckets)
        memory.remember_many({"agent_id": s["agent_id"], "state": s} for s in states[:240])
        wait_for(lambda: stored() == 240, 30, "the first 240 states stored")

        daemons[0].request_stop()  # gives its leases back
        threads[0].join(10)
        wait_for(lambda: len(daemons[1].buckets) == BUCKETS, 20, "the takeover")
        memory.remember_many({"agent_id": s["agent_id"], "state": s} for s in states[240:])
        wait_for(lambda: stored() == 360, 30, "all 360 states stored")
    finally:
        for daemon in daemons:
            daemon.request_stop()
        for thread in threads:
            thread.join(10)
    for bucket in range(BUCKETS):
        keys = bucket_keys(settings.keys, bucket, BUCKETS)
        node = node_client(cluster_client, keys.stream)
        assert node.xpending(keys.stream, keys.group)["pending"] == 0
    assert stored() == 360  # each once: the time indexes count records, not writes


def test_a_dead_daemons_buckets_and_unacked_entries_are_taken_over(
    embedded_cluster: EmbeddedCluster, cluster_client: redis.RedisCluster, engine: EmbeddingEngine
) -> None:
    settings = DAEMON_SETTINGS
    memory = MemoryClient(cluster_client, settings, engine)
    states = simulate_states(180, num_agents=12, seed=9)
    memory.remember_many({"agent_id": s["agent_id"], "state": s} for s in states)
    dead = ClusterDaemon(
        redis.RedisCluster.from_url(embedded_cluster.url), engine, settings, "dead"
    )
    dead._balance()  # alone: it leases every bucket
    assert len(dead.buckets) == BUCKETS
    read = sum(len(b.ingestor.reader.read_ready()) for b in dead.buckets.values())
    assert read == 180  # delivered to it, never acked: then it dies without a word

    heir = ClusterDaemon(
        redis.RedisCluster.from_url(embedded_cluster.url), engine, settings, "heir"
    )
    thread = threading.Thread(target=heir.run)
    thread.start()
    try:
        agents = {str(s["agent_id"]) for s in states}
        wait_for(
            lambda: sum(memory.store_for(a).count("stm", a) for a in agents) == 180,
            30,
            "the dead daemon's entries claimed and stored",
        )
        assert len(heir.buckets) == BUCKETS and heir.stats.claimed == 180
    finally:
        heir.request_stop()
        thread.join(10)


def test_a_daemon_consolidates_the_buckets_it_holds(
    embedded_cluster: EmbeddedCluster, cluster_client: redis.RedisCluster, engine: EmbeddingEngine
) -> None:
    settings = dataclasses.replace(
        DAEMON_SETTINGS, consolidate_interval_s=0.3,
        stm_max_age_s=None, stm_max_per_agent=5, im_max_age_s=None, im_max_per_agent=None,
    )  # fmt: skip
    memory = MemoryClient(cluster_client, settings, engine)
    states = simulate_states(180, num_agents=12, seed=10)
    memory.remember_many({"agent_id": s["agent_id"], "state": s} for s in states)
    agents = sorted({str(s["agent_id"]) for s in states})
    daemon = ClusterDaemon(redis.RedisCluster.from_url(embedded_cluster.url), engine, settings, "d")
    thread = threading.Thread(target=daemon.run)
    thread.start()
    try:
        wait_for(
            lambda: all(
                (memory.store_for(a).count("stm", a), memory.store_for(a).count("im", a)) == (5, 10)
                for a in agents
            ),
            30,
            "each agent's 5 newest in STM and the 10 others in IM",
        )
    finally:
        daemon.request_stop()
        thread.join(10)


def test_the_service_daemon_consumes_the_buckets_when_there_are_buckets(
    embedded_cluster: EmbeddedCluster, cluster_client: redis.RedisCluster, engine: EmbeddingEngine
) -> None:
    settings = Settings(
        redis_url=embedded_cluster.url, buckets=BUCKETS, block_ms=50, heartbeat_ttl_s=1.5,
    )  # fmt: skip
    daemon = Daemon(settings, engine=engine, handle_signals=False, consumer="serve-1")
    thread = threading.Thread(target=daemon.run)
    thread.start()
    try:
        assert daemon.wait_started(20)
        memory = MemoryClient(cluster_client, settings, engine)
        states = simulate_states(60, num_agents=6, seed=12)
        memory.remember_many({"agent_id": s["agent_id"], "state": s} for s in states)
        agents = {str(s["agent_id"]) for s in states}
        wait_for(
            lambda: sum(memory.store_for(a).count("stm", a) for a in agents) == 60,
            30,
            "the 60 states stored by the service daemon",
        )
    finally:
        daemon.request_stop()
        thread.join(10)
    assert not thread.is_alive()


def test_the_async_client_remembers_into_each_agents_bucket(
    embedded_cluster: EmbeddedCluster, cluster_client: redis.RedisCluster, engine: EmbeddingEngine
) -> None:
    settings = Settings(redis_url=embedded_cluster.url, buckets=BUCKETS)
    states = simulate_states(40, num_agents=8, seed=13)

    async def remember() -> None:
        async with AsyncMemoryClient.from_settings(settings, engine) as memory:
            await memory.remember_many({"agent_id": s["agent_id"], "state": s} for s in states[:20])
            for state in states[20:]:
                await memory.remember(str(state["agent_id"]), state)

    asyncio.run(remember())
    per_bucket = Counter(bucket_of(str(s["agent_id"]), BUCKETS) for s in states)
    for bucket in range(BUCKETS):
        stream = bucket_keys(settings.keys, bucket, BUCKETS).stream
        assert cluster_client.xlen(stream) == per_bucket.get(bucket, 0)
    assert cluster_client.exists(settings.keys.stream) == 0  # nothing in the untagged stream


def test_the_buckets_on_one_node_are_read_in_one_round_trip(
    cluster_client: redis.RedisCluster,
) -> None:
    settings = Settings(buckets=BUCKETS)
    by_node: dict[int, list[int]] = {}
    for bucket in range(BUCKETS):
        stream = bucket_keys(settings.keys, bucket, BUCKETS).stream
        by_node.setdefault(cluster_client.get_node_from_key(stream).port, []).append(bucket)
    first, *others = max(by_node.values(), key=len)
    assert others, "a node with two buckets or more"
    node = node_client(cluster_client, bucket_keys(settings.keys, first, BUCKETS).stream)
    readers = [
        GroupReader(node, settings, "d", keys=bucket_keys(settings.keys, b, BUCKETS))
        for b in (first, *others)
    ]
    for number, reader in enumerate(readers):
        if number:  # the first bucket's group is never made: its read fails alone
            reader.client.xgroup_create(
                reader.keys.stream, reader.keys.group, id="0", mkstream=True
            )
        for step in range(number + 1):
            node.xadd(reader.keys.stream, {"step": str(step)})
    batches = read_ready_together(readers)
    assert batches[0] is None
    assert [len(b or []) for b in batches[1:]] == [n + 1 for n in range(1, len(readers))]
    assert read_ready_together(readers)[1:] == [[] for _ in others]  # delivered once
