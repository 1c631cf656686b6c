"""A Redis Cluster (MT_BUCKETS > 1) against one Redis: the same states, the same run.

Targets: one embedded Redis (B = 1) and a cluster of --masters embedded masters (B = --buckets).
On each, from empty:

- ingest: --states simulated states of --agents agents are XADDed first
  (`MemoryClient.remember_many`, routed to each agent's bucket), then one `memory-tiers serve`
  process (consolidation off) is timed from its first commit to its last. Printed: states/s,
  the daemon's CPU per state, Redis's CPU per state (all masters together), and the balance:
  keys per master, max/min.
- memory: bytes per memory in each tier (used_memory over all masters, before and after the
  tier is written; STM as ingest left it, IM and LTM written from the same states), with the
  bucket indexes' BLOCK_SIZE (store.BUCKET_BLOCK_SIZE).
- recall: `MemoryClient.recall` of --recalls held-out states, STM only and all three tiers,
  p50/p99 (this process, one torch thread).

A 2-core box cannot show throughput scaling (three masters share the two cores with the
daemon); the CPU per state and the balance are what carry over to a real cluster.

    python bench/cluster.py [--states 20000] [--agents 1000] [--buckets 48] [--recalls 300]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import redis
import torch
from ingest import percentiles, process_cpu_s, redis_cpu_s, stop_daemons
from machine import machine

from memory_tiers import TIERS, EmbeddingEngine, MemoryClient, Settings
from memory_tiers.attributes import attribute_values
from memory_tiers.buckets import bucket_keys
from memory_tiers.server import EmbeddedCluster, EmbeddedRedis
from memory_tiers.sim import simulate_states
from memory_tiers.store import BUCKET_BLOCK_SIZE, MemoryRecord, TierStore
from memory_tiers.tiers import reconstructions

ROOT = Path(__file__).resolve().parent.parent


class Target:
    """One deployment under test: its masters, and a MemoryClient routed as agents' are."""

    def __init__(self, name: str, url: str, settings: Settings, engine: EmbeddingEngine) -> None:
        self.name = name
        self.settings = replace(settings, redis_url=url)
        cluster = settings.buckets > 1
        client = (redis.RedisCluster if cluster else redis.Redis).from_url(url)
        self.memory = MemoryClient(client, self.settings, engine)
        self.masters: list[redis.Redis] = (
            [n.redis_connection for n in client.get_primaries()] if cluster else [client]
        )

    def used_memory(self) -> int:
        return sum(int(m.info("memory")["used_memory"]) for m in self.masters)

    def redis_cpu_s(self) -> float:
        return sum(redis_cpu_s(m) for m in self.masters)

    def stored(self, tier: str) -> int:
        """Records in `tier`, all buckets."""
        keys = self.settings.keys
        return sum(
            self.memory.redis.zcard(bucket_keys(keys, b, self.settings.buckets).time_index(tier))
            for b in range(self.settings.buckets)
        )

    def records_per_master(self) -> list[int]:
        return [int(m.dbsize()) for m in self.masters]


def ingest(target: Target, states: Sequence[Mapping[str, Any]]) -> list[str]:
    """XADD `states`, then time one daemon storing them, from its first commit; the printed
    lines."""
    memory = target.memory
    for start in range(0, len(states), 1000):
        memory.remember_many(
            {"agent_id": s["agent_id"], "state": s, "step": start + i}
            for i, s in enumerate(states[start : start + 1000])
        )
    before_memory = target.used_memory()
    with (
        tempfile.TemporaryDirectory(prefix="mtbench-cluster-") as folder,
        daemon(target.settings, Path(folder) / "daemon.log") as process,
    ):
        wait(lambda: target.stored("stm") > 0, 120, "the daemon's first commit", process)
        started, cpu0, redis0 = (
            time.perf_counter(),
            process_cpu_s(process.pid),
            target.redis_cpu_s(),
        )
        first = target.stored("stm")
        wait(lambda: target.stored("stm") == len(states), 600, "every state stored", process)
        seconds = time.perf_counter() - started
        daemon_cpu = process_cpu_s(process.pid) - cpu0
        redis_cpu = target.redis_cpu_s() - redis0
    timed = len(states) - first
    per_master = target.records_per_master()
    balance = max(per_master) / max(1, min(per_master))
    stm_bytes = (target.used_memory() - before_memory) / len(states)
    return [
        f"  ingest: {timed / seconds:,.0f} states/s ({timed:,} after the daemon's first commit);"
        f" CPU per state: daemon {daemon_cpu / timed * 1e6:.0f} µs, Redis "
        f"{redis_cpu / timed * 1e6:.0f} µs (all masters)",
        f"  keys per master: {per_master} (max/min {balance:.2f})",
        f"  STM: {stm_bytes:,.0f} B per memory",
    ]


@contextmanager
def daemon(settings: Settings, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """One `memory-tiers serve --no-consolidate` process on `settings`."""
    env = {key: v for key, v in os.environ.items() if not key.startswith("MT_")}
    env.update(
        MT_REDIS_URL=settings.redis_url or "",
        MT_BUCKETS=str(settings.buckets),
        MT_BATCH_SIZE=str(settings.batch_size),
        MT_TORCH_THREADS="1",
    )
    if settings.model_path is not None:  # else the model shipped in the package
        env["MT_MODEL_PATH"] = str(settings.model_path)
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "memory_tiers", "serve", "--no-consolidate"],
            env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            yield process
        finally:
            stop_daemons([process])


def lower_tiers(target: Target, engine: EmbeddingEngine, states: Sequence[Any]) -> list[str]:
    """Write IM and LTM records of `states` into each agent's bucket; bytes per memory."""
    by_agent: dict[str, list[int]] = defaultdict(list)
    for i, state in enumerate(states):
        by_agent[str(state["agent_id"])].append(i)
    vectors = engine.encode_features(engine.schema.extract_batch(states))
    lines = []
    for tier in ("im", "ltm"):
        before = target.used_memory()
        rebuilt = reconstructions(engine, tier, vectors[tier])
        for agent, rows in by_agent.items():
            target.memory.in_bucket(agent, write_rows(tier, states, vectors[tier], rebuilt, rows))
        per_memory = (target.used_memory() - before) / len(states)
        lines.append(f"  {tier.upper()}: {per_memory:,.0f} B per memory")
    return lines


def write_rows(
    tier: str,
    states: Sequence[Any],
    vectors: np.ndarray,
    rebuilt: Sequence[np.ndarray | None],
    rows: Sequence[int],
) -> Callable[[TierStore], None]:
    def write(store: TierStore) -> None:
        store.write(tier, [
            MemoryRecord(
                entry_id=f"{1_700_000_000_000 + i}-0", agent_id=states[i]["agent_id"],
                agent_type=states[i]["agent_type"], step=i, ts=1_700_000_000_000 + i,
                model_version="bench", vector=vectors[i], reconstruction=rebuilt[i],
                attributes=attribute_values(store.state_attributes, states[i]),
            )
            for i in rows
        ])  # fmt: skip

    return write


def recall(target: Target, probes: Sequence[Mapping[str, Any]]) -> list[str]:
    memory = target.memory
    lines = []
    for label, tiers in (("STM only", ("stm",)), ("3 tiers", TIERS)):
        for probe in probes[:20]:  # warm: each bucket's store opened, indexes checked
            memory.recall(str(probe["agent_id"]), probe, tiers=tiers)
        samples = []
        for probe in probes:
            begin = time.perf_counter()
            memory.recall(str(probe["agent_id"]), probe, k=10, tiers=tiers)
            samples.append(time.perf_counter() - begin)
        lines.append(f"  recall, {label}: {percentiles(samples)}")
    return lines


def wait(
    condition: Callable[[], bool], timeout_s: float, what: str, daemon: subprocess.Popen[bytes]
) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if daemon.poll() is not None:
            raise RuntimeError(f"the daemon exited ({daemon.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--states", type=int, default=20_000)
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--buckets", type=int, default=48)
    parser.add_argument("--masters", type=int, default=3)
    parser.add_argument("--recalls", type=int, default=300)
    args = parser.parse_args()
    torch.set_num_threads(1)
    settings = Settings.from_env()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        engine = EmbeddingEngine.from_checkpoint(settings.model_file, expect_dims=settings.dims)
    states = simulate_states(args.states + args.recalls, num_agents=args.agents, seed=5)
    stored, probes = states[: args.states], states[args.states :]
    print(machine())
    print(
        f"{args.states:,} states of {args.agents:,} agents; cluster: {args.masters} masters, "
        f"{args.buckets} buckets, bucket indexes BLOCK_SIZE {BUCKET_BLOCK_SIZE}"
    )
    with EmbeddedRedis() as one, EmbeddedCluster(masters=args.masters) as cluster:
        for target in (
            Target("one Redis (B = 1)", one.url, settings, engine),
            Target(
                f"cluster of {args.masters} (B = {args.buckets})",
                cluster.url,
                replace(settings, buckets=args.buckets),
                engine,
            ),
        ):
            print(target.name)
            for line in [
                *ingest(target, stored),
                *lower_tiers(target, engine, stored),
                *recall(target, probes),
            ]:
                print(line, flush=True)


if __name__ == "__main__":
    main()
