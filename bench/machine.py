"""What the bench scripts beside this one share: the machine they ran on, a clean Redis,
tiers filled as ingest and consolidation leave them."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Mapping, Sequence
from contextlib import suppress
from typing import Any

import redis

from memory_tiers import TIERS, EmbeddingEngine, Keys
from memory_tiers.attributes import attribute_values
from memory_tiers.store import MemoryRecord, TierStore
from memory_tiers.tiers import reconstructions


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo."""
    with suppress(OSError), open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def machine() -> str:
    """Cores and CPU model, e.g. '2 x Intel(R) Xeon(R) Processor'."""
    return f"{os.cpu_count()} x {cpu_name()}"


def cpu_budget(what: str, goal: float, raw_per_s: float, spent_us: Mapping[str, float]) -> str:
    """What `goal` of the raw rate leaves one `what` of the machine's CPU, against what one took
    (`spent_us`: microseconds per party). Redis and the clients share the cores, so when all
    run at once the cost, not the latency, bounds the rate: cores / CPU per `what`."""
    cores = os.cpu_count() or 1
    allowed = cores / (goal * raw_per_s) * 1e6
    spent = sum(spent_us.values())
    parts = ", ".join(f"{party} {us:,.0f}" for party, us in spent_us.items())
    return (
        f"  CPU budget: {goal} of raw on {cores} cores leaves {allowed:,.0f} us per {what}; "
        f"it took {spent:,.0f} ({parts}): at most {cores / spent * 1e6 / raw_per_s:.2f} of raw "
        "with every core busy"
    )


def clean(client: redis.Redis, prefix: str) -> None:
    """Drop the indexes and keys under `prefix` (benches only: the service never scans)."""
    keys = Keys(prefix)
    for tier in TIERS:
        with suppress(redis.ResponseError):
            client.execute_command("FT.DROPINDEX", keys.index(tier))
    batch: list[bytes] = []
    for key in client.scan_iter(match=f"{prefix}:*", count=10_000):
        batch.append(key)
        if len(batch) == 10_000:
            client.unlink(*batch)
            batch = []
    if batch:
        client.unlink(*batch)


def fill_tiers(
    store: TierStore,
    engine: EmbeddingEngine,
    states: Sequence[Mapping[str, Any]],
    agents: int,
    chunk: int = 1000,
) -> None:
    """Write every state into every tier as ingest and consolidation leave it: STM keeps the
    state and its features, IM and LTM their vectors and reconstructions; all carry the
    state's attributes.
    Entry ids count up from now minus len(states) ms, one per state; step is i // agents."""
    store.ensure_indexes()
    t0 = int(time.time() * 1000) - len(states)
    for i in range(0, len(states), chunk):
        part = states[i : i + chunk]
        features = engine.schema.extract_batch(part)
        vectors = engine.encode_features(features)
        for tier in TIERS:
            rebuilt = reconstructions(engine, tier, vectors[tier])
            store.write(tier, [
                MemoryRecord(
                    entry_id=f"{t0 + i + j}-0", agent_id=s["agent_id"], agent_type=s["agent_type"],
                    step=(i + j) // agents, ts=t0 + i + j, model_version=engine.version,
                    vector=vectors[tier][j],
                    state_json=json.dumps(s) if tier == "stm" else None,
                    features=features[j] if tier == "stm" else None,
                    reconstruction=rebuilt[j],
                    attributes=attribute_values(store.state_attributes, s),
                )
                for j, s in enumerate(part)
            ])  # fmt: skip
