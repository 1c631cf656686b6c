"""The operators' commands on a Redis Cluster (settings.buckets > 1): check and stats read every
bucket on its master, summed per master and in all, with the lease map."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner, Result
from redis.crc import key_slot
from test_cluster import BUCKETS, DAEMON_SETTINGS, reshard
from test_ingest import wait_for

from memory_tiers import TIERS, EmbeddingEngine, MemoryClient, Settings
from memory_tiers.buckets import agent_keys, bucket_keys, bucket_of
from memory_tiers.cli import main
from memory_tiers.cluster_daemon import ClusterDaemon
from memory_tiers.protocol import encode_entry
from memory_tiers.resp import text
from memory_tiers.server import EmbeddedCluster
from memory_tiers.sim import simulate_states
from memory_tiers.status import Heartbeat, beat, heartbeats
from memory_tiers.store import TierStore


def run(url: str, *args: str, **env: str) -> Result:
    """`memory-tiers ARGS` against the cluster at `url`, with its buckets."""
    return CliRunner().invoke(main, list(args), env={"MT_REDIS_URL": url, "MT_BUCKETS": "6", **env})


def rows(section: str) -> list[list[str]]:
    return [line.split() for line in section.splitlines()]


@contextmanager
def consuming(
    url: str, engine: EmbeddingEngine, settings: Settings, name: str
) -> Iterator[ClusterDaemon]:
    """A ClusterDaemon named `name` running in a thread while the block runs."""
    daemon = ClusterDaemon(
        redis.RedisCluster.from_url(url), engine, settings, name, consolidate=False
    )
    thread = threading.Thread(target=daemon.run)
    thread.start()
    try:
        yield daemon
    finally:
        daemon.request_stop()
        thread.join(10)


def test_stats_sums_each_masters_buckets_and_shows_the_lease_map(
    embedded_cluster: EmbeddedCluster, cluster_client: redis.RedisCluster, engine: EmbeddingEngine
) -> None:
    settings = DAEMON_SETTINGS
    memory = MemoryClient(cluster_client, settings, engine)
    states = simulate_states(120, num_agents=12, seed=14)
    states += [dict(s, agent_id="agent-busy") for s in simulate_states(15, seed=15)]
    agents = {str(s["agent_id"]) for s in states}
    broken = agent_keys(settings.keys, "agent-x", BUCKETS)
    with consuming(embedded_cluster.url, engine, settings, "stats-d") as daemon:
        wait_for(lambda: len(daemon.buckets) == BUCKETS, 20, "every bucket leased")
        memory.remember_many({"agent_id": s["agent_id"], "state": s} for s in states)
        cluster_client.xadd(broken.stream, {"agent_id": "agent-x", "state": "{not json"})
        wait_for(
            lambda: (
                sum(memory.store_for(a).count("stm", a) for a in agents) == len(states)
                and cluster_client.xlen(broken.dead_letters) == 1
            ),
            30,
            "every state stored, the broken one dead-lettered",
        )
        wait_for(lambda: daemon_stored(cluster_client) == 135, 10, "a late heartbeat")
        result = run(embedded_cluster.url, "stats", "--top", "2")
    assert result.exit_code == 0, result.output

    tables = result.output.strip().split("\n\n")
    assert rows(tables[0]) == [
        ["tier", "memories", "agents", "indexed", "indexing", "failures"],
        ["stm", "135", "13", "135", "0"],
        ["im", "0", "0", "0", "0"],
        ["ltm", "0", "0", "0", "0"],
    ]
    assert rows(tables[1])[1] == ["mt:states:{*}", "136", "0", "0", "1", "1"]
    node_of = {
        b: cluster_client.get_node_from_key(bucket_keys(settings.keys, b, BUCKETS).stream).name
        for b in range(BUCKETS)
    }
    stored = Counter(node_of[bucket_of(str(s["agent_id"]), BUCKETS)] for s in states)
    dead = Counter({node_of[bucket_of("agent-x", BUCKETS)]: 1})
    streams = stored + dead
    buckets = Counter(node_of.values())
    assert len(buckets) == 3  # six buckets over three masters
    assert rows(tables[2]) == [
        ["node", "buckets", "stm", "im", "ltm", "indexed", "indexing", "failures", "stream",
         "pending", "dead", "letters"],
        *(
            [node, str(buckets[node]), str(stored[node]), "0", "0", str(stored[node]), "0",
             str(streams[node]), "0", str(dead[node])]
            for node in sorted(buckets)
        ),
    ]  # fmt: skip
    assert sum(int(row[2]) for row in rows(tables[2])[1:]) == len(states)
    assert rows(tables[3]) == [
        ["daemon", "leases", "buckets"],
        ["stats-d", "6", "0-5"],
        ["every", "bucket", "leased"],
    ]
    daemon_row = rows(tables[4])[1]
    assert daemon_row[0] == "stats-d" and daemon_row[2] == str(os.getpid())
    assert daemon_row[3] == engine.version and daemon_row[5:7] == ["135", "1"]
    assert rows(tables[5]) == [
        ["model", "stm", "im", "ltm", "served"],
        [engine.version, "135", "0", "0", "yes"],  # the live daemon's heartbeat names it
    ]
    assert rows(tables[6])[:2] == [
        ["agent", "stm", "im", "ltm", "total"],
        ["agent-busy", "15", "0", "0", "15"],
    ]


def daemon_stored(client: redis.RedisCluster) -> int:
    """What the one live daemon's heartbeat says it stored."""
    (heartbeat,) = heartbeats(client, DAEMON_SETTINGS.keys)
    return heartbeat.stored


def test_check_sees_the_cluster_daemons_alive_and_no_more_once_they_stop(
    embedded_cluster: EmbeddedCluster, cluster_client: redis.RedisCluster, engine: EmbeddingEngine
) -> None:
    url = embedded_cluster.url
    with consuming(url, engine, DAEMON_SETTINGS, "check-a") as a:
        with consuming(url, engine, DAEMON_SETTINGS, "check-b") as b:
            wait_for(lambda: len(a.buckets) == len(b.buckets) == BUCKETS // 2, 20, "a fair split")
            both = run(url, "check", "--local")
        one = run(url, "check")
        (beat_a,) = heartbeats(cluster_client, DAEMON_SETTINGS.keys)
    stopped = run(url, "check")
    assert (both.exit_code, both.output) == (
        0,
        "ok: 2 live daemon(s) (check-a, check-b); lag 0 (max 10000), pending 0; 6 of 6 buckets "
        "leased\n",
    )
    assert one.exit_code == 0 and one.output.startswith("ok: 1 live daemon(s) (check-a)")
    assert (beat_a.consumer, beat_a.host, beat_a.pid) == (
        "check-a",
        socket.gethostname(),
        os.getpid(),
    )
    assert (
        beat_a.model_version == engine.version and beat_a.ttl_s == DAEMON_SETTINGS.heartbeat_ttl_s
    )
    assert beat_a.policy is None  # it does not consolidate
    assert stopped.exit_code == 1 and stopped.output.startswith("unhealthy: no live daemon")


def test_check_reads_every_bucket_on_a_cluster(
    embedded_cluster: EmbeddedCluster, cluster_client: redis.RedisCluster
) -> None:
    settings = Settings(buckets=BUCKETS)
    url = embedded_cluster.url
    for i, state in enumerate(simulate_states(30, num_agents=10, seed=16)):
        agent = str(state["agent_id"])
        cluster_client.xadd(
            agent_keys(settings.keys, agent, BUCKETS).stream, encode_entry(agent, state, step=i)
        )
    no_daemon = run(url, "check")
    assert no_daemon.exit_code == 1
    assert no_daemon.output.startswith("unhealthy: no live daemon: no mt:heartbeat:<consumer> key")

    now = time.time()
    beat(
        cluster_client,
        settings.keys,
        Heartbeat("by-hand", socket.gethostname(), os.getpid(), "v1", now, now, 0, 0, 60.0),
    )
    first = bucket_keys(settings.keys, 0, BUCKETS)
    no_index = run(url, "check")
    assert no_index.exit_code == 1
    assert no_index.output.startswith(
        f"unhealthy: index {first.index('stm')}, {first.index('im')}, {first.index('ltm')} missing"
    )

    for bucket in range(BUCKETS):
        keys = bucket_keys(settings.keys, bucket, BUCKETS)
        node = cluster_client.get_node_from_key(keys.stream).redis_connection
        TierStore(node, settings, keys=keys).ensure_indexes()
    lagging = run(url, "check", MT_MAX_LAG="29")
    assert lagging.exit_code == 1
    assert lagging.output.startswith("unhealthy: lagging: 30 stream entries wait unread")
    ok = run(url, "check", MT_MAX_LAG="30")
    assert (ok.exit_code, ok.output) == (
        0,
        "ok: 1 live daemon(s) (by-hand); lag 30 (max 30), pending 0; 0 of 6 buckets leased\n",
    )
    gone = run("redis://127.0.0.1:1", "check")
    assert gone.exit_code == 1 and gone.output.startswith(
        "unhealthy: cannot read Redis at redis://127.0.0.1:1"
    )


def test_a_producer_that_xadds_to_the_stream_bucket_prints_is_stored_in_the_agents_bucket(
    embedded_cluster: EmbeddedCluster, cluster_client: redis.RedisCluster, engine: EmbeddingEngine
) -> None:
    url = embedded_cluster.url
    states = simulate_states(40, num_agents=8, seed=17)
    listing = run(url, "bucket")
    assert listing.exit_code == 0, listing.output
    streams = {row[0]: row[2] for row in rows(listing.output)[1:]}
    assert len(streams) == BUCKETS and len(set(streams.values())) == BUCKETS
    agents = sorted({str(s["agent_id"]) for s in states})
    for agent in agents:
        printed = run(url, "bucket", agent)
        assert printed.exit_code == 0, printed.output
        [header, (name, bucket, tag, stream)] = rows(printed.output)
        assert header == ["agent", "bucket", "tag", "stream"] and name == agent
        assert int(bucket) == zlib.crc32(agent.encode("utf-8")) % BUCKETS  # as documented
        assert streams[bucket] == stream == f"mt:states:{tag}"
    for i, state in enumerate(states):  # what a producer in another language sends
        agent = str(state["agent_id"])
        stream = rows(run(url, "bucket", agent).output)[1][3]
        cluster_client.xadd(stream, {"agent_id": agent, "state": json.dumps(state), "step": i})

    memory = MemoryClient(cluster_client, DAEMON_SETTINGS, engine)
    with consuming(url, engine, DAEMON_SETTINGS, "polyglot"):
        wait_for(
            lambda: sum(memory.store_for(a).count("stm", a) for a in agents) == 40,
            30,
            "the 40 states stored",
        )
    for state in states[::5]:
        best = memory.recall(str(state["agent_id"]), state, k=1, tiers=("stm",)).by_tier["stm"][0]
        assert best.agent_id == state["agent_id"] and best.state == state


def test_bucket_refuses_an_agent_id_the_daemon_would_refuse() -> None:
    result = run("redis://unused:1", "bucket", "a" * 257)
    assert result.exit_code == 2
    assert "Invalid value for AGENT_ID: agent_id is 257 characters, over 256" in result.output


def test_cluster_prepare_and_finish_around_a_reshard_during_ingest_keep_every_memory_once(
    embedded_cluster: EmbeddedCluster,
    cluster_client: redis.RedisCluster,
    engine: EmbeddingEngine,
    model_path: Path,
) -> None:
    url, settings = embedded_cluster.url, DAEMON_SETTINGS
    states = simulate_states(180, num_agents=12, seed=18)
    agents = sorted({str(s["agent_id"]) for s in states})

    def stored() -> int:  # through the cluster client, which follows the slots' moves
        return sum(
            cluster_client.zcard(agent_keys(settings.keys, a, BUCKETS).agent_time_index("stm", a))
            for a in agents
        )

    source = cluster_client.get_node_from_key(agent_keys(settings.keys, agents[0], BUCKETS).stream)
    moving = [
        keys
        for keys in (bucket_keys(settings.keys, b, BUCKETS) for b in range(BUCKETS))
        if cluster_client.get_node_from_key(keys.stream).name == source.name
    ]
    slots = sorted(key_slot(keys.stream.encode()) for keys in moving)
    destination = next(n for n in cluster_client.get_primaries() if n.name != source.name)
    prepare = ["cluster", "prepare", "--to", destination.name, "--slots", f"{slots[0]}-{slots[-1]}"]
    env = {"MT_MODEL_PATH": str(model_path)}
    memory = MemoryClient(cluster_client, settings, engine)
    with consuming(url, engine, settings, "through-the-move"):
        memory.remember_many({"agent_id": s["agent_id"], "state": s} for s in states[:120])
        wait_for(lambda: stored() == 120, 30, "the first 120 states stored")

        prepared = run(url, *prepare, **env)
        assert prepared.exit_code == 0, prepared.output
        names = sorted(keys.index(tier) for keys in moving for tier in TIERS)
        lines = prepared.stdout.splitlines()  # stderr has the log lines
        assert lines[0] == f"created {len(names)} indexes on {destination.name}"
        assert sorted(line.strip() for line in lines[1:]) == names
        again = run(url, *prepare, **env)
        assert again.stdout == f"created 0 indexes on {destination.name}\n"  # done already

        producer = threading.Thread(target=remember_each, args=(url, engine, states[120:]))
        producer.start()  # ingest goes on while the slots move
        for slot in slots:  # as redis-cli --cluster reshard moves them
            reshard(cluster_client, source.redis_connection, destination.redis_connection, slot)
        producer.join(30)
        wait_for(lambda: stored() == 180, 30, "all 180 states stored, the moved buckets too")

    finished = run(url, "cluster", "finish")
    assert finished.exit_code == 0, finished.output
    dropped = finished.stdout.split("dropped ")[1:]
    assert [d.splitlines()[0] for d in dropped] == [
        f"{len(names) if name == source.name else 0} indexes on {name}"
        for name in sorted(n.name for n in cluster_client.get_primaries())
    ]
    assert sorted(line.strip() for d in dropped for line in d.splitlines()[1:]) == names
    left = {text(n) for n in source.redis_connection.execute_command("FT._LIST")}
    assert left.isdisjoint(names)

    with redis.RedisCluster.from_url(url) as fresh:  # it knows where the slots are now
        after = MemoryClient(fresh, settings, engine)
        for agent in agents:
            own = [s for s in states if s["agent_id"] == agent]
            found = after.recall(agent, own[-1], k=len(own) + 5, tiers=("stm",)).by_tier["stm"]
            assert found[0].state == own[-1] and {h.agent_id for h in found} == {agent}
            assert sorted(map(json.dumps, (h.state for h in found))) == sorted(
                map(json.dumps, own)
            )  # each memory, once


def remember_each(url: str, engine: EmbeddingEngine, states: list[dict[str, Any]]) -> None:
    """A producer of its own: remember `states` one by one."""
    with redis.RedisCluster.from_url(url) as client:
        memory = MemoryClient(client, DAEMON_SETTINGS, engine)
        for state in states:
            memory.remember(str(state["agent_id"]), state)


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (
            ["prepare", "--to", "127.0.0.1:1", "--slots", "0-9"],
            {},
            "127.0.0.1:1 is not a master of the cluster (masters: ",
        ),
        (
            ["prepare", "--to", "127.0.0.1:1", "--slots", "9-0"],
            {},
            "Invalid value for --slots: '9-0': expected slots A-B or A",
        ),
        (
            ["prepare", "--to", "127.0.0.1:1", "--slots", "0-16384"],
            {},
            "Invalid value for --slots: '0-16384'",
        ),
        (
            ["finish"],
            {"MT_BUCKETS": "1"},
            "cluster finish works on the buckets of a Redis Cluster: set MT_BUCKETS",
        ),
    ],
)
def test_cluster_commands_refuse_what_they_cannot_do(
    embedded_cluster: EmbeddedCluster, args: list[str], env: dict[str, str], message: str
) -> None:
    result = run(embedded_cluster.url, "cluster", *args, **env)
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
