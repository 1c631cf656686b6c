"""Bucket leases (leases.py): each bucket consumed by one daemon, shared fairly, taken over
when a daemon stops renewing. On one Redis: the leases' semantics do not depend on routing."""

from __future__ import annotations

import redis
from test_ingest import wait_for

from memory_tiers.constants import Keys
from memory_tiers.leases import BucketLeases, fair_share

BUCKETS = 6


def leases(client: redis.Redis, owner: str, ttl_ms: int = 30_000) -> BucketLeases:
    return BucketLeases(client, Keys(), owner, BUCKETS, ttl_ms)


def test_a_joining_daemon_gets_its_fair_share_once_the_other_gives_back_its_excess(
    redis_client: redis.Redis,
) -> None:
    a, b = leases(redis_client, "daemon-a"), leases(redis_client, "daemon-b")
    assert a.acquire(fair_share(BUCKETS, 1)) == set(range(BUCKETS))
    share = fair_share(BUCKETS, 2)
    assert share == 3
    assert b.acquire(share) == set()  # nothing free yet
    excess = a.excess(share)
    assert len(excess) == 3
    for bucket in excess:  # the daemon stops consuming them first, then gives them back
        a.release(bucket)
    assert b.acquire(share) == excess
    holders = a.holders()
    assert sorted(holders.values()) == ["daemon-a"] * 3 + ["daemon-b"] * 3
    assert {k for k, v in holders.items() if v == "daemon-b"} == b.held
    assert a.renew() == set() and b.renew() == set()


def test_daemons_starting_together_split_the_buckets_without_overlap(
    redis_client: redis.Redis,
) -> None:
    daemons = [leases(redis_client, f"host-{i}") for i in range(4)]
    share = fair_share(BUCKETS, len(daemons))
    for daemon in daemons:
        daemon.acquire(share)
    held = [daemon.held for daemon in daemons]
    assert sum(len(h) for h in held) == BUCKETS
    assert set().union(*held) == set(range(BUCKETS))
    assert all(len(h) <= share for h in held)


def test_a_lease_not_renewed_expires_and_is_taken_over(redis_client: redis.Redis) -> None:
    frozen = leases(redis_client, "frozen", ttl_ms=300)
    heir = leases(redis_client, "heir")
    assert len(frozen.acquire(BUCKETS)) == BUCKETS
    assert heir.acquire(BUCKETS) == set()

    def takes_all() -> bool:
        heir.acquire(BUCKETS)
        return len(heir.held) == BUCKETS

    wait_for(takes_all, 10, "the frozen daemon's leases to expire")
    assert frozen.renew() == set(range(BUCKETS))  # it wakes up: every lease lost, none renewed
    assert frozen.held == set()
    assert set(heir.holders().values()) == {"heir"}


def test_a_daemon_gives_back_only_its_own_leases(redis_client: redis.Redis) -> None:
    a, b = leases(redis_client, "daemon-a"), leases(redis_client, "daemon-b")
    a.acquire(BUCKETS)
    b.held = {0}  # a stale belief: it lost bucket 0 to a long ago
    b.release(0)
    assert a.holders()[0] == "daemon-a"
    a.release_all()
    assert set(a.holders().values()) == {None}
