"""Every Redis key, stream, index and lock name, all under one prefix ('mt' by default).

No other module spells a key: they ask a `Keys` built from the configured prefix.

A bucket (buckets.py, for a Redis Cluster) is a `Keys` with a hash tag: its stream, records,
indexes, time indexes and agent sets carry the tag, so all of them share one hash slot, as
RediSearch without a coordinator and a MULTI/EXEC on a cluster need. Keys that are the whole
deployment's (locks, heartbeats, the stats series) never carry it. Untagged, the names are
those of one Redis.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

DEFAULT_PREFIX = "mt"
"""Namespace of every key this service writes; an ACL user limited to `mt:*` suffices."""

TIERS = ("stm", "im", "ltm")
"""The memory tiers, from the freshest and largest vectors to the oldest and smallest."""

MAX_BUCKETS = 16384
"""The hash slots of a Redis Cluster: at most one bucket per slot (buckets.py)."""


@dataclass(frozen=True)
class Keys:
    """Key names for one deployment, derived from its prefix; of one bucket with a `tag`."""

    prefix: str = DEFAULT_PREFIX
    tag: str = ""
    """The bucket's hash tag (`{7f}`), at the end of the names of everything the bucket
    holds; empty: one Redis, no buckets."""

    def bucket(self, tag: str) -> Keys:
        """The names of the bucket whose hash tag is `tag` (`{7f}`)."""
        return replace(self, tag=tag)

    def _tagged(self, name: str) -> str:
        return f"{name}:{self.tag}" if self.tag else name

    @property
    def stream(self) -> str:
        """Stream agents XADD their states to."""
        return self._tagged(f"{self.prefix}:states")

    @property
    def dead_letters(self) -> str:
        """Stream of entries that failed validation, with the reason."""
        return self._tagged(f"{self.prefix}:states:dead")

    @property
    def group(self) -> str:
        """Consumer group the daemons share."""
        return f"{self.prefix}:ingest"

    @property
    def claims(self) -> str:
        """Counter every XAUTOCLAIM of the group increments in the same MULTI/EXEC: a commit
        WATCHes it, so it never writes entries that changed hands since it checked them."""
        return self._tagged(f"{self.prefix}:ingest:claims")

    def index(self, tier: str) -> str:
        """RediSearch index name of one tier."""
        return self._tagged(f"{self.prefix}:idx:{tier}")

    def record_prefix(self, tier: str) -> str:
        """Key prefix of one tier's record hashes (the index covers this prefix)."""
        return self._tagged(f"{self.prefix}:{tier}") + ":"

    def record(self, tier: str, entry_id: str) -> str:
        """Record key of one memory in one tier, derived from its stream entry id."""
        return f"{self.record_prefix(tier)}{entry_id}"

    def time_index(self, tier: str) -> str:
        """Sorted set of one tier's record keys scored by ts (ms): oldest first, no scan."""
        return self._tagged(f"{self.prefix}:ts:{tier}")

    def agent_time_index(self, tier: str, agent_id: str) -> str:
        """Sorted set of one agent's record keys in one tier, scored by ts (ms)."""
        return f"{self.time_index(tier)}:agent:{agent_id}"

    def agents(self, tier: str) -> str:
        """Set of the agent ids with records in one tier, so consolidation never scans keys."""
        return self._tagged(f"{self.prefix}:agents:{tier}")

    @property
    def lease(self) -> str:
        """Key of a bucket's lease: the name of the daemon that consumes the bucket, expiring
        unless renewed (leases.py)."""
        return self._tagged(f"{self.prefix}:lease")

    def lock(self, job: str) -> str:
        """Lock held by whichever daemon runs a scheduled job."""
        return f"{self.prefix}:lock:{job}"

    def heartbeat(self, consumer: str) -> str:
        """Key a live daemon rewrites with a TTL: its heartbeat, a JSON object."""
        return f"{self.prefix}:heartbeat:{consumer}"

    @property
    def heartbeats(self) -> str:
        """Sorted set of the consumers that wrote a heartbeat, scored by their last one (ms):
        readers find the heartbeat keys here instead of scanning the keyspace."""
        return f"{self.prefix}:heartbeats"

    @property
    def stats_series(self) -> str:
        """List of JSON samples (tier sizes, stream counters), oldest first, capped."""
        return f"{self.prefix}:stats:series"
