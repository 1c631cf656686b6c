"""What the service is doing on a Redis Cluster (settings.buckets > 1): status.py's readings
taken per bucket, summed per master and over the deployment, and the lease map.

Each bucket's tier sizes, stream and tier indexes are read through the cluster client, which
sends them to the master that owns the bucket's slot and follows MOVED and ASK (a reshard under
way). That is a few round trips per bucket: reading all of them takes time linear in the
buckets. The heartbeats are the deployment's keys, as on one Redis; the leases are read in one
round trip per node.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import redis

from .buckets import bucket_keys
from .constants import TIERS, Keys
from .leases import holders, lease_keys
from .status import (
    BucketStatus,
    Client,
    Snapshot,
    StreamStatus,
    agent_counts,
    heartbeats,
    model_versions,
    stream_status,
    tier_sizes,
)
from .store import IndexState, index_states


def cluster_snapshot(
    cluster: redis.RedisCluster, keys: Keys, buckets: int, count_lag_up_to: int = 0
) -> Snapshot:
    """Each bucket's tier sizes, stream, indexes and lease holder, their sums, and the live
    daemons, now.

    Args:
        count_lag_up_to: per bucket, as `status.stream_status` takes it.
    """
    held = holders(cluster, lease_keys(keys, buckets))
    readings = []
    for bucket in range(buckets):
        tagged = bucket_keys(keys, bucket, buckets)
        readings.append(
            BucketStatus(
                bucket=bucket,
                keys=tagged,
                node=cluster.get_node_from_key(tagged.stream).name,
                tiers=tier_sizes(cluster, tagged),
                stream=stream_status(cluster, tagged, count_lag_up_to),
                indexes=index_states(cluster, tagged),
                holder=held[bucket],
            )
        )
    return Snapshot(
        at=time.time(),
        tiers={tier: sum(b.tiers[tier] for b in readings) for tier in TIERS},
        stream=sum_streams([b.stream for b in readings]),
        heartbeats=heartbeats(cluster, keys),
        indexes={tier: sum_indexes([b.indexes[tier] for b in readings]) for tier in TIERS},
        buckets=readings,
    )


def sum_streams(streams: Sequence[StreamStatus]) -> StreamStatus:
    """The buckets' streams as one: counts summed; a count unknown in any bucket is unknown;
    `consumers` is the most of any bucket's group (a daemon consumes many buckets)."""
    return StreamStatus(
        length=sum(s.length for s in streams),
        group=all(s.group for s in streams),
        entries_read=_sum_known(s.entries_read for s in streams),
        lag=_sum_known(s.lag for s in streams),
        lag_capped=any(s.lag_capped for s in streams),
        pending=sum(s.pending for s in streams),
        consumers=max((s.consumers for s in streams), default=0),
        dead_letters=sum(s.dead_letters for s in streams),
    )


def sum_indexes(indexes: Sequence[IndexState | None]) -> IndexState | None:
    """One tier's bucket indexes as one: documents and failures summed, indexing if any is;
    None if any is missing."""
    if any(index is None for index in indexes):
        return None
    present = [index for index in indexes if index is not None]
    errors = [index.last_error for index in present if index.last_error]
    return IndexState(
        num_docs=sum(index.num_docs for index in present),
        failures=sum(index.failures for index in present),
        indexing=any(index.indexing for index in present),
        last_error=errors[-1] if errors else None,
    )


@dataclass(frozen=True)
class NodeStatus:
    """The buckets one master holds, summed."""

    node: str
    """host:port"""
    buckets: int
    tiers: dict[str, int]
    indexed: int
    """Records its bucket indexes hold, all tiers (FT.INFO num_docs)."""
    failures: int
    """Its bucket indexes' hash_indexing_failures, all tiers."""
    missing_indexes: int
    stream: StreamStatus


def per_node(status: Snapshot) -> list[NodeStatus]:
    """The snapshot's buckets summed per master, by host:port."""
    by_node: dict[str, list[BucketStatus]] = {}
    for bucket in status.buckets:
        by_node.setdefault(bucket.node, []).append(bucket)
    return [_node_status(node, by_node[node]) for node in sorted(by_node)]


def _node_status(node: str, buckets: Sequence[BucketStatus]) -> NodeStatus:
    indexes = [index for b in buckets for index in b.indexes.values()]
    present = [index for index in indexes if index is not None]
    return NodeStatus(
        node=node,
        buckets=len(buckets),
        tiers={tier: sum(b.tiers[tier] for b in buckets) for tier in TIERS},
        indexed=sum(index.num_docs for index in present),
        failures=sum(index.failures for index in present),
        missing_indexes=len(indexes) - len(present),
        stream=sum_streams([b.stream for b in buckets]),
    )


def lease_map(status: Snapshot) -> tuple[dict[str, list[int]], list[int]]:
    """Daemon -> the buckets it holds (by name, buckets ascending), and the buckets none holds."""
    held: dict[str, list[int]] = {}
    for bucket in status.buckets:
        if bucket.holder is not None:
            held.setdefault(bucket.holder, []).append(bucket.bucket)
    unheld = [b.bucket for b in status.buckets if b.holder is None]
    return dict(sorted(held.items())), unheld


def all_agent_counts(client: Client, keys: Keys, buckets: int) -> dict[str, dict[str, int]]:
    """Memories per tier of every agent that has any, over every bucket (an agent is in one)."""
    counts: dict[str, dict[str, int]] = {}
    for bucket in range(buckets):
        counts.update(agent_counts(client, bucket_keys(keys, bucket, buckets)))
    return counts


def all_model_versions(client: Client, keys: Keys, buckets: int) -> dict[str, dict[str, int]]:
    """Memories per model version in each tier, over every bucket, most first."""
    totals: dict[str, dict[str, int]] = {tier: {} for tier in TIERS}
    for bucket in range(buckets):
        for tier, versions in model_versions(client, bucket_keys(keys, bucket, buckets)).items():
            for version, count in versions.items():
                totals[tier][version] = totals[tier].get(version, 0) + count
    return {
        tier: dict(sorted(versions.items(), key=lambda item: (-item[1], item[0])))
        for tier, versions in totals.items()
    }


def _sum_known(values: Iterable[int | None]) -> int | None:
    """The sum of `values`; None if any is None."""
    total = 0
    for value in values:
        if value is None:
            return None
        total += value
    return total
