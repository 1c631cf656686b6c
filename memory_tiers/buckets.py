"""Buckets: a deployment's agents sharded over the hash slots of a Redis Cluster.

A deployment has B buckets, fixed for its life. Every memory of an agent lives in one bucket,
`bucket_of(agent_id, B)`: zlib's CRC-32 of the agent id in UTF-8, modulo B. That is stable
across versions and easy to compute in any language, so producers elsewhere XADD to the
right stream.

A bucket is a set of keys that share a hash slot (`Keys.bucket`): its stream, its records,
its tier indexes, time indexes and agent sets. RediSearch without a coordinator finds only
the records in its index's own slot, and a MULTI/EXEC on a cluster must stay in one slot.
Bucket i's hash tag is the first of `{0}`, `{1}`, `{2}`, ... whose slot lies in the i-th of B
equal shares of the 16,384 slots, so the buckets spread over the slots evenly: a cluster
whose masters own equal slot ranges holds equal numbers of buckets.

B = 1 is one Redis: no tag, the key names of a deployment without buckets.
"""

from __future__ import annotations

import zlib
from functools import lru_cache

from redis.crc import key_slot

from .constants import MAX_BUCKETS, Keys


def check_buckets(buckets: object) -> int:
    """`buckets` if it is a valid bucket count.

    Raises:
        ValueError: not an integer from 1 to MAX_BUCKETS.
    """
    if isinstance(buckets, bool) or not isinstance(buckets, int) or not 1 <= buckets <= MAX_BUCKETS:
        raise ValueError(f"buckets={buckets!r}: expected an integer from 1 to {MAX_BUCKETS}")
    return buckets


def bucket_of(agent_id: str, buckets: int) -> int:
    """The bucket of an agent's memories: CRC-32 (zlib) of its id in UTF-8, modulo `buckets`."""
    return zlib.crc32(agent_id.encode("utf-8")) % check_buckets(buckets)


@lru_cache(maxsize=8)
def bucket_tags(buckets: int) -> tuple[str, ...]:
    """The hash tag of each of `buckets` buckets, in bucket order; ("",) for one bucket.

    Tag i is the first `{n}` (n = 0, 1, 2, ...) whose slot s has s * buckets // 16384 == i.
    """
    if check_buckets(buckets) == 1:
        return ("",)
    tags: list[str | None] = [None] * buckets
    missing, n = buckets, 0
    while missing:
        tag = f"{{{n}}}"
        share = key_slot(tag.encode()) * buckets // MAX_BUCKETS
        if tags[share] is None:
            tags[share] = tag
            missing -= 1
        n += 1
    return tuple(tag for tag in tags if tag is not None)


def bucket_keys(keys: Keys, bucket: int, buckets: int) -> Keys:
    """The names of one bucket's keys among `buckets` (`keys` itself for one bucket).

    Raises:
        ValueError: a bad bucket count, or `bucket` is not one of them.
    """
    tags = bucket_tags(buckets)
    if isinstance(bucket, bool) or not isinstance(bucket, int) or not 0 <= bucket < buckets:
        raise ValueError(f"bucket {bucket!r}: expected 0 to {buckets - 1}")
    return keys.bucket(tags[bucket])


def agent_keys(keys: Keys, agent_id: str, buckets: int) -> Keys:
    """The names of the keys that hold an agent's memories: those of its bucket."""
    return bucket_keys(keys, bucket_of(agent_id, buckets), buckets)
