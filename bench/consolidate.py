"""Consolidation throughput: memories moved per second, STM->IM and IM->LTM, against the raw limit.

One run writes N STM records (random 384-d vectors, round robin over the agents, all older
than both tiers' max age) and moves them with `tiers.consolidate` (model: one batched matrix
product per batch, WATCH race guard, policy selection). It then writes the same records again
and moves them "raw": the same selection, batch size and transaction shape (pipelined HGETALL
read; one MULTI/EXEC of HSET destination + ZADD both time indexes + SADD agent set + DEL source
+ ZREM both time indexes), on the same wire path (resp.py: HGETALLs in one round trip, each
MULTI/EXEC packed with hiredis), with no model (the vector bytes just truncated to the
destination dim, the reconstruction input_dim bytes cut from them) and no Python record
objects; once as one unwatched MULTI/EXEC per batch
(the limit: "raw") and once with the pass's guard, the batch WATCHed and committed in chunks
of WATCH_CHUNK keys ("raw+watch", with --guard-baseline: tells the guard's cost from the
rest).
It prints moves/s for each (best of --rounds, the modes' order alternating) and model/raw.

Uses its own embedded Redis unless MT_REDIS_URL is set; there it works under the key prefix
`mtbench` and deletes what it wrote (its keys and indexes) at the start and the end.

    python bench/consolidate.py [--records 100000] [--agents 1000] [--batch 1000] [--rounds 2]
                                [--guard-baseline]
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings
from collections import defaultdict
from contextlib import ExitStack
from dataclasses import replace
from typing import Any

import numpy as np
import redis
import torch
from machine import clean, machine

from memory_tiers import EmbeddingEngine, Keys, Settings
from memory_tiers.resp import (
    Command,
    execute_transaction,
    first_error,
    pool_connection,
    round_trip,
    watching,
    zadd,
)
from memory_tiers.server import redis_url
from memory_tiers.store import RECONSTRUCTION_FIELD, MemoryRecord, TierStore
from memory_tiers.tiers import WATCH_CHUNK, consolidate, epoch_ms

PREFIX = "mtbench"
DAY_MS = 86_400_000
MODES = ("raw", "model")
GUARD_MODE = "raw+watch"
KEYS = Keys(PREFIX)


def make_records(
    n: int, agents: int, dim: int, model_version: str, seed: int = 0
) -> list[MemoryRecord]:
    """Memories the serving model wrote (its version): they move through its bottleneck."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    t0 = epoch_ms() - 3 * DAY_MS  # older than stm_max_age_s and im_max_age_s
    return [
        MemoryRecord(
            entry_id=f"{t0 + i}-0",
            agent_id=f"agent-{i % agents}",
            agent_type="explorer",
            step=i // agents,
            ts=t0 + i,
            importance=0.5,
            model_version=model_version,
            vector=vectors[i],
            state_json='{"status": "active", "health": 73}',
        )
        for i in range(n)
    ]


def fill_stm(store: TierStore, records: list[MemoryRecord], batch: int) -> float:
    started = time.perf_counter()
    for i in range(0, len(records), batch):
        store.write("stm", records[i : i + batch])
    return len(records) / (time.perf_counter() - started)


def raw_move(
    client: redis.Redis, source: str, dest: str, sizes: tuple[int, int], batch: int, watch: bool
) -> int:
    """The same moves without the model, on the same wire path (resp.py): read, write
    truncated vectors (and reconstructions), delete; `sizes`: the destination's vector dim
    and reconstruction bytes.

    watch=False: one MULTI/EXEC per batch, nothing watched (the limit). watch=True: the pass's
    guard shape, WATCH_CHUNK keys watched and committed per connection.
    """
    chunk_size = WATCH_CHUNK if watch else batch
    moved = 0
    while True:
        keys = client.zrangebyscore(
            KEYS.time_index(source), "-inf", f"({epoch_ms()}", start=0, num=batch
        )
        if not keys:
            return moved
        chunks = [keys[i : i + chunk_size] for i in range(0, len(keys), chunk_size)]
        with ExitStack() as stack:
            connections = [
                stack.enter_context(watching(client, c) if watch else pool_connection(client))
                for c in chunks
            ]
            hashes = iter(round_trip(client, [("HGETALL", key) for key in keys]))
            for connection, chunk in zip(connections, chunks, strict=True):
                rows = [next(hashes) for _ in chunk]
                commands = raw_move_commands(source, dest, sizes, chunk, rows)
                first_error(execute_transaction(connection, commands) or [])
        moved += len(keys)


def raw_move_commands(
    source: str, dest: str, sizes: tuple[int, int], keys: list[Any], hashes: list[Any]
) -> list[Command]:
    """HSET destination + ZADD both its time indexes + SADD agents; DEL + ZREM the sources.
    The destination record gets the source's vector truncated to `sizes[0]` floats and a
    reconstruction of `sizes[1]` bytes (cut from the vector's), as consolidation writes."""
    dim, rebuilt = sizes
    src_prefix, dst_prefix = KEYS.record_prefix(source), KEYS.record_prefix(dest)
    commands: list[Command] = []
    scores: dict[str, int] = {}
    by_agent: defaultdict[str, dict[str, int]] = defaultdict(dict)
    deletes: defaultdict[str, list[str]] = defaultdict(list)
    for raw_key, flat in zip(keys, hashes, strict=True):
        key = raw_key.decode()
        dest_key = dst_prefix + key[len(src_prefix) :]
        # RESP3 replies a map, RESP2 a flat list
        pairs = flat.items() if isinstance(flat, dict) else zip(flat[::2], flat[1::2], strict=True)
        fields = dict(pairs)
        fields[b"vec"] = fields[b"vec"][: dim * 4]
        fields[RECONSTRUCTION_FIELD.encode()] = fields[b"vec"][:rebuilt]
        fields.pop(b"state", None)
        commands.append(("HSET", dest_key, *(part for pair in fields.items() for part in pair)))
        agent = fields[b"agent_id"].decode()
        scores[dest_key] = by_agent[agent][dest_key] = int(fields[b"ts"])
        deletes[agent].append(key)
    commands.append(zadd(KEYS.time_index(dest), scores))
    commands += [zadd(KEYS.agent_time_index(dest, a), s) for a, s in by_agent.items()]
    commands.append(("SADD", KEYS.agents(dest), *by_agent))
    source_keys = [k for ks in deletes.values() for k in ks]
    commands.append(("DEL", *source_keys))
    commands.append(("ZREM", KEYS.time_index(source), *source_keys))
    commands += [
        ("ZREM", KEYS.agent_time_index(source, a), *agent_keys) for a, agent_keys in deletes.items()
    ]
    return commands


def run_model(
    client: redis.Redis, store: TierStore, engine: EmbeddingEngine, settings: Settings
) -> dict[str, float]:
    rates = {}
    for source in ("stm", "im"):
        result = consolidate(client, store, engine, settings, source)
        rates[source] = result.moved / result.seconds
    return rates


def run_raw(
    client: redis.Redis, settings: Settings, input_dim: int, batch: int, watch: bool
) -> dict[str, float]:
    rates = {}
    for source, dest in (("stm", "im"), ("im", "ltm")):
        started = time.perf_counter()
        sizes = (settings.tier(dest).dim, input_dim)
        moved = raw_move(client, source, dest, sizes, batch, watch)
        rates[source] = moved / (time.perf_counter() - started)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=1000, help="consolidate_batch")
    parser.add_argument("--torch-threads", type=int, default=1, help="as the daemon [1]")
    parser.add_argument(
        "--guard-baseline", action="store_true", help="also run raw with the pass's WATCH guard"
    )
    parser.add_argument(
        "--rounds", type=int, default=2, help="each mode this often, order alternating; best"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.torch_threads)
    base = Settings.from_env()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        engine = EmbeddingEngine.from_checkpoint(base.model_file, expect_dims=base.dims)
    records = make_records(args.records, args.agents, base.stm_dim, engine.version)
    with redis_url(Settings.from_env()) as url:
        client = redis.Redis.from_url(url)
        settings = replace(base, redis_url=url, prefix=PREFIX, consolidate_batch=args.batch)
        store = TierStore(client, settings)
        modes = (*MODES, GUARD_MODE) if args.guard_baseline else MODES
        results: dict[str, dict[str, float]] = {m: {"stm": 0.0, "im": 0.0} for m in modes}
        try:
            for round_ in range(args.rounds):
                # Alternate the order so drift on a shared box hits every mode alike.
                for mode in modes if round_ % 2 == 0 else modes[::-1]:
                    clean(client, PREFIX)
                    store.ensure_indexes()
                    write_rate = fill_stm(store, records, args.batch)
                    if mode == "model":
                        rates = run_model(client, store, engine, settings)
                    else:
                        rates = run_raw(
                            client,
                            settings,
                            engine.schema.input_dim,
                            args.batch,
                            mode == GUARD_MODE,
                        )
                    for source, rate in rates.items():  # best of the rounds
                        results[mode][source] = max(results[mode][source], rate)
                    left = [store.count(tier) for tier in ("stm", "im", "ltm")]
                    assert left == [0, 0, args.records], f"{mode}: stm/im/ltm hold {left}"
        finally:
            clean(client, PREFIX)
            client.close()
    print(
        f"{args.records:,} memories, {args.agents:,} agents, batch {args.batch}, "
        f"torch threads {args.torch_threads}, best of {args.rounds} rounds, "
        f"{machine()}"
    )
    print(f"STM write (context): {write_rate:,.0f} records/s")
    guard = GUARD_MODE in results
    header = f"{'move':<9}{'model/s':>10}{'raw/s':>10}{'ratio':>8}"
    print(header + (f"{'raw+WATCH/s':>13}{'ratio':>8}" if guard else ""))
    for source, label in (("stm", "STM->IM"), ("im", "IM->LTM")):
        model, raw = results["model"][source], results["raw"][source]
        line = f"{label:<9}{model:>10,.0f}{raw:>10,.0f}{model / raw:>8.2f}"
        if guard:
            watched = results[GUARD_MODE][source]
            line += f"{watched:>13,.0f}{model / watched:>8.2f}"
        print(line)


if __name__ == "__main__":
    main()
