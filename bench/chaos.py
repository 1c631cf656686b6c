"""Chaos: daemons killed, Redis killed, a daemon frozen past the claim time, malformed entries,
an index dropped; exact invariants after each run.

    python bench/chaos.py [--scenarios kill-ingest,kill-consolidation,kill-redis,frozen,fuzz,
                           drop-index] [--states 20000] [--fuzz 10000] [--seed 1]

Each scenario starts its own embedded Redis (AOF on; fsync on every write for kill-redis) and
`memory-tiers serve` children, the production entry point, with the default trained model:

kill-ingest         2 daemons (consolidation off) ingest --states while one of them, at random,
                    is killed (SIGKILL) every 0.5-2 s and replaced by a new one; the others
                    claim what the dead left pending (MT_CLAIM_IDLE_MS 1000).
kill-consolidation  the same with consolidation every 0.5 s moving STM to IM after 2 s and IM
                    to LTM after 5 s, while the snapshotter runs.
kill-redis          one daemon; a producer XADDs while Redis (appendfsync always) is killed
                    (SIGKILL) and restarted 3 times; an XADD Redis answered is never lost.
frozen              2 daemons, consolidation moving every STM memory at once; one daemon is
                    SIGSTOPped for 2 x MT_CLAIM_IDLE_MS while the other claims its entries,
                    stores them and consolidation moves them on, then SIGCONTed; 3 times.
fuzz                --fuzz malformed entries drawn by hypothesis (huge and negative numbers,
                    NaN, wrong types, deep nesting, invalid UTF-8, ragged and giant grids,
                    hostile agent ids, a 5 MB state) mixed with --fuzz/5 valid ones, one daemon.
drop-index          FT.DROPINDEX of the STM index under a running daemon: time until it is back
                    with every record indexed, and `memory-tiers check` meanwhile.

After each run, exactly: every valid entry in exactly one tier, once; per tier the time
index's members equal the record keys, the agents' time indexes partition them and each
member is its agent's; FT.INFO num_docs equals the keys, 0 hash_indexing_failures; nothing
pending; every malformed entry dead-lettered once with a reason, no valid one. During
kill-consolidation and frozen a snapshotter checks without pause, in a Lua script (atomic per
call of 500 ids), that no id is in two tiers. Prints one block of figures per scenario; exits 1
if an invariant broke.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from machine import machine

from memory_tiers import TIERS, Keys
from memory_tiers.protocol import encode_entry
from memory_tiers.server import EmbeddedRedis
from memory_tiers.sim import simulate_states
from memory_tiers.status import health, snapshot

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "state_autoencoder.pt"
KEYS = Keys()
SCENARIOS = ("kill-ingest", "kill-consolidation", "kill-redis", "frozen", "fuzz", "drop-index")
SETTLE_TIMEOUT_S = 300.0
"""How long the daemons may take to store everything after the chaos stopped."""
SNAPSHOT_IDS = 500
"""Ids one snapshot call checks, atomically (the script runs alone in Redis)."""

_IN_TWO_TIERS = """
local found = {}
for i = 4, #ARGV do
    local n = 0
    for t = 1, 3 do
        n = n + redis.call('EXISTS', ARGV[t] .. ARGV[i])
    end
    if n > 1 then
        found[#found + 1] = ARGV[i]
    end
end
return found
"""


# -- the service under test --------------------------------------------------------------------


@dataclass
class Service:
    """One embedded Redis and the daemons on it, each a `memory-tiers serve` child."""

    server: EmbeddedRedis
    env: dict[str, str]
    workdir: Path
    daemons: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    started: int = 0

    @property
    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.server.url, socket_timeout=30)

    def start_daemon(self) -> str:
        """Start one more daemon; its consumer name."""
        name = f"d{self.started}"
        self.started += 1
        with open(self.workdir / f"{name}.log", "wb") as log:
            self.daemons[name] = subprocess.Popen(
                [sys.executable, "-m", "memory_tiers", "serve", "--consumer", name],
                env=self.env, cwd=self.workdir, stdout=log, stderr=log,
            )  # fmt: skip
        return name

    def kill(self, name: str) -> None:
        """SIGKILL one daemon: nothing of it is cleaned up."""
        process = self.daemons.pop(name)
        process.kill()
        process.wait(30)

    def log(self, name: str) -> str:
        return (self.workdir / f"{name}.log").read_text(errors="replace")

    def stop(self) -> list[int]:
        """SIGTERM every daemon once it consumes (a daemon still loading its model would die of
        the signal) and wait; their exit codes."""
        client = self.client

        def beating() -> bool:
            return all(client.exists(KEYS.heartbeat(name)) for name in self.daemons)

        with suppress(TimeoutError):
            wait_for(beating, 120, "every daemon's heartbeat")
        client.close()
        for process in self.daemons.values():
            with suppress(ProcessLookupError):
                process.send_signal(signal.SIGCONT)
                process.terminate()
        codes = [process.wait(60) for process in self.daemons.values()]
        self.daemons.clear()
        return codes


@contextmanager
def service(env: Mapping[str, str], appendfsync: str = "everysec") -> Iterator[Service]:
    """A fresh embedded Redis and a work folder; every daemon killed at the end."""
    with tempfile.TemporaryDirectory(prefix="mt-chaos-") as folder:
        workdir = Path(folder)
        server = EmbeddedRedis(data_dir=workdir / "redis", appendfsync=appendfsync).start()
        base = {k: v for k, v in os.environ.items() if not k.startswith("MT_")}
        base.update(
            MT_REDIS_URL=server.url, MT_MODEL_PATH=str(MODEL), MT_BLOCK_MS="100",
            MT_LOG_LEVEL="INFO", MT_CLAIM_IDLE_MS="1000", MT_CONSOLIDATE="false",
        )  # fmt: skip
        running = Service(server, {**base, **env}, workdir)
        try:
            yield running
        finally:
            for process in running.daemons.values():
                with suppress(ProcessLookupError):
                    process.kill()
            running.server.stop()  # kill-redis replaces the first one


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Poll `condition` every 50 ms; the seconds it took. Raises after timeout_s."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout_s:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - start


# -- producing ---------------------------------------------------------------------------------


def valid_entries(n: int, seed: int) -> list[dict[str, str]]:
    """`n` simulated states of 50 agents as stream fields."""
    states = simulate_states(n, num_agents=50, seed=seed)
    return [encode_entry(s["agent_id"], s, step=i) for i, s in enumerate(states)]


def xadd_all(client: redis.Redis, entries: Sequence[Mapping[Any, Any]]) -> list[str]:
    """XADD `entries`, pipelined by 100; their ids."""
    ids: list[str] = []
    for start in range(0, len(entries), 100):
        pipe = client.pipeline(transaction=False)
        for fields in entries[start : start + 100]:
            pipe.xadd(KEYS.stream, dict(fields))
        ids += [text(entry_id) for entry_id in pipe.execute()]
    return ids


class Producer(threading.Thread):
    """XADDs entries at a steady rate, surviving Redis outages: an XADD whose reply came back
    is `accepted`; one whose reply was lost may or may not be in the stream."""

    def __init__(self, url: str, entries: Sequence[Mapping[str, str]], rate: float) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.entries = entries
        self.rate = rate
        self.accepted: list[str] = []
        self.failures = 0

    def run(self) -> None:
        client = redis.Redis.from_url(self.url, socket_timeout=5)
        start, sent = time.monotonic(), 0
        while sent < len(self.entries):
            chunk = self.entries[sent : sent + 50]
            try:
                pipe = client.pipeline(transaction=False)
                for fields in chunk:
                    pipe.xadd(KEYS.stream, dict(fields))
                self.accepted += [text(entry_id) for entry_id in pipe.execute()]
            except redis.RedisError:
                self.failures += 1
                time.sleep(0.2)
                continue  # a lost reply: those may be in the stream, or not: sent again
            sent += len(chunk)
            ahead = sent / self.rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
        client.close()


# -- checking ----------------------------------------------------------------------------------


class Snapshotter(threading.Thread):
    """Checks, without pause, that no id is in two tiers: SNAPSHOT_IDS ids per Lua call."""

    def __init__(self, url: str, ids: Callable[[], Sequence[str]]) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.ids = ids
        self.stop = threading.Event()
        self.snapshots = 0
        self.checked = 0
        self.in_two_tiers: set[str] = set()

    def run(self) -> None:
        client = redis.Redis.from_url(self.url, socket_timeout=30)
        script = client.register_script(_IN_TWO_TIERS)
        prefixes = [KEYS.record_prefix(tier) for tier in TIERS]
        position = 0
        while not self.stop.is_set():
            ids = self.ids()
            if not ids:
                time.sleep(0.05)
                continue
            position %= len(ids)
            chunk = list(ids[position : position + SNAPSHOT_IDS])
            position += SNAPSHOT_IDS
            try:
                found = script(keys=[], args=[*prefixes, *chunk])
            except redis.RedisError:
                time.sleep(0.2)  # Redis killed: the kill-redis scenario does not snapshot
                continue
            self.snapshots += 1
            self.checked += len(chunk)
            self.in_two_tiers.update(text(entry_id) for entry_id in found)
        client.close()


@dataclass
class Check:
    """The invariants after a run, and what broke."""

    tiers: dict[str, int]
    lost: int
    duplicated: int
    problems: list[str]

    def line(self) -> str:
        sizes = " ".join(f"{tier} {n}" for tier, n in self.tiers.items())
        verdict = "all invariants hold" if not self.problems else "; ".join(self.problems[:5])
        return f"tiers: {sizes}; lost {self.lost}, duplicated {self.duplicated}: {verdict}"


def check(client: redis.Redis, valid: set[str], malformed: set[str]) -> Check:
    """Every invariant of the module doc, exactly, on a quiet service."""
    problems: list[str] = []
    where: dict[str, list[str]] = {}
    sizes = {}
    for tier in TIERS:
        keys = record_keys(client, tier)
        sizes[tier] = len(keys)
        prefix = KEYS.record_prefix(tier)
        for key in keys:
            where.setdefault(key[len(prefix) :], []).append(tier)
        problems += time_index_problems(client, tier, keys)
        problems += index_problems(client, tier, len(keys))
    lost = len(valid - where.keys())
    duplicated = sum(1 for tiers in where.values() if len(tiers) > 1)
    strays = set(where) - valid
    if lost or duplicated or strays:
        problems.append(f"{lost} lost, {duplicated} in two tiers, {len(strays)} not valid")
    pending = int(client.xpending(KEYS.stream, KEYS.group)["pending"])
    if pending:
        problems.append(f"{pending} entries pending")
    problems += dead_letter_problems(client, valid, malformed)
    return Check(sizes, lost, duplicated, problems)


def record_keys(client: redis.Redis, tier: str) -> set[str]:
    return {text(k) for k in client.scan_iter(match=KEYS.record_prefix(tier) + "*", count=5000)}


def time_index_problems(client: redis.Redis, tier: str, keys: set[str]) -> list[str]:
    """The tier's time index holds exactly its keys; the agents' partition them, by agent."""
    members = {text(m) for m in client.zrange(KEYS.time_index(tier), 0, -1)}
    problems = [] if members == keys else [f"{tier} time index differs from its keys"]
    by_agent: dict[str, set[str]] = {}
    for agent in (text(a) for a in client.smembers(KEYS.agents(tier))):
        agent_index = KEYS.agent_time_index(tier, agent)
        by_agent[agent] = {text(m) for m in client.zrange(agent_index, 0, -1)}
    union = [key for agent_keys in by_agent.values() for key in agent_keys]
    if len(union) != len(set(union)) or set(union) != keys:
        problems.append(f"{tier} agent time indexes do not partition its keys")
    pipe = client.pipeline(transaction=False)
    pairs = [(agent, key) for agent, agent_keys in by_agent.items() for key in agent_keys]
    for _, key in pairs:
        pipe.hget(key, "agent_id")
    owners = pipe.execute()
    wrong = sum(1 for (agent, _), owner in zip(pairs, owners, strict=True) if text(owner) != agent)
    if wrong:
        problems.append(f"{tier}: {wrong} keys in another agent's time index")
    return problems


def index_problems(client: redis.Redis, tier: str, keys: int) -> list[str]:
    """FT.INFO num_docs == keys and no indexing failures, once indexing finished."""
    info: dict[str, Any] = {}

    def indexed() -> bool:
        info.update(ft_info(client, tier))
        return not int(info.get("indexing", 0))

    wait_for(indexed, 60, f"{tier} indexing")
    docs, failures = int(info["num_docs"]), int(info["hash_indexing_failures"])
    problems = [] if docs == keys else [f"{tier} num_docs {docs} != {keys} keys"]
    return problems + ([f"{tier}: {failures} indexing failures"] if failures else [])


def dead_letter_problems(client: redis.Redis, valid: set[str], malformed: set[str]) -> list[str]:
    letters = Counter[str]()
    unreasoned = 0
    for _, fields in client.xrange(KEYS.dead_letters):
        letters[text(fields[b"entry_id"])] += 1
        unreasoned += not fields.get(b"error")
    problems = []
    if set(letters) != malformed:
        missing, extra = len(malformed - set(letters)), len(set(letters) - malformed)
        problems.append(f"dead letters: {missing} malformed missing, {extra} unexpected")
    if any(n > 1 for n in letters.values()):
        problems.append(f"{sum(n > 1 for n in letters.values())} dead-lettered twice")
    if set(letters) & valid:
        problems.append(f"{len(set(letters) & valid)} valid entries dead-lettered")
    return problems + ([f"{unreasoned} dead letters without a reason"] if unreasoned else [])


def ft_info(client: redis.Redis, tier: str) -> dict[str, Any]:
    reply = client.execute_command("FT.INFO", KEYS.index(tier))
    pairs = reply.items() if isinstance(reply, dict) else zip(reply[::2], reply[1::2], strict=False)
    return {text(k): v for k, v in pairs}


def settled(client: redis.Redis, expected: int) -> Callable[[], bool]:
    """Whether every entry was delivered and acked and `expected` memories are stored."""

    def done() -> bool:
        groups = client.xinfo_groups(KEYS.stream)
        if not groups or groups[0]["lag"] or groups[0]["pending"]:
            return False
        pipe = client.pipeline(transaction=True)
        for tier in TIERS:
            pipe.zcard(KEYS.time_index(tier))
        return sum(pipe.execute()) >= expected

    return done


def text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


# -- scenarios ---------------------------------------------------------------------------------


@dataclass
class Result:
    """One scenario's figures and its check."""

    name: str
    figures: dict[str, Any]
    check: Check

    def print(self) -> None:
        figures = ", ".join(f"{k} {v}" for k, v in self.figures.items())
        print(f"{self.name}: {figures}\n  {self.check.line()}", flush=True)


def kill_daemons(args: argparse.Namespace, consolidate: bool) -> Result:
    """2 daemons, one killed and replaced every 0.5-2 s while --states are ingested."""
    env = {"MT_CONSOLIDATE": "true" if consolidate else "false"}
    if consolidate:
        env.update(
            MT_CONSOLIDATE_INTERVAL_S="0.5", MT_STM_MAX_AGE_S="2", MT_IM_MAX_AGE_S="5",
            MT_STM_MAX_PER_AGENT="off", MT_IM_MAX_PER_AGENT="off", MT_CONSOLIDATE_BATCH="500",
        )  # fmt: skip
    rng = random.Random(args.seed)
    entries = valid_entries(args.states, args.seed)
    with service(env) as svc:
        client = svc.client
        for _ in range(2):
            svc.start_daemon()
        ids: list[str] = []
        snapshotter = Snapshotter(svc.server.url, lambda: ids)
        snapshotter.start()
        start, kills = time.monotonic(), 0
        for offset in range(0, len(entries), 2000):  # ~2,000 states between two kills
            ids += xadd_all(client, entries[offset : offset + 2000])
            time.sleep(rng.uniform(0.5, 2.0))
            svc.kill(rng.choice(list(svc.daemons)))
            svc.start_daemon()
            kills += 1
        while kills < args.kills:
            time.sleep(rng.uniform(0.5, 2.0))
            svc.kill(rng.choice(list(svc.daemons)))
            svc.start_daemon()
            kills += 1
        wait_for(settled(client, len(ids)), SETTLE_TIMEOUT_S, "every entry stored")
        seconds = time.monotonic() - start
        if consolidate:
            time.sleep(3)  # consolidation goes on a while after the last kill
        codes = svc.stop()
        snapshotter.stop.set()
        snapshotter.join()
        result = check(client, set(ids), set())
        figures: dict[str, Any] = {
            "states": len(ids), "kill -9s": kills, "daemons started": svc.started,
            "seconds": round(seconds, 1), "clean exits": f"{codes.count(0)}/{len(codes)}",
        }  # fmt: skip
        if consolidate:
            figures["snapshots"] = snapshotter.snapshots
            figures["ids checked"] = snapshotter.checked
            figures["ids in two tiers"] = len(snapshotter.in_two_tiers)
            if snapshotter.in_two_tiers:
                result.problems.append(f"{len(snapshotter.in_two_tiers)} ids seen in two tiers")
        return Result("kill-consolidation" if consolidate else "kill-ingest", figures, result)


def kill_redis(args: argparse.Namespace) -> Result:
    """A producer and one daemon while Redis (appendfsync always) is killed and restarted."""
    entries = valid_entries(args.states, args.seed + 1)
    with service({}, appendfsync="always") as svc:
        client = svc.client  # reconnects to each restarted Redis (same port)
        svc.start_daemon()
        wait_for(lambda: bool(client.exists(KEYS.stream)), 120, "the daemon's group")
        rate = 1500
        producer = Producer(svc.server.url, entries, rate)
        producer.start()
        kills = 0
        for _ in range(args.redis_kills):  # spread over the production
            time.sleep(len(entries) / rate / (args.redis_kills + 1))
            port, folder = svc.server.port, svc.server._data_dir
            assert svc.server.process is not None
            svc.server.process.kill()
            svc.server.process.wait()
            time.sleep(0.5)
            svc.server = EmbeddedRedis(data_dir=folder, port=port, appendfsync="always").start()
            kills += 1
        producer.join()
        in_stream = {text(entry_id) for entry_id, _ in client.xrange(KEYS.stream)}
        wait_for(settled(client, len(in_stream)), SETTLE_TIMEOUT_S, "every entry stored")
        codes = svc.stop()
        result = check(client, in_stream, set())
        accepted_lost = len(set(producer.accepted) - in_stream)
        if accepted_lost:
            result.problems.append(f"{accepted_lost} accepted XADDs lost")
        figures = {
            "redis kill -9s": kills, "XADDs accepted": len(producer.accepted),
            "accepted lost": accepted_lost, "in stream": len(in_stream),
            "producer retries": producer.failures, "clean exits": f"{codes.count(0)}/{len(codes)}",
        }  # fmt: skip
        return Result("kill-redis", figures, result)


def frozen(args: argparse.Namespace) -> Result:
    """A daemon SIGSTOPped for 2 x claim_idle_ms while the other takes its entries over."""
    claim_idle_ms = 1500
    env = {
        "MT_CONSOLIDATE": "true", "MT_CONSOLIDATE_INTERVAL_S": "0.3", "MT_STM_MAX_AGE_S": "0",
        "MT_IM_MAX_AGE_S": "off", "MT_STM_MAX_PER_AGENT": "off", "MT_IM_MAX_PER_AGENT": "off",
        "MT_CLAIM_IDLE_MS": str(claim_idle_ms), "MT_CONSUMER_MAX_IDLE_S": "3600",
    }  # fmt: skip
    entries = valid_entries(args.states, args.seed + 2)
    with service(env) as svc:
        client = svc.client
        sleeper, _ = svc.start_daemon(), svc.start_daemon()
        wait_for(lambda: bool(client.exists(KEYS.stream)), 120, "the daemons' group")
        producer = Producer(svc.server.url, entries, rate=1500)
        producer.start()
        snapshotter = Snapshotter(svc.server.url, lambda: producer.accepted)
        snapshotter.start()
        held = []
        for _ in range(args.freezes):
            time.sleep(2)
            pid = svc.daemons[sleeper].pid
            os.kill(pid, signal.SIGSTOP)
            held.append(pending_of(client, sleeper))
            time.sleep(2 * claim_idle_ms / 1000 + 1)
            os.kill(pid, signal.SIGCONT)
        producer.join()
        wait_for(settled(client, len(producer.accepted)), SETTLE_TIMEOUT_S, "every entry stored")
        time.sleep(1)
        codes = svc.stop()
        snapshotter.stop.set()
        snapshotter.join()
        result = check(client, set(producer.accepted), set())
        refused = sum(
            int(line.split(" of ")[0].rsplit(" ", 1)[-1])
            for line in svc.log(sleeper).splitlines()
            if "were no longer this consumer's" in line
        )
        if snapshotter.in_two_tiers:
            result.problems.append(f"{len(snapshotter.in_two_tiers)} ids seen in two tiers")
        figures = {
            "states": len(producer.accepted), "freezes": args.freezes,
            "pending when frozen": held, "stale entries refused at commit": refused,
            "snapshots": snapshotter.snapshots, "ids checked": snapshotter.checked,
            "ids in two tiers": len(snapshotter.in_two_tiers),
            "clean exits": f"{codes.count(0)}/{len(codes)}",
        }  # fmt: skip
        return Result("frozen", figures, result)


def pending_of(client: redis.Redis, consumer: str) -> int:
    for row in client.xinfo_consumers(KEYS.stream, KEYS.group):
        if text(row["name"]) == consumer:
            return int(row["pending"])
    return 0


def fuzz(args: argparse.Namespace) -> Result:
    """Malformed entries drawn by hypothesis, mixed with valid ones; one daemon."""
    from fuzzing import malformed_entries  # hypothesis: only this scenario needs it

    malformed = malformed_entries(args.fuzz, args.seed)
    good = valid_entries(max(1, args.fuzz // 5), args.seed + 3)
    rng = random.Random(args.seed)
    mixed = [(True, e) for e in good] + [(False, e) for e in malformed]
    rng.shuffle(mixed)
    with service({}) as svc:
        client = svc.client
        name = svc.start_daemon()
        pid = svc.daemons[name].pid
        start = time.monotonic()
        ids = xadd_all(client, [entry for _, entry in mixed])
        valid = {i for i, (ok, _) in zip(ids, mixed, strict=True) if ok}
        bad = set(ids) - valid
        wait_for(settled(client, len(valid)), SETTLE_TIMEOUT_S, "every entry handled")
        seconds = time.monotonic() - start
        alive = svc.daemons[name].poll() is None and svc.daemons[name].pid == pid
        codes = svc.stop()
        result = check(client, valid, bad)
        letters = client.xlen(KEYS.dead_letters)
        reasons = Counter(
            text(fields[b"error"]).split(":")[0].split("=")[0][:28]
            for _, fields in client.xrange(KEYS.dead_letters)
        )
        if not alive:
            result.problems.append("the daemon died")
        figures = {
            "malformed": len(bad), "dead-lettered": letters,
            "dead-lettered %": round(100 * letters / len(bad), 2),
            "valid": len(valid), "seconds": round(seconds, 1),
            "same pid": alive, "clean exit": codes == [0],
            "top reasons": dict(reasons.most_common(6)),
        }  # fmt: skip
        return Result("fuzz", figures, result)


def drop_index(args: argparse.Namespace) -> Result:
    """FT.DROPINDEX mt:idx:stm under a running daemon: back within seconds, check meanwhile."""
    entries = valid_entries(args.states, args.seed + 4)
    with service({}) as svc:
        client = svc.client
        svc.start_daemon()
        ids = xadd_all(client, entries)
        wait_for(settled(client, len(ids)), SETTLE_TIMEOUT_S, "every entry stored")
        checks: list[tuple[float, bool, str]] = []  # what `memory-tiers check` would say
        recreated_at: float | None = None
        client.execute_command("FT.DROPINDEX", KEYS.index("stm"))  # the records stay
        dropped = time.monotonic()
        while time.monotonic() - dropped < 60:
            healthy, line = health(snapshot(client, KEYS), KEYS, max_lag=10_000)
            now = time.monotonic() - dropped
            checks.append((now, healthy, line))
            # Healthy means the index exists: it may have come back since the last look.
            if recreated_at is None and (healthy or index_exists(client)):
                recreated_at = now
            if healthy:
                break
            time.sleep(0.05)
        wait_for(lambda: int(ft_info(client, "stm")["num_docs"]) == len(ids), 60, "all indexed")
        indexed_at = time.monotonic() - dropped
        codes = svc.stop()
        result = check(client, set(ids), set())
        unhealthy = [line for _, healthy, line in checks if not healthy]
        if not unhealthy or not checks[-1][1]:
            result.problems.append("check was never unhealthy, or never healthy again")
        figures = {
            "records": len(ids),
            "index back after s": None if recreated_at is None else round(recreated_at, 2),
            "all records indexed after s": round(indexed_at, 2),
            "checks unhealthy": len(unhealthy),
            "check healthy again after s": round(checks[-1][0], 2),
            "first unhealthy check": unhealthy[0][:60] if unhealthy else None,
            "clean exit": codes == [0],
        }  # fmt: skip
        return Result("drop-index", figures, result)


def index_exists(client: redis.Redis) -> bool:
    try:
        ft_info(client, "stm")
    except redis.ResponseError:
        return False
    return True


RUNNERS: dict[str, Callable[[argparse.Namespace], Result]] = {
    "kill-ingest": lambda a: kill_daemons(a, consolidate=False),
    "kill-consolidation": lambda a: kill_daemons(a, consolidate=True),
    "kill-redis": kill_redis,
    "frozen": frozen,
    "fuzz": fuzz,
    "drop-index": drop_index,
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--states", type=int, default=20_000, help="valid states per scenario")
    parser.add_argument("--fuzz", type=int, default=10_000, help="malformed entries")
    parser.add_argument("--kills", type=int, default=10, help="daemon kill -9s, at least")
    parser.add_argument("--redis-kills", type=int, default=3)
    parser.add_argument("--freezes", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> list[Result]:
    """Run the chosen scenarios one after the other, printing each one's figures."""
    results = []
    for name in args.scenarios.split(","):
        result = RUNNERS[name](args)
        result.print()
        results.append(result)
    return results


def main() -> int:
    args = parse_args()
    print(f"{machine()}, Python {sys.version.split()[0]}; {json.dumps(vars(args))}", flush=True)
    results = run(args)
    broken = [r.name for r in results if r.check.problems]
    print("broken: " + ", ".join(broken) if broken else "every invariant held in every scenario")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
