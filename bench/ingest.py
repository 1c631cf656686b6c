"""Ingest throughput: the daemon end to end against the raw pipelined HSET limit; recall latency.

One run, on one Redis (its own embedded one unless MT_REDIS_URL is set), three parts:

raw     The limit: N STM records with the fields the daemon writes (384-d float32 vector bytes,
        the raw state JSON, the TAG and NUMERIC fields), HSET into a fresh STM index
        (`TierStore.ensure_indexes`) with redis-py pipelines of --batch-size commands. The
        records (simulated states, random vectors) are built before the clock starts.
ingest  The daemons: K `memory-tiers serve --no-consolidate` processes (the production entry
        point rather than a `Daemon` thread in this process, which would share its GIL; one
        consumer each, one group; consuming before the clock starts) and one producer process
        that XADDs N simulated states with the fields `encode_entry` makes (built before the
        clock starts), redis-py pipelines of --batch-size. The clock starts when the producer
        is told to go and stops when the STM time index (`TierStore.count`, written in the
        records' MULTI/EXEC) holds all N; FT.INFO num_docs, the dead letters and the pending
        list are checked afterwards.
recall  Latency at scale: --memories simulated states of --recall-agents agents, encoded by the
        model, written with `TierStore.write` into STM, IM and LTM (then it waits until
        Redis rewrites no AOF); then --queries `TierStore.search('stm', vector, k=10,
        agent_id=...)` (the per-tier KNN), then for each of --recalls held-out states, in
        turns: `MemoryClient.recall(agent_id, state)` (featurize, encode, KNN and re-sort in
        all three tiers, merge), the same of STM alone, and a recall by three of its fields
        (health, energy, agent_type: every memory of the agent ranked on those), each timed
        alone: p50 and p99. A fixed pure-Python loop is timed in the same turns: the same work
        every time, so its p99 over its p50 is the machine's own tail (a VM whose vCPU is
        slowed now and then shows it there too).

For raw and ingest it prints states/s, their ratio (the goal: >= 0.7 for sim, >= 0.6 for
heavy), the CPU microseconds per state of Redis, the clients (this process for raw, the daemons
for ingest), the producer and "other processes" (busy CPU of the machine that none of them used:
other work on a shared box, which makes that round's numbers low), Redis's time per state in
each command (INFO commandstats), and the CPU budget: what the goal leaves a state of the
machine's cores, which Redis, the daemons and the producer share, against what one took.
--repeat R runs raw + ingest R times and prints the median ratio. Keys live under the prefixes
`mtbench-*`, deleted at the start and the end.

--mix heavy ingests states sampled over the whole schema instead of simulated ones (fields
left out, unknown numeric and string keys, grids of 5x5 to 18x18, categories outside the
declared values): with --agents 1000, the issue's second mix.

    python bench/ingest.py [--states 50000] [--batch-size 256] [--daemons 1] [--repeat 1]
                           [--mix sim|heavy] [--agents 50] [--parts raw,ingest,recall]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import multiprocessing as mp
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import redis
from machine import clean, cpu_budget, fill_tiers, machine

from memory_tiers import TIERS, Keys, Settings
from memory_tiers.attributes import attribute_values
from memory_tiers.daemon import frozen_heap
from memory_tiers.features import DEFAULT_SCHEMA, default_schema
from memory_tiers.ingest import UNKNOWN_AGENT_TYPE
from memory_tiers.protocol import encode_entry
from memory_tiers.sampling import sample_states
from memory_tiers.server import redis_url
from memory_tiers.sim import simulate_states
from memory_tiers.store import FEATURES_FIELD, STATE_FIELD, VECTOR_FIELD, TierStore

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("raw", "ingest", "recall")
GOALS = {"sim": 0.7, "heavy": 0.6}
"""The ingest/raw ratio aimed at, per state mix."""
RAW, INGEST, RECALL = "mtbench-raw", "mtbench-ingest", "mtbench-recall"
MODEL_VERSION = "bench"
STARTUP_TIMEOUT_S = 120.0
"""How long the daemons may take to load the model and join the group."""
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- machine and Redis -------------------------------------------------------------------------


def redis_cpu_s(client: redis.Redis) -> float:
    """CPU seconds the Redis server used so far: all its threads and its forks (AOF rewrite)."""
    info = client.info("cpu")
    parts = ("used_cpu_user", "used_cpu_sys", "used_cpu_user_children", "used_cpu_sys_children")
    return sum(float(info[part]) for part in parts)


def machine_cpu_s() -> float:
    """CPU seconds all cores of this machine spent busy so far (/proc/stat: user, nice, system,
    irq, softirq; not idle, iowait, or steal, the hypervisor's time for other machines)."""
    with open("/proc/stat") as stat:
        ticks = [int(t) for t in stat.readline().split()[1:]]
    return (sum(ticks[:7]) - ticks[3] - ticks[4]) / CLK_TCK


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process of this machine used so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def wait_for_background_saves(client: redis.Redis, timeout_s: float = 120.0) -> None:
    """Until Redis runs no AOF rewrite or RDB save: a timed part starts from a quiet Redis
    (one may still start during it, as in production, once the AOF has grown enough)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info = client.info("persistence")
        if not info.get("aof_rewrite_in_progress") and not info.get("rdb_bgsave_in_progress"):
            return
        time.sleep(0.1)


def num_docs(client: redis.Redis, index: str) -> int:
    """FT.INFO num_docs of an index (RESP2 list or RESP3 map)."""
    info = client.execute_command("FT.INFO", index)
    pairs = info.items() if isinstance(info, dict) else zip(info[::2], info[1::2], strict=False)
    for key, value in pairs:
        if (key.decode() if isinstance(key, bytes) else key) == "num_docs":
            return int(value)
    raise RuntimeError(f"FT.INFO {index} has no num_docs")


# -- measuring ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """CPU counters at one moment: Redis's, the machine's, this process's, the clients'."""

    at: float
    redis_cpu_s: float
    redis_usec: dict[str, int]
    """INFO commandstats: microseconds Redis spent in each command so far."""
    machine_cpu_s: float
    bench_cpu_s: float
    clients_cpu_s: float
    """CPU of the client processes measured (the daemons), or of this one (raw)."""

    @classmethod
    def take(cls, client: redis.Redis, pids: Sequence[int] = ()) -> Snapshot:
        own = time.process_time()
        stats = client.info("commandstats")
        usec = {name.removeprefix("cmdstat_"): int(v["usec"]) for name, v in stats.items()}
        return cls(
            at=time.perf_counter(),
            redis_cpu_s=redis_cpu_s(client),
            redis_usec=usec,
            machine_cpu_s=machine_cpu_s(),
            bench_cpu_s=own,
            clients_cpu_s=sum(process_cpu_s(pid) for pid in pids) if pids else own,
        )


@dataclass
class Rate:
    """What one throughput part measured, from two snapshots."""

    states: int
    seconds: float
    redis_cpu_s: float
    redis_usec: dict[str, int]
    client_cpu_s: float
    """CPU of this process (raw) or of the daemons (ingest)."""
    machine_cpu_s: float
    """Busy CPU of all cores, whoever used it."""
    bench_cpu_s: float = 0.0
    """CPU of this process beyond `client_cpu_s` (polling the count)."""
    producer_cpu_s: float = 0.0

    @classmethod
    def between(cls, states: int, before: Snapshot, after: Snapshot, own_is_client: bool) -> Rate:
        usec = {
            name: spent - before.redis_usec.get(name, 0)
            for name, spent in after.redis_usec.items()
            if spent > before.redis_usec.get(name, 0)
        }
        bench = after.bench_cpu_s - before.bench_cpu_s
        return cls(
            states=states,
            seconds=after.at - before.at,
            redis_cpu_s=after.redis_cpu_s - before.redis_cpu_s,
            redis_usec=usec,
            client_cpu_s=after.clients_cpu_s - before.clients_cpu_s,
            machine_cpu_s=after.machine_cpu_s - before.machine_cpu_s,
            bench_cpu_s=0.0 if own_is_client else bench,
        )

    @property
    def per_s(self) -> float:
        return self.states / self.seconds

    @property
    def others_cpu_s(self) -> float:
        """Busy CPU of the machine that none of the measured processes used (other work)."""
        ours = self.redis_cpu_s + self.client_cpu_s + self.producer_cpu_s + self.bench_cpu_s
        return max(0.0, self.machine_cpu_s - ours)

    def cpu_us(self, client: str) -> dict[str, float]:
        """CPU microseconds per state of each measured party: Redis, the `client` and the
        producer (when there is one)."""
        parties = {"redis": self.us(self.redis_cpu_s), client: self.us(self.client_cpu_s)}
        if self.producer_cpu_s:
            parties["producer"] = self.us(self.producer_cpu_s)
        return parties

    def cpu_line(self, client: str) -> str:
        """CPU microseconds per state of each party, and how busy the cores were."""
        cores = self.machine_cpu_s / self.seconds
        parts = [f"{party} {us:.0f}" for party, us in self.cpu_us(client).items()]
        parts.append(f"other processes {self.us(self.others_cpu_s):.0f}")
        return f"CPU us/state: {', '.join(parts)}; {cores:.2f} of {os.cpu_count()} cores busy"

    def commands_line(self) -> str:
        """Redis's time in commands per state, the largest first (the rest of its CPU is
        reading, parsing and answering them, AOF writes and the event loop). EXEC's own count
        includes the commands it ran, counted here under their names, so it is left out."""
        spent = {name: usec for name, usec in self.redis_usec.items() if name != "exec"}
        top = sorted(spent.items(), key=lambda item: -item[1])
        shown = [
            f"{name} {usec / self.states:.1f}" for name, usec in top if usec >= self.states / 10
        ]
        total = sum(spent.values()) / self.states
        return f"redis in commands, us/state: {total:.1f} ({', '.join(shown)})"

    def us(self, cpu_s: float) -> float:
        """CPU microseconds per state."""
        return cpu_s / self.states * 1e6


# -- part 1: the raw limit ---------------------------------------------------------------------


def raw_commands(
    store: TierStore, states: Sequence[Mapping[str, Any]], dim: int, seed: int = 0
) -> list[tuple[Any, ...]]:
    """One HSET command per state with the fields the daemon writes (its state, features and
    state attributes too), random vectors and features."""
    keys = store.keys
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((len(states), dim)).astype(np.float32)
    features = rng.random((len(states), default_schema().input_dim), dtype=np.float32)
    t0 = int(time.time() * 1000)
    commands = []
    for i, state in enumerate(states):
        fields = {
            "agent_id": state["agent_id"],
            "agent_type": str(state.get("agent_type", UNKNOWN_AGENT_TYPE)),
            "model_version": MODEL_VERSION,
            "step": i,
            "ts": t0 + i,
            "importance": 0.0,
            VECTOR_FIELD: vectors[i].tobytes(),
            STATE_FIELD: json.dumps(state, separators=(",", ":")),
            FEATURES_FIELD: features[i].tobytes(),
            **attribute_values(store.state_attributes, state),
        }
        flat = [item for pair in fields.items() for item in pair]
        commands.append(("HSET", keys.record("stm", f"{t0 + i}-0"), *flat))
    return commands


def run_raw(client: redis.Redis, settings: Settings, states: Sequence[Mapping[str, Any]]) -> Rate:
    """Pipelined HSETs of the daemon's records into a fresh STM index."""
    settings = replace(settings, prefix=RAW)
    clean(client, RAW)
    store = TierStore(client, settings, default_schema())
    store.ensure_indexes()
    commands = raw_commands(store, states, settings.stm_dim)
    batch = settings.batch_size
    wait_for_background_saves(client)
    with frozen_heap():
        before = Snapshot.take(client)
        for i in range(0, len(commands), batch):
            pipe = client.pipeline(transaction=False)
            for command in commands[i : i + batch]:
                pipe.execute_command(*command)
            pipe.execute()
        rate = Rate.between(len(commands), before, Snapshot.take(client), own_is_client=True)
    indexed = num_docs(client, store.keys.index("stm"))
    assert indexed == len(commands), f"raw: {indexed} of {len(commands)} indexed"
    clean(client, RAW)
    return rate


# -- part 2: the daemons end to end ------------------------------------------------------------


def mix_states(mix: str, n: int, agents: int) -> list[dict[str, Any]]:
    """N states of `agents` agents: simulated (sim), or sampled over the whole schema (heavy:
    fields left out, unknown keys, grids of 5x5 to 18x18, categories outside the schema's)."""
    if mix == "heavy":
        return sample_states(DEFAULT_SCHEMA, n, num_agents=agents, seed=1)
    return simulate_states(n, num_agents=agents, seed=1)


def produce(
    url: str, prefix: str, mix: str, n: int, agents: int, batch: int, ready: Any, go: Any,
    result: Any,
) -> None:  # fmt: skip
    """The producer process: make and encode N states of `mix`, wait for `go`, XADD them
    pipelined.

    Puts (seconds from go to the last XADD reply, CPU seconds of the XADDs) on `result`.
    """
    states = mix_states(mix, n, agents)
    entries = [encode_entry(s["agent_id"], s, step=i // agents) for i, s in enumerate(states)]
    stream = Keys(prefix).stream
    client = redis.Redis.from_url(url)
    client.ping()
    with frozen_heap():
        ready.set()
        go.wait()
        started, cpu = time.perf_counter(), time.process_time()
        for i in range(0, n, batch):
            pipe = client.pipeline(transaction=False)
            for fields in entries[i : i + batch]:
                pipe.xadd(stream, fields)  # type: ignore[arg-type]
            pipe.execute()
        result.put((time.perf_counter() - started, time.process_time() - cpu))
    client.close()


def start_daemons(
    url: str, settings: Settings, k: int, logs: Path
) -> list[subprocess.Popen[bytes]]:
    """K `memory-tiers serve` processes of one group, without their consolidation jobs: what
    is measured is ingest (and with the policy below nothing would leave STM anyway)."""
    env = {key: v for key, v in os.environ.items() if not key.startswith("MT_")}
    env.update(
        MT_REDIS_URL=url,
        MT_PREFIX=settings.prefix,
        MT_MODEL_PATH=str(settings.model_path),
        MT_BATCH_SIZE=str(settings.batch_size),
        MT_LOG_LEVEL="INFO",
        # Nothing may leave STM while it is counted.
        MT_STM_MAX_AGE_S=str(10**9),
        MT_STM_MAX_PER_AGENT=str(10**9),
        MT_CONSOLIDATE_INTERVAL_S=str(10**6),
    )
    daemons = []
    for number in range(k):
        log_file = open(logs / f"daemon-{number}.log", "wb")  # noqa: SIM115 (closed by the child)
        daemons.append(
            subprocess.Popen(
                [
                    *(sys.executable, "-m", "memory_tiers", "serve", "--no-consolidate"),
                    *("--consumer", f"bench-{number}"),
                ],
                env=env,
                cwd=ROOT,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        )
        log_file.close()
    return daemons


def wait_consuming(
    client: redis.Redis, keys: Keys, daemons: list[subprocess.Popen[bytes]], logs: Path
) -> None:
    """Until every daemon has joined the group (its first XREADGROUP) or one exited."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        for number, daemon in enumerate(daemons):
            if daemon.poll() is not None:
                tail = (logs / f"daemon-{number}.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"daemon {number} exited with {daemon.returncode}:\n{tail}")
        with suppress(redis.ResponseError):
            if len(client.xinfo_consumers(keys.stream, keys.group)) == len(daemons):
                return
        time.sleep(0.05)
    raise RuntimeError(f"the daemons did not join {keys.group} in {STARTUP_TIMEOUT_S:.0f} s")


def stop_daemons(daemons: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each daemon (it acks the batch in hand) and wait; kill one that hangs."""
    for daemon in daemons:
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
    for daemon in daemons:
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()


def run_ingest(
    client: redis.Redis, url: str, settings: Settings, mix: str, n: int, agents: int, k: int
) -> tuple[Rate, float, list[str]]:
    """K daemons consume what one producer process XADDs; returns the rate, the producer's
    XADD rate, and the daemons' last log lines (their totals: prepare and commit seconds)."""
    settings = replace(settings, prefix=INGEST)
    keys = Keys(INGEST)
    clean(client, INGEST)
    store = TierStore(client, settings)
    context = mp.get_context("spawn")
    ready, go, result = context.Event(), context.Event(), context.Queue()
    producer = context.Process(
        target=produce,
        args=(url, INGEST, mix, n, agents, settings.batch_size, ready, go, result),
    )
    with tempfile.TemporaryDirectory(prefix="mtbench-logs-") as folder:
        logs = Path(folder)
        daemons = start_daemons(url, settings, k, logs)
        try:
            producer.start()
            wait_consuming(client, keys, daemons, logs)
            if not ready.wait(STARTUP_TIMEOUT_S):
                raise RuntimeError("the producer did not get ready")
            wait_for_background_saves(client)
            pids = [d.pid for d in daemons]
            before = Snapshot.take(client, pids)
            go.set()
            deadline = before.at + max(300.0, n / 500)
            while store.count("stm") < n:
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"only {store.count('stm')} of {n} stored in time")
                time.sleep(0.005)
            rate = Rate.between(n, before, Snapshot.take(client, pids), own_is_client=False)
            produce_s, rate.producer_cpu_s = result.get(timeout=60)
            producer.join(timeout=60)
        finally:
            stop_daemons(daemons)
            if producer.is_alive():
                producer.terminate()
        summaries = [
            (logs / f"daemon-{i}.log").read_text(errors="replace").strip().splitlines()[-1]
            for i in range(k)
        ]
    indexed = num_docs(client, keys.index("stm"))
    dead = client.xlen(keys.dead_letters)
    pending = client.xpending(keys.stream, keys.group)["pending"]
    assert (indexed, dead, pending) == (n, 0, 0), (
        f"indexed {indexed}, dead {dead}, pending {pending}"
    )
    clean(client, INGEST)
    return rate, n / produce_s, summaries


# -- part 3: recall latency --------------------------------------------------------------------


def percentiles(samples: list[float]) -> str:
    ms = np.array(samples) * 1000
    p50, p99 = np.percentile(ms, [50, 99])
    return f"p50 {p50:.2f} ms, p99 {p99:.2f} ms (mean {ms.mean():.2f} ms, n={len(ms):,})"


PARTIAL_FIELDS = ("health", "energy", "agent_type")
"""The fields of a timed recall by what an agent knows."""

FIXED_LOOP = 40_000
"""Iterations of the fixed pure-Python loop timed in the recalls' turns (2-4 ms here)."""


def fixed_work() -> int:
    """The same CPU every call, no I/O: its p99 against its p50 is the box's own tail."""
    return sum(i * i for i in range(FIXED_LOOP))


def run_recall(
    client: redis.Redis, settings: Settings, memories: int, agents: int, queries: int, recalls: int
) -> list[str]:
    """Fill all three tiers with `memories` encoded states of `agents` agents; time KNN."""
    import torch

    from memory_tiers import EmbeddingEngine
    from memory_tiers.client import MemoryClient

    settings = replace(settings, prefix=RECALL)
    clean(client, RECALL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        engine = EmbeddingEngine.from_checkpoint(settings.model_path, expect_dims=settings.dims)
    torch.set_num_threads(1)
    store = TierStore(client, settings, engine.schema)
    store.ensure_indexes()
    states = simulate_states(memories + recalls, num_agents=agents, seed=2)
    stored, probes = states[:memories], states[memories:]
    started = time.perf_counter()
    fill_tiers(store, engine, stored, agents)
    fill_s = time.perf_counter() - started
    counts = [store.count(tier) for tier in TIERS]
    assert counts == [memories] * 3, f"tiers hold {counts}"
    quiet = time.perf_counter()
    wait_for_background_saves(client)  # the AOF rewrite the fill set off
    quiet_s = time.perf_counter() - quiet
    agent_ids = sorted({s["agent_id"] for s in stored})
    rng = random.Random(3)
    probe_vectors = engine.encode_states(probes)["stm"]
    knn = []
    hits = 0
    for q in range(queries):
        vector = probe_vectors[q % len(probes)]
        agent_id = rng.choice(agent_ids)
        begin = time.perf_counter()
        found = store.search("stm", vector, k=10, agent_id=agent_id)
        knn.append(time.perf_counter() - begin)
        hits += len(found)
    memory = MemoryClient(client, settings, engine)
    memory.recall(probes[0]["agent_id"], probes[0])  # checks the indexes once
    asks: dict[str, Callable[[dict[str, Any]], object]] = {
        "of a state, 3 tiers": lambda p: memory.recall(p["agent_id"], p, k=10),
        "of a state, STM only": lambda p: memory.recall(p["agent_id"], p, k=10, tiers=("stm",)),
        "by 3 fields, 3 tiers": lambda p: memory.recall(
            p["agent_id"], {f: p[f] for f in PARTIAL_FIELDS if f in p}, k=10
        ),
    }
    timed: dict[str, list[float]] = {label: [] for label in asks}
    loop: list[float] = []
    for probe in probes[:recalls]:
        for label, ask in asks.items():
            begin = time.perf_counter()
            ask(dict(probe))
            timed[label].append(time.perf_counter() - begin)
        begin = time.perf_counter()
        fixed_work()
        loop.append(time.perf_counter() - begin)
    clean(client, RECALL)
    return [
        f"recall at {memories:,} memories per tier over {len(agent_ids):,} agents "
        f"(filled STM+IM+LTM in {fill_s:.1f} s, then {quiet_s:.1f} s until Redis saved no more)",
        f"  KNN top-10 STM, one agent (TierStore.search):  {percentiles(knn)}; "
        f"{hits / queries:.1f} hits/query",
        *(f"  MemoryClient.recall {label + ':':<21} {percentiles(timed[label])}" for label in asks),
        f"  the box's own tail, a fixed Python loop in the same turns: {percentiles(loop)}",
    ]


# -- main --------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--states", type=int, default=50_000, help="N for raw and ingest")
    parser.add_argument("--batch-size", type=int, default=256, help="pipeline and daemon batch")
    parser.add_argument("--daemons", type=int, default=1, help="K daemon processes, one group")
    parser.add_argument("--agents", type=int, default=50, help="agents of the ingested states")
    parser.add_argument(
        "--mix", choices=("sim", "heavy"), default="sim", help="the states (see the doc above)"
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="raw + ingest rounds; the median ratio is the result"
    )
    parser.add_argument("--memories", type=int, default=100_000, help="per tier, recall part")
    parser.add_argument("--recall-agents", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=2000, help="timed per-tier KNN queries")
    parser.add_argument("--recalls", type=int, default=500, help="timed MemoryClient.recall")
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated subset")
    args = parser.parse_args()
    parts = [p for p in args.parts.split(",") if p]
    if unknown := set(parts) - set(PARTS):
        parser.error(f"unknown parts {sorted(unknown)}; choose from {PARTS}")
    logging.basicConfig(level=logging.WARNING)
    base = Settings.from_env()
    model_path = base.model_file
    if not model_path.is_absolute():
        model_path = ROOT / model_path
    base = replace(base, model_path=str(model_path), batch_size=args.batch_size)
    print(
        f"{machine()}, Python {platform.python_version()}, "
        f"redis-py {redis.__version__}, hiredis {'yes' if _has_hiredis() else 'no'}; "
        f"N={args.states:,} {args.mix} states of {args.agents:,} agents, batch "
        f"{args.batch_size}, daemons {args.daemons}",
        flush=True,
    )
    with redis_url(Settings.from_env()) as url:
        client = redis.Redis.from_url(url)
        base = dataclasses.replace(base, redis_url=url)
        try:
            ratios = [throughput(client, url, base, args, parts) for _ in range(args.repeat)]
            if len(ratios) > 1 and all(r is not None for r in ratios):
                shown = ", ".join(f"{r:.2f}" for r in ratios if r is not None)
                median = float(np.median([r for r in ratios if r is not None]))
                print(f"ratio ingest/raw, median of {len(ratios)}: {median:.2f}  ({shown})")
            if "recall" in parts:
                for line in run_recall(
                    client, base, args.memories, args.recall_agents, args.queries, args.recalls
                ):
                    print(line, flush=True)
        finally:
            for prefix in (RAW, INGEST, RECALL):
                clean(client, prefix)
            client.close()


def throughput(
    client: redis.Redis, url: str, base: Settings, args: argparse.Namespace, parts: list[str]
) -> float | None:
    """One round of the raw limit and the daemons end to end, printed; their ratio."""
    raw = ingest = None
    if "raw" in parts:
        states = mix_states(args.mix, args.states, args.agents)
        raw = run_raw(client, base, states)
        del states
        print(
            f"raw HSET limit: {raw.per_s:>9,.0f} states/s  ({raw.seconds:.2f} s; "
            f"{raw.cpu_line('client')})\n  {raw.commands_line()}",
            flush=True,
        )
    if "ingest" in parts:
        ingest, xadd_rate, summaries = run_ingest(
            client, url, base, args.mix, args.states, args.agents, args.daemons
        )
        print(
            f"daemon ingest:  {ingest.per_s:>9,.0f} states/s  ({ingest.seconds:.2f} s; "
            f"{ingest.cpu_line('daemons')}; producer XADD {xadd_rate:,.0f}/s)\n"
            f"  {ingest.commands_line()}",
            flush=True,
        )
        for line in summaries:  # over the daemon's life, idle time before and after included
            print(f"  daemon log: {line.split(' ', 5)[-1]}")
    if raw is None or ingest is None:
        return None
    ratio, goal = ingest.per_s / raw.per_s, GOALS[args.mix]
    print(f"ratio ingest/raw: {ratio:.2f}  (goal >= {goal})", flush=True)
    print(cpu_budget("state", goal, raw.per_s, ingest.cpu_us("daemons")), flush=True)
    return ratio


def _has_hiredis() -> bool:
    from redis.utils import HIREDIS_AVAILABLE

    return bool(HIREDIS_AVAILABLE)


if __name__ == "__main__":
    main()
