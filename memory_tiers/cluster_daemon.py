"""The ingest daemon on a Redis Cluster (settings.buckets > 1): it leases a fair share of the
buckets (leases.py) and consumes each leased bucket's stream on the node that owns it.

One loop: renew the leases (a lost one's bucket is dropped at once), take free ones up to the
fair share, ceil(B / live daemons), and give back the excess; then read each held bucket's
own pending and new entries without blocking and handle them (`Ingestor.process`: one
MULTI/EXEC in the bucket's slot), claiming the entries other consumers left idle past
claim_idle_ms now and then; the new entries of all the buckets on one node are read in one
pipelined round trip. With nothing to read it waits IDLE_POLL_S. With the leases it
rewrites its heartbeat (status.py) as the daemon on one Redis does, so `memory-tiers check` sees
it alive; the heartbeat registry is also how daemons count each other. Every
consolidate_interval_s it applies each tier's policy to each held bucket (tiers.py), on the
bucket's node: the lease makes it the only daemon moving that bucket, so no job lock. A
bucket whose step fails is opened again where the cluster's slot map says it is now: on its
new master after a reshard (MOVED) or a failover (its master unreachable), which has its
stream, group and pending entries; while a slot migrates, its steps fail (ASK, TRYAGAIN) and
nothing of them is applied, so its entries wait, pending or unread, until the move ends. A
failed lease round is tried again at the next, within the lease time.

Between batches each held bucket has the upkeep of a stream (upkeep.py): a dropped tier index
recreated, idle consumers removed, the acked old part of the stream trimmed.

Work in progress (#16): a batch per bucket (small ones under light load cost more per state
than one batch over all buckets), no commit lane, no metrics, no stats samples, no drift
sampling yet.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Sequence

import redis

from .buckets import bucket_keys
from .constants import TIERS
from .engine import EmbeddingEngine
from .errors import MemoryTiersError, StoreError
from .ignored import IgnoredFields
from .ingest import Ingestor, IngestStats
from .leases import BucketLeases, fair_share
from .settings import Settings
from .status import HEARTBEATS_PER_TTL, Heartbeat, beat, clear_heartbeat
from .stream import ReadPosition, read_ready_together
from .tiers import consolidate
from .upkeep import Upkeep, stream_chores

log = logging.getLogger(__name__)

IDLE_POLL_S = 0.05
"""How long the loop waits when no held bucket had anything to handle (block_ms if shorter).
A cluster has no blocking read across slots, so this bounds how long a new entry waits: one
round trip per node every 50 ms while idle."""


class _Bucket:
    """One leased bucket: its consumer on the node that owns its slot, and its read position;
    what it handles counts into the daemon's `stats` and `ignored`."""

    def __init__(self, daemon: ClusterDaemon, bucket: int) -> None:
        settings = daemon.settings
        keys = bucket_keys(settings.keys, bucket, settings.buckets)
        node = daemon.cluster.get_node_from_key(keys.stream).redis_connection
        self.ingestor = Ingestor(node, daemon.engine, settings, daemon.consumer, keys=keys)
        self.ingestor.stats, self.ingestor.ignored = daemon.stats, daemon.ignored
        self.ingestor.store.ensure_indexes()
        self.ingestor.ensure_group()
        self.position = ReadPosition(self.ingestor.reader)
        self.upkeep = Upkeep(stream_chores(node, settings, self.ingestor))
        self._claim_every_s = settings.claim_idle_ms / 2000
        self._next_claim = 0.0

    def step(self) -> int:
        """The bucket's upkeep and claims if due, then one batch; the entries handled."""
        self.upkeep.tick()
        handled = 0
        if time.monotonic() >= self._next_claim:
            cursor = "0-0"
            while True:
                cursor, messages = self.ingestor.claim_idle(cursor)
                if messages:
                    self.ingestor.process(messages)
                    handled += len(messages)
                if cursor == "0-0":
                    break
            self._next_claim = time.monotonic() + self._claim_every_s
        messages = self.position.next_batch(wait=False)
        if messages:
            self.ingestor.process(messages)
        return handled + len(messages)


class ClusterDaemon:
    """Consumes the leased buckets of a deployment on a Redis Cluster until stopped.

    Args:
        cluster: a redis.RedisCluster client of the deployment's cluster.
        engine: encodes the states.
        settings: buckets > 1; block_ms, claim_idle_ms, heartbeat_ttl_s (the lease time, and
            the heartbeat's).
        consumer: this daemon's name: its consumer name in every bucket's group, and its
            leases' owner.
        consolidate: apply the tier policies to the held buckets every
            consolidate_interval_s.
        stop: set to end `run()` [default: its own, set by `request_stop`].
    """

    def __init__(
        self,
        cluster: redis.RedisCluster,
        engine: EmbeddingEngine,
        settings: Settings,
        consumer: str,
        consolidate: bool = True,
        stop: threading.Event | None = None,
    ) -> None:
        self.consolidate = consolidate
        self.cluster = cluster
        self.engine = engine
        self.settings = settings
        self.consumer = consumer
        ttl_ms = round(settings.heartbeat_ttl_s * 1000)
        self.leases = BucketLeases(cluster, settings.keys, consumer, settings.buckets, ttl_ms)
        self.buckets: dict[int, _Bucket] = {}
        self.stats = IngestStats()
        """Entries handled since it started, in every bucket it held."""
        self.ignored = IgnoredFields()
        """State fields its model's schema does not use, counted since it started."""
        self._stop = stop or threading.Event()
        self._renew_every_s = settings.heartbeat_ttl_s / HEARTBEATS_PER_TTL
        self._started_at = time.time()
        self._policy = settings.policy() if consolidate else None

    def request_stop(self) -> None:
        """Finish the batch in hand and return from `run()`; safe from any thread."""
        self._stop.set()

    def run(self) -> None:
        """Consume until stopped; then give back every lease."""
        next_balance = 0.0
        next_consolidation = time.monotonic() + self.settings.consolidate_interval_s
        try:
            while not self._stop.is_set():
                if time.monotonic() >= next_balance:
                    self._balance()
                    next_balance = time.monotonic() + self._renew_every_s
                if self.consolidate and time.monotonic() >= next_consolidation:
                    self._consolidate()
                    next_consolidation = time.monotonic() + self.settings.consolidate_interval_s
                if not self._consume():
                    self._stop.wait(min(self.settings.block_ms / 1000, IDLE_POLL_S))
        finally:
            self.buckets.clear()
            self.leases.release_all()
            clear_heartbeat(self.cluster, self.settings.keys, self.consumer)

    def _consolidate(self) -> None:
        """Apply each tier's policy to each held bucket; a failure is logged, not raised."""
        for number, bucket in list(self.buckets.items()):
            store = bucket.ingestor.store
            for tier in TIERS:
                try:
                    consolidate(store.client, store, self.engine, self.settings, tier)
                except (redis.RedisError, MemoryTiersError) as e:
                    log.warning("bucket %d: consolidating %s failed: %s", number, tier, e)

    def _live(self) -> int:
        """Write this daemon's heartbeat, which registers it as alive now; how many daemons
        registered within a lease time (the heartbeat registry, one key)."""
        heartbeat = Heartbeat.here(
            consumer=self.consumer,
            model_version=self.engine.version,
            started_at=self._started_at,
            stored=self.stats.stored,
            dead_letters=self.stats.dead_letters,
            ttl_s=self.settings.heartbeat_ttl_s,
            validation_mse=self.engine.validation_mse,
            ignored_fields=self.ignored.report() or None,
            policy=self._policy,
        )
        beat(self.cluster, self.settings.keys, heartbeat)
        since_ms = round(heartbeat.at * 1000) - self.leases.ttl_ms
        return max(1, int(self.cluster.zcount(self.settings.keys.heartbeats, since_ms, "+inf")))

    def _consume(self) -> int:
        """The held buckets' new entries read in one round trip per node, then in each bucket
        its upkeep and claims when due and one batch; the entries handled. The buckets that
        fail are opened again on the nodes that own their slots now."""
        self._read_ahead()
        handled, failed = 0, []
        for number, bucket in list(self.buckets.items()):
            try:
                handled += bucket.step()
            except (redis.RedisError, MemoryTiersError) as e:
                log.warning("bucket %d: %s; opening it again on its node", number, e)
                failed.append(number)
        if failed:
            self._reopen(failed)
        return handled

    def _read_ahead(self) -> None:
        """Read the new entries of every held bucket that reads new ones next with one
        pipelined XREADGROUP per node (a cluster has no read across slots), as the buckets'
        next batches. A node that fails is skipped: its buckets then read, and fail, alone."""
        by_node: dict[int, list[_Bucket]] = defaultdict(list)
        for bucket in self.buckets.values():
            if bucket.position.reads_new:
                by_node[id(bucket.ingestor.reader.client)].append(bucket)
        for buckets in by_node.values():
            try:
                batches = read_ready_together([b.ingestor.reader for b in buckets])
            except StoreError as e:
                log.debug("reading %d buckets together failed: %s", len(buckets), e)
                continue
            for bucket, batch in zip(buckets, batches, strict=True):
                bucket.position.read_ahead = batch or []

    def _reopen(self, numbers: Sequence[int]) -> None:
        """Open the buckets `numbers` again where the cluster's slot map says they are now
        (asked for once: after a failover or a reshard; else the same nodes), each re-reading
        its pending entries. One that cannot be opened yet (a failover not over) stays where
        it was and re-reads its pending entries there, to fail and be reopened again."""
        try:
            self.cluster.nodes_manager.initialize()
        except redis.RedisError as e:
            log.warning("the cluster's slot map cannot be read yet: %s", e)
        for number in numbers:
            try:
                self.buckets[number] = _Bucket(self, number)
            except (redis.RedisError, MemoryTiersError) as e:
                log.warning("bucket %d: its node cannot be reached yet: %s", number, e)
                self.buckets[number].position.restart()

    def _balance(self) -> None:
        """Renew the leases, drop the buckets lost, take or give back up to the fair share,
        and open the buckets held on their nodes. A Redis failure (a failover under way) is
        logged: the next round tries again, as a lease outlives several rounds."""
        try:
            self._rebalance()
        except (redis.RedisError, MemoryTiersError) as e:
            log.warning("renewing or taking leases failed: %s; trying again", e)

    def _rebalance(self) -> None:
        for lost in self.leases.renew():
            log.warning("lease of bucket %d lost: another daemon consumes it now", lost)
            self.buckets.pop(lost, None)
        live = self._live()
        share = fair_share(self.settings.buckets, live)
        for bucket in self.leases.excess(share):
            self.buckets.pop(bucket, None)  # stopped consuming it: now give it back
            self.leases.release(bucket)
        self.leases.acquire(share)
        for bucket in sorted(self.leases.held - self.buckets.keys()):
            self.buckets[bucket] = _Bucket(self, bucket)
