"""Recall throughput and latency against raw KNN, same data, same run.

P client processes recall for a fixed time through `MemoryClient.recall` (one tier, then all
three); then P processes run the raw agent-filtered KNN the recall starts from
(`FT.SEARCH ... =>[KNN 10 ...] NOCONTENT`), which no client can beat. Printed: recalls/s and
p50/p99 of each, the CPU per recall of Redis (INFO cpu over the window) and of the clients,
and the ratio of the client to the raw rate (goal: >= 0.5 for one tier). The budget line says
what that goal leaves a recall of the box's cores (Redis and the clients share them), against
what one took: the cost, not the latency, bounds the rate when every process runs at once.
Then, one process: per-tier KNN through `TierStore.search` against the raw floor (goal: p99
<= 1.3x the raw one).

    python bench/recall.py [--memories 200000] [--agents 1000] [--processes 4] [--seconds 5]

Memories are written into every tier as ingest and consolidation leave them (STM keeps its
state and features); the timing starts once Redis rewrites no AOF. Use --memories 1000000 for
the 1M figure: Redis then holds about 14 GB.
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import redis
import torch
from ingest import redis_cpu_s, wait_for_background_saves
from machine import cpu_budget, fill_tiers, machine
from redisvl.query.filter import Tag

from memory_tiers import TIERS, EmbeddingEngine, MemoryClient, Settings
from memory_tiers.client import connect
from memory_tiers.server import EmbeddedRedis
from memory_tiers.sim import simulate_states
from memory_tiers.store import TierStore

PREFIX = "rbench"
GOAL = 0.5
"""A single-tier recall's rate over the raw KNN's that the bench aims at."""


def _engine(settings: Settings) -> EmbeddingEngine:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return EmbeddingEngine.from_checkpoint(settings.model_file, expect_dims=settings.dims)


def _raw_knn(settings: Settings, agent_id: str, vector: np.ndarray) -> tuple[Any, ...]:
    """The agent-filtered STM KNN a recall starts from, with nothing returned but ids."""
    return (
        "FT.SEARCH", settings.keys.index("stm"),
        f"({Tag('agent_id') == agent_id})=>[KNN 10 @vec $vector AS distance]", "NOCONTENT",
        "LIMIT", 0, 10, "PARAMS", 2, "vector", vector.astype(np.float32).tobytes(),
        "DIALECT", 2,
    )  # fmt: skip


def worker(
    kind: str, settings: Settings, probes: Sequence[Mapping[str, Any]], seconds: float, start: float
) -> tuple[list[float], float]:
    """One client process: `kind` recalls in a loop from `start` for `seconds`; their
    latencies, and the CPU seconds the process spent on them."""
    torch.set_num_threads(1)
    client = connect(settings)  # as MemoryClient.from_settings connects: RESP2
    engine = _engine(settings)
    if kind == "raw":
        vectors = engine.encode_states(probes)["stm"]
        pairs = zip(probes, vectors, strict=True)
        commands = [_raw_knn(settings, p["agent_id"], v) for p, v in pairs]
        run = lambda i: client.execute_command(*commands[i % len(commands)])  # noqa: E731
    else:
        memory = MemoryClient(client, settings, engine)
        tiers = ("stm",) if kind == "stm" else TIERS
        run = lambda i: memory.recall(  # noqa: E731
            probes[i % len(probes)]["agent_id"], probes[i % len(probes)], k=10, tiers=tiers
        )
    run(0)  # warm: the model, the indexes checked once
    while time.time() < start:
        time.sleep(0.001)
    latencies: list[float] = []
    i = 0
    cpu = time.process_time()
    while time.time() < start + seconds:
        began = time.perf_counter()
        run(i)
        latencies.append(time.perf_counter() - began)
        i += 1
    return latencies, time.process_time() - cpu


@dataclass(frozen=True)
class Rate:
    """What P processes of one kind of recall did in one timed window."""

    per_s: float
    p50_ms: float
    p99_ms: float
    cpu_us: Mapping[str, float]
    """CPU microseconds per recall of `redis` (INFO cpu over the window: every thread of it)
    and of the `clients` (the processes')."""

    def line(self) -> str:
        spent = ", ".join(f"{party} {us:,.0f} us" for party, us in self.cpu_us.items())
        return (
            f"{self.per_s:>8,.0f} recalls/s  p50 {self.p50_ms:.2f} ms  p99 {self.p99_ms:.2f} ms"
            f"  CPU per recall: {spent}"
        )


def rate(
    client: redis.Redis,
    kind: str,
    settings: Settings,
    probes: Sequence[Mapping[str, Any]],
    args: argparse.Namespace,
) -> Rate:
    """`kind` recalls from --processes processes for --seconds: their rate and cost."""
    share = [probes[i :: args.processes] for i in range(args.processes)]
    start = time.time() + 15.0  # every process loaded and warm by then
    context = multiprocessing.get_context("spawn")
    with context.Pool(args.processes) as pool:
        pending = pool.starmap_async(
            worker, [(kind, settings, part, args.seconds, start) for part in share]
        )
        time.sleep(max(0.0, start - time.time()))
        redis_before = redis_cpu_s(client)
        results = pending.get()
        redis_s = redis_cpu_s(client) - redis_before
    latencies = np.concatenate([np.array(r) for r, _ in results]) * 1000
    count = len(latencies)
    p50, p99 = np.percentile(latencies, [50, 99])
    clients_s = sum(cpu for _, cpu in results)
    cpu_us = {"redis": redis_s / count * 1e6, "clients": clients_s / count * 1e6}
    return Rate(count / args.seconds, float(p50), float(p99), cpu_us)


def search_floor(settings: Settings, probes: Sequence[Mapping[str, Any]]) -> str:
    """Per-tier KNN through TierStore.search against the raw KNN, one process, p99 ratio."""
    client = connect(settings)  # as MemoryClient.from_settings connects: RESP2
    engine = _engine(settings)
    store = TierStore(client, settings, engine.schema)
    vectors = engine.encode_states(probes)["stm"]
    timed: dict[str, list[float]] = {"raw": [], "search": []}
    for round_ in range(2):  # interleaved, so both see the same box
        for probe, vector in zip(probes, vectors, strict=True):
            for name in timed:
                began = time.perf_counter()
                if name == "raw":
                    client.execute_command(*_raw_knn(settings, probe["agent_id"], vector))
                else:
                    store.search("stm", vector, k=10, agent_id=probe["agent_id"])
                if round_:
                    timed[name].append(time.perf_counter() - began)
    p = {name: np.percentile(np.array(v) * 1000, [50, 99]) for name, v in timed.items()}
    return (
        f"  STM KNN top-10, one agent: raw p50 {p['raw'][0]:.2f} / p99 {p['raw'][1]:.2f} ms; "
        f"TierStore.search p50 {p['search'][0]:.2f} / p99 {p['search'][1]:.2f} ms; "
        f"p99 ratio {p['search'][1] / p['raw'][1]:.2f} (goal <= 1.3)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--memories", type=int, default=200_000, help="per tier")
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--processes", type=int, default=4, help="P client processes")
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    parser.add_argument("--probes", type=int, default=2000, help="held-out query states")
    args = parser.parse_args()
    print(f"machine: {machine()}; torch threads 1 per process", flush=True)
    with EmbeddedRedis() as server:
        settings = replace(Settings.from_env(), redis_url=server.url, prefix=PREFIX)
        client = redis.Redis.from_url(server.url)
        engine = _engine(settings)
        torch.set_num_threads(1)
        states = simulate_states(args.memories + args.probes, num_agents=args.agents, seed=2)
        stored, probes = states[: args.memories], states[args.memories :]
        began = time.perf_counter()
        fill_tiers(TierStore(client, settings, engine.schema), engine, stored, args.agents)
        wait_for_background_saves(client)  # the fill's AOF rewrite would load the first part
        print(
            f"{args.memories:,} memories per tier over {args.agents:,} agents "
            f"(filled in {time.perf_counter() - began:.0f} s); {args.processes} processes, "
            f"{args.seconds:.0f} s each",
            flush=True,
        )
        rates = {}
        for kind, label in (
            ("raw", "raw KNN (FT.SEARCH NOCONTENT)"),
            ("stm", "MemoryClient.recall, STM"),
            ("all", "MemoryClient.recall, 3 tiers"),
        ):
            rates[kind] = rate(client, kind, settings, probes, args)
            print(f"  {label:32s} {rates[kind].line()}", flush=True)
        raw_per_s = rates["raw"].per_s
        print(
            f"  ratio to raw: STM {rates['stm'].per_s / raw_per_s:.2f} (goal >= {GOAL}), "
            f"3 tiers {rates['all'].per_s / raw_per_s:.2f}",
            flush=True,
        )
        print(cpu_budget("STM recall", GOAL, raw_per_s, rates["stm"].cpu_us), flush=True)
        print(search_floor(settings, probes[:500]), flush=True)


if __name__ == "__main__":
    main()
