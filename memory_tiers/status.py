"""What the service is doing, as Redis knows it: daemon heartbeats, stream progress, tier sizes,
and the bounded time series of them that `memory-tiers stats --plot` draws.

Daemons write the heartbeats (`beat`) and the samples (`add_sample`); `memory-tiers check`,
`memory-tiers stats` and the Prometheus endpoint read them (`snapshot`, `series`). Everything
lives in Redis under the prefix, so any host with the URL sees every daemon.

- Heartbeat: `Keys.heartbeat(consumer)`, a JSON object written every heartbeat_ttl_s / 3 by the
  consumer loop itself, with a TTL of heartbeat_ttl_s: the key exists while the loop turns. A
  daemon that stops cleanly deletes it; a dead or frozen one's expires. Readers find the keys
  through `Keys.heartbeats`, a sorted set of consumers scored by their last beat, never by
  scanning the keyspace (millions of memory keys); writers prune consumers silent for
  HEARTBEAT_REGISTRY_KEEP_S.
- Lag: XINFO GROUPS' `lag`, the entries not yet delivered to the group. Redis reports it as
  unknown after entries were deleted from the undelivered part of the stream; then it is
  counted with XRANGE, up to a cap.
- On a Redis Cluster (settings.buckets > 1, buckets.py) each bucket has its own stream, group,
  tier indexes and time indexes: `BucketStatus` is one bucket's reading, and a `Snapshot` sums
  them (cluster_status.py reads them). Heartbeats and the series are the deployment's, as on
  one Redis.
- Series: `Keys.stats_series`, a list of JSON samples, oldest first, trimmed to
  settings.stats_samples. One sample per stats_interval_s whatever the number of daemons: a
  daemon adds one only when it wins that interval's gate key (SET NX PX).
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import redis

from .constants import TIERS, Keys
from .resp import text
from .store import IndexState, index_states, missing_index

SCAN_COUNT = 500
"""Members per SSCAN step, and ZCARDs per pipeline, when agents are counted."""

HEARTBEAT_REGISTRY_KEEP_S = 3600.0
"""How long a consumer that stopped beating stays in the heartbeat registry (whose members
readers look up), so clocks that disagree by minutes never hide a live daemon."""

Client = redis.Redis | redis.RedisCluster
"""One Redis, or a Redis Cluster client that routes each key to its node: the readers here
take either; on a cluster each call names keys of one slot only (one bucket's, or one key)."""

HEARTBEATS_PER_TTL = 3
"""A heartbeat is rewritten this many times per TTL, so one late write does not expire it."""


@dataclass(frozen=True)
class Heartbeat:
    """What a live daemon says about itself; its key expires ttl_s after `at`."""

    consumer: str
    host: str
    pid: int
    model_version: str
    started_at: float
    """Wall clock (epoch seconds) when the daemon started consuming."""
    at: float
    """Wall clock (epoch seconds) when this heartbeat was written."""
    stored: int
    """States the daemon stored since it started."""
    dead_letters: int
    ttl_s: float
    reconstruction_mse: dict[str, float] | None = None
    """Recent sampled reconstruction MSE per tier of the states it encodes (drift.py)."""
    validation_mse: dict[str, float] | None = None
    """Its model's MSE per tier on the training run's held-out states."""
    ignored_fields: dict[str, int] | None = None
    """Values of state fields its model's schema does not use, per field (ignored.py)."""
    policy: dict[str, float | int | None] | None = None
    """The consolidation policy it runs its jobs with (`Settings.policy()`); None when it runs
    none (serve --no-consolidate)."""

    @classmethod
    def here(cls, **fields: Any) -> Heartbeat:
        """A heartbeat of this process (its host and pid) written now, with the other `fields`."""
        return cls(host=socket.gethostname(), pid=os.getpid(), at=time.time(), **fields)

    def to_json(self) -> str:
        """The heartbeat key's value."""
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: bytes | str) -> Heartbeat | None:
        """The heartbeat in a key's value; None if it is not one (written by something else).

        Keys this version does not know are left out, so a newer daemon's heartbeat still reads
        (`check` must not call a live daemon dead during a rolling upgrade).
        """
        try:
            values = json.loads(raw)
            return cls(**{k: v for k, v in values.items() if k in _HEARTBEAT_FIELDS})
        except (TypeError, ValueError, AttributeError):
            return None


_HEARTBEAT_FIELDS = frozenset(f.name for f in fields(Heartbeat))


def beat(client: Client, keys: Keys, heartbeat: Heartbeat) -> None:
    """Write a daemon's heartbeat key, to expire after its ttl_s, and register its consumer."""
    at_ms = round(heartbeat.at * 1000)
    pipe = client.pipeline(transaction=False)
    pipe.set(
        keys.heartbeat(heartbeat.consumer),
        heartbeat.to_json(),
        px=max(1, round(heartbeat.ttl_s * 1000)),
    )
    pipe.zadd(keys.heartbeats, {heartbeat.consumer: at_ms})
    pipe.zremrangebyscore(
        keys.heartbeats, "-inf", f"({at_ms - round(HEARTBEAT_REGISTRY_KEEP_S * 1000)}"
    )
    pipe.execute()


def clear_heartbeat(client: Client, keys: Keys, consumer: str) -> None:
    """Delete a daemon's heartbeat and its registration: it stopped on purpose."""
    pipe = client.pipeline(transaction=False)
    pipe.delete(keys.heartbeat(consumer))
    pipe.zrem(keys.heartbeats, consumer)
    pipe.execute()


def heartbeats(client: Client, keys: Keys) -> list[Heartbeat]:
    """The heartbeats of the daemons alive now (their key exists), by consumer name."""
    consumers = sorted(text(c) for c in client.zrange(keys.heartbeats, 0, -1))
    pipe = client.pipeline(transaction=False)  # not MGET: on a cluster the keys span slots
    for consumer in consumers:
        pipe.get(keys.heartbeat(consumer))
    raws = pipe.execute() if consumers else []
    found = (Heartbeat.from_json(raw) for raw in raws if raw is not None)
    return [beat for beat in found if beat is not None]


@dataclass(frozen=True)
class StreamStatus:
    """The state stream, its consumer group and the dead letters."""

    length: int
    """Entries in the stream (acked ones included, until trimmed)."""
    group: bool
    """Whether the daemons' consumer group exists (a daemon has started)."""
    entries_read: int | None
    """Entries the group has been delivered, ever; None when Redis cannot tell."""
    lag: int | None
    """Entries not yet delivered to the group; None when unknown and not counted."""
    lag_capped: bool
    """The lag was counted with XRANGE and reached the cap: it is at least `lag`."""
    pending: int
    """Entries delivered to a daemon and not yet acked (stored or dead-lettered)."""
    consumers: int
    dead_letters: int
    """Entries in the dead-letter stream."""


@dataclass(frozen=True)
class BucketStatus:
    """One bucket of a deployment on a Redis Cluster, read on the master that owns its slot."""

    bucket: int
    keys: Keys
    node: str
    """The master that owns the bucket's slot, host:port."""
    tiers: dict[str, int]
    stream: StreamStatus
    indexes: dict[str, IndexState | None]
    holder: str | None
    """The daemon that holds the bucket's lease and consumes it (leases.py); None: none."""


@dataclass(frozen=True)
class Snapshot:
    """Tier sizes, the stream and the live daemons, read at `at` (epoch seconds)."""

    at: float
    tiers: dict[str, int]
    stream: StreamStatus
    heartbeats: list[Heartbeat] = field(default_factory=list)
    indexes: dict[str, IndexState | None] = field(default_factory=dict)
    """Each tier's index (FT.INFO); None: missing (on a cluster: summed over the buckets, None
    if any bucket's is missing)."""
    buckets: list[BucketStatus] = field(default_factory=list)
    """On a Redis Cluster, each bucket's own reading, which the fields above sum; empty on one
    Redis."""


def tier_sizes(client: Client, keys: Keys) -> dict[str, int]:
    """Memories per tier, from the tiers' time indexes (one ZCARD each, in one MULTI/EXEC)."""
    pipe = client.pipeline(transaction=True)  # a batch moving between tiers is counted once
    for tier in TIERS:
        pipe.zcard(keys.time_index(tier))
    return {tier: int(size) for tier, size in zip(TIERS, pipe.execute(), strict=True)}


def stream_status(client: Client, keys: Keys, count_lag_up_to: int = 0) -> StreamStatus:
    """The stream, its group and the dead letters, in one round trip (two if lag is counted).

    Args:
        count_lag_up_to: when Redis cannot tell the lag, count the undelivered entries with
            XRANGE up to this many (they are read whole: keep it modest); 0: leave it None.
    """
    pipe = client.pipeline(transaction=False)
    pipe.xlen(keys.stream)
    pipe.xlen(keys.dead_letters)
    pipe.xinfo_groups(keys.stream)
    length, dead, groups = pipe.execute(raise_on_error=False)
    for reply in (length, dead):
        if isinstance(reply, Exception):
            raise reply
    group = _group_info(groups, keys.group)
    if group is None:
        return StreamStatus(int(length), False, None, int(length), False, 0, 0, int(dead))
    lag = group.get("lag")
    capped = False
    if lag is None and count_lag_up_to > 0:
        after = "(" + text(group.get("last-delivered-id", "0-0"))
        lag = len(client.xrange(keys.stream, min=after, count=count_lag_up_to) or [])
        capped = lag >= count_lag_up_to
    entries_read = group.get("entries-read")
    if entries_read is None and text(group.get("last-delivered-id")) == "0-0":
        entries_read = 0  # Redis says nil until the first delivery
    return StreamStatus(
        length=int(length),
        group=True,
        entries_read=None if entries_read is None else int(entries_read),
        lag=None if lag is None else int(lag),
        lag_capped=capped,
        pending=int(group.get("pending", 0)),
        consumers=int(group.get("consumers", 0)),
        dead_letters=int(dead),
    )


def agent_counts(client: Client, keys: Keys) -> dict[str, dict[str, int]]:
    """Memories per tier of every agent that has any.

    Reads every tier's agent set and one ZCARD per agent and tier (pipelined): linear in the
    number of agents.
    """
    counts: dict[str, dict[str, int]] = {}
    for tier in TIERS:
        agents = [text(a) for a in client.sscan_iter(keys.agents(tier), count=SCAN_COUNT)]
        for start in range(0, len(agents), SCAN_COUNT):
            chunk = agents[start : start + SCAN_COUNT]
            pipe = client.pipeline(transaction=False)
            for agent in chunk:
                pipe.zcard(keys.agent_time_index(tier, agent))
            for agent, size in zip(chunk, pipe.execute(), strict=True):
                if size:
                    counts.setdefault(agent, dict.fromkeys(TIERS, 0))[tier] = int(size)
    return counts


def top_agents(counts: dict[str, dict[str, int]], top: int) -> list[tuple[str, dict[str, int]]]:
    """The `top` agents with the most memories in all tiers, most first (ties by id)."""
    ranked = sorted(counts.items(), key=lambda item: (-sum(item[1].values()), item[0]))
    return ranked[:top]


MAX_MODEL_VERSIONS = 100
"""Most model versions listed per tier (FT.AGGREGATE LIMIT)."""


def model_versions(client: Client, keys: Keys) -> dict[str, dict[str, int]]:
    """Memories per model version in each tier, most first (an FT.AGGREGATE per tier).

    After a retrain this shows what the old model still holds (`memory-tiers reencode`).
    A tier whose index does not exist yet has none.
    """
    versions: dict[str, dict[str, int]] = {}
    for tier in TIERS:
        try:
            reply = client.execute_command(  # type: ignore[no-untyped-call]
                "FT.AGGREGATE", keys.index(tier), "*",
                "GROUPBY", "1", "@model_version", "REDUCE", "COUNT", "0", "AS", "n",
                "SORTBY", "2", "@n", "DESC", "LIMIT", "0", str(MAX_MODEL_VERSIONS),
            )  # fmt: skip
        except redis.ResponseError as e:
            if missing_index(e):
                versions[tier] = {}
                continue
            raise
        versions[tier] = {
            text(row["model_version"]): int(text(row["n"])) for row in _aggregate_rows(reply)
        }
    return versions


def snapshot(client: redis.Redis, keys: Keys, count_lag_up_to: int = 0) -> Snapshot:
    """Tier sizes, stream status and live daemons, now."""
    return Snapshot(
        at=time.time(),
        tiers=tier_sizes(client, keys),
        stream=stream_status(client, keys, count_lag_up_to),
        heartbeats=heartbeats(client, keys),
        indexes=index_states(client, keys),
    )


def health(status: Snapshot, keys: Keys, max_lag: int) -> tuple[bool, str]:
    """Whether the service is healthy, and one line saying why not or what is healthy.

    Unhealthy: no live daemon, a tier index missing or with indexing failures, or more than
    max_lag entries undelivered. A lag Redis could not tell and nobody counted (`stream_status`
    without `count_lag_up_to`) is not held against it.
    """
    stream = status.stream
    if not status.heartbeats:
        return False, (
            f"unhealthy: no live daemon: no {keys.heartbeat('<consumer>')} key (a daemon "
            "rewrites its heartbeat while it consumes; the key expires heartbeat_ttl_s after it "
            "stopped or froze)"
        )
    readings = [(b.indexes, b.keys) for b in status.buckets] or [(status.indexes, keys)]
    problem = next(filter(None, (index_problem(*reading) for reading in readings)), None)
    if problem:
        return False, f"unhealthy: {problem}"
    if stream.lag is not None and stream.lag > max_lag:
        at_least = "at least " if stream.lag_capped else ""
        return False, (
            f"unhealthy: lagging: {at_least}{stream.lag} stream entries wait unread, more than "
            f"max_lag={max_lag} ({len(status.heartbeats)} live daemon(s) cannot keep up, or are "
            "stuck)"
        )
    daemons = ", ".join(beat.consumer for beat in status.heartbeats)
    leased = sum(1 for b in status.buckets if b.holder is not None)
    return True, (
        f"ok: {len(status.heartbeats)} live daemon(s) ({daemons}); lag {stream.lag} "
        f"(max {max_lag}), pending {stream.pending}"
        + (f"; {leased} of {len(status.buckets)} buckets leased" if status.buckets else "")
    )


def index_problem(indexes: dict[str, IndexState | None], keys: Keys) -> str | None:
    """What is wrong with the tier indexes, or None: a missing one, or indexing failures."""
    missing = [keys.index(tier) for tier, state in indexes.items() if state is None]
    if missing:
        return (
            f"index {', '.join(missing)} missing: searches fail (a live daemon recreates it "
            "within seconds, over the existing records)"
        )
    for tier, state in indexes.items():
        if state is not None and state.failures:
            return (
                f"index {keys.index(tier)} has {state.failures} hash_indexing_failures: records "
                f"no search finds (last: {state.last_error}). Delete or fix them, then "
                f"FT.DROPINDEX {keys.index(tier)} (records stay): the daemon recreates it"
            )
    return None


# -- the time series ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One point of the stats time series."""

    at: float
    """Wall clock, epoch seconds."""
    tiers: dict[str, int]
    entries_read: int | None
    lag: int | None
    pending: int
    dead_letters: int

    @classmethod
    def of(cls, at: float, tiers: dict[str, int], stream: StreamStatus) -> Sample:
        """The sample of a reading of the tiers and the stream."""
        return cls(at, tiers, stream.entries_read, stream.lag, stream.pending, stream.dead_letters)


def sample_due(client: Client, keys: Keys, interval_s: float) -> bool:
    """Whether this caller adds this interval's sample: the first to ask in each interval."""
    gate = keys.lock("stats-sample")
    return bool(client.set(gate, "1", nx=True, px=max(1, round(interval_s * 1000))))


def add_sample(client: Client, keys: Keys, sample: Sample, max_samples: int) -> None:
    """Append a sample to the series and trim it to the newest max_samples."""
    pipe = client.pipeline(transaction=True)
    pipe.rpush(keys.stats_series, json.dumps(asdict(sample), separators=(",", ":")))
    pipe.ltrim(keys.stats_series, -max_samples, -1)
    pipe.execute()


def series(client: Client, keys: Keys) -> list[Sample]:
    """The stats time series, oldest first (entries that do not parse are left out)."""
    samples = []
    for raw in client.lrange(keys.stats_series, 0, -1):
        try:
            samples.append(Sample(**json.loads(raw)))
        except (TypeError, ValueError):
            continue
    return samples


def ingest_rates(samples: Sequence[Sample]) -> list[tuple[float, float]]:
    """(epoch seconds, entries read per second) between consecutive samples that know both."""
    rates = []
    for before, after in itertools.pairwise(samples):
        if before.entries_read is None or after.entries_read is None or after.at <= before.at:
            continue
        read = after.entries_read - before.entries_read
        if read >= 0:  # a recreated group starts counting again
            rates.append((after.at, read / (after.at - before.at)))
    return rates


def _group_info(groups: Any, name: str) -> dict[str, Any] | None:
    """One group's XINFO GROUPS entry; None if the stream or the group is missing."""
    if isinstance(groups, Exception):
        if "no such key" in str(groups).lower():
            return None
        raise groups
    for group in groups:
        info = {text(k): v for k, v in group.items()}
        if text(info.get("name", "")) == name:
            return info
    return None


def _aggregate_rows(reply: Any) -> list[dict[str, Any]]:
    """The rows of an FT.AGGREGATE reply, RESP3 map or RESP2 [total, [k, v, ...], ...]."""
    if isinstance(reply, dict):
        results: list[Any] = next((v for k, v in reply.items() if text(k) == "results"), [])
        rows: list[dict[Any, Any]] = [
            next((v for k, v in row.items() if text(k) == "extra_attributes"), {})
            for row in results
        ]
        return [{text(k): v for k, v in row.items()} for row in rows]
    return [{text(k): v for k, v in zip(row[::2], row[1::2], strict=True)} for row in reply[1:]]
