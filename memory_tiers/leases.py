"""Bucket leases: which daemon consumes which bucket of a deployment on a cluster (buckets.py).

Each bucket has one lease key in its own slot (`Keys.lease`) holding the name of the daemon
that consumes it: taken with SET NX PX, kept by renewing it (PEXPIRE, only while it still
holds that daemon's name), given back by deleting it (likewise). A daemon that dies or
freezes loses its leases within the lease time; other daemons then take them over.

A daemon holds a fair share, ceil(B / live daemons): it takes free leases up to its share,
starting at a place of its own (CRC-32 of its name) so that daemons starting together do not
all try the same buckets, and gives back what is above its share once it has stopped
consuming those buckets, so that a daemon that joins gets buckets within a renewal period.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from typing import Any

from .buckets import bucket_keys, check_buckets
from .constants import Keys
from .resp import text

_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
return 0
"""

_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


def fair_share(buckets: int, live: int) -> int:
    """How many of `buckets` buckets each of `live` daemons holds at most."""
    return math.ceil(buckets / max(live, 1))


class BucketLeases:
    """One daemon's leases on the buckets of a deployment.

    Args:
        client: a client that routes each key to its node (redis.RedisCluster), or one Redis.
        keys: the deployment's key names (untagged); each bucket's are derived from them.
        owner: the daemon's name (its consumer name), stored in the leases it holds.
        buckets: the deployment's bucket count.
        ttl_ms: how long a lease lives unless renewed; renew well within it.
    """

    def __init__(self, client: Any, keys: Keys, owner: str, buckets: int, ttl_ms: int) -> None:
        self.client = client
        self.owner = owner
        self.buckets = check_buckets(buckets)
        self.ttl_ms = ttl_ms
        self.held: set[int] = set()
        """The buckets this daemon holds a lease on, as of its last renewal."""
        self._keys = lease_keys(keys, buckets)
        start = zlib.crc32(owner.encode("utf-8")) % buckets
        self._order = [(start + i) % buckets for i in range(buckets)]
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    def renew(self) -> set[int]:
        """Renew every lease held; the buckets whose lease was lost (expired or taken), which
        this daemon must stop consuming at once."""
        lost = {
            b
            for b in sorted(self.held)
            if not self._renew(keys=[self._keys[b]], args=[self.owner, self.ttl_ms])
        }
        self.held -= lost
        return lost

    def acquire(self, share: int) -> set[int]:
        """Take free leases until this daemon holds `share` (or none is free); those taken."""
        gained: set[int] = set()
        for bucket in self._order:
            if len(self.held) >= share:
                break
            if bucket in self.held:
                continue
            if self.client.set(self._keys[bucket], self.owner, nx=True, px=self.ttl_ms):
                self.held.add(bucket)
                gained.add(bucket)
        return gained

    def excess(self, share: int) -> set[int]:
        """The held buckets above `share`: to stop consuming, then `release`."""
        return set(sorted(self.held, key=self._order.index)[share:])

    def release(self, bucket: int) -> None:
        """Give back one bucket's lease (if this daemon still holds it)."""
        self._release(keys=[self._keys[bucket]], args=[self.owner])
        self.held.discard(bucket)

    def release_all(self) -> None:
        """Give back every lease held: this daemon stops."""
        for bucket in sorted(self.held):
            self.release(bucket)

    def holders(self) -> dict[int, str | None]:
        """Bucket -> the daemon holding its lease now, or None: the lease map."""
        return holders(self.client, self._keys)


def lease_keys(keys: Keys, buckets: int) -> list[str]:
    """The lease key of each bucket, in bucket order."""
    return [bucket_keys(keys, b, buckets).lease for b in range(buckets)]


def holders(client: Any, leases: Sequence[str]) -> dict[int, str | None]:
    """Bucket -> the daemon holding its lease now, or None: the lease map, read in one round
    trip per node.

    Args:
        leases: the lease key of each bucket (`lease_keys`).
    """
    pipe = client.pipeline(transaction=False)
    for key in leases:
        pipe.get(key)
    names = pipe.execute() if leases else []
    return {b: None if name is None else text(name) for b, name in enumerate(names)}
