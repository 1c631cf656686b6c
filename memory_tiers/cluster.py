"""A reshard of a Redis Cluster that keeps every bucket searchable (buckets.py).

Without a coordinator, RediSearch indexes only the keys of the node it runs on, and FT.CREATE
treats the index name as a key: a node creates a bucket's index only while it owns the
bucket's slot, or imports it. `redis-cli --cluster reshard` alone moves a bucket's records to
a node that has no index for them (every recall there fails), and leaves the old index behind
on the source. So, around it:

- `prepare(destination, slots)`: for every bucket whose slot is among `slots`, the
  destination creates the bucket's tier indexes first (CLUSTER SETSLOT IMPORTING, ASKING +
  FT.CREATE, SETSLOT STABLE); it then indexes the records as the reshard brings them in.
- `finish(node)`: the node drops the indexes of the buckets it no longer owns (the same
  steps with FT.DROPINDEX; the records are gone from it already).

A slot that the node is already importing or migrating is left as it is: a reshard is under
way there, and resetting the slot would break it.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterator
from contextlib import contextmanager

import redis
from redis.crc import key_slot

from .buckets import bucket_keys
from .constants import TIERS, Keys
from .features import FeatureSchema
from .resp import Command, first_error, round_trip, text
from .settings import Settings
from .store import TierStore

log = logging.getLogger(__name__)


def owners(node: redis.Redis) -> dict[int, str]:
    """Slot -> the id of the master that owns it, as `node` sees the cluster."""
    found: dict[int, str] = {}
    for first, last, master, *_ in node.execute_command("CLUSTER", "SLOTS"):
        found.update(dict.fromkeys(range(int(first), int(last) + 1), text(master[2])))
    return found


def prepare(
    destination: redis.Redis,
    slots: Collection[int],
    settings: Settings,
    schema: FeatureSchema | None,
    buckets: int,
) -> list[str]:
    """Create on `destination` the tier indexes of each bucket whose slot is in `slots` (and
    which it does not have yet), before a reshard moves those slots to it; the names created.

    Raises:
        ValueError: a slot of `slots` has no master.
        redis.RedisError: Redis refused a step; the indexes created before stay.
    """
    created: list[str] = []
    owner, me = owners(destination), text(destination.execute_command("CLUSTER", "MYID"))
    have = {text(name) for name in destination.execute_command("FT._LIST")}
    for keys, slot in _buckets_in(settings, buckets, set(slots)):
        if slot not in owner:
            raise ValueError(f"slot {slot} has no master: fix the cluster before a reshard")
        store = TierStore(destination, settings, schema, keys)
        missing = [c for c in store.create_commands().values() if c[1] not in have]
        if missing:
            with _asking(destination, slot, owner[slot], me):
                _run_asking(destination, missing)
            created += [command[1] for command in missing]
    if created:
        log.info("prepared %d indexes on %s", len(created), _address(destination))
    return created


def finish(node: redis.Redis, settings: Settings, buckets: int) -> list[str]:
    """Drop from `node` the tier indexes of the buckets whose slot it does not own (after a
    reshard moved them away); the names dropped. The records are not touched.

    Raises:
        redis.RedisError: Redis refused a step; the indexes dropped before stay dropped.
    """
    owner = owners(node)
    me = text(node.execute_command("CLUSTER", "MYID"))
    have = {text(name) for name in node.execute_command("FT._LIST")}
    dropped: list[str] = []
    for keys, slot in _buckets_in(settings, buckets, None):
        if owner.get(slot) == me:
            continue
        names = [keys.index(tier) for tier in TIERS if keys.index(tier) in have]
        if names and slot in owner:
            with _asking(node, slot, owner[slot], me):
                _run_asking(node, [("FT.DROPINDEX", name) for name in names])
            dropped += names
    if dropped:
        log.info("dropped %d orphan indexes on %s", len(dropped), _address(node))
    return dropped


def _buckets_in(
    settings: Settings, buckets: int, slots: set[int] | None
) -> Iterator[tuple[Keys, int]]:
    """(bucket keys, slot) of every bucket, or of those whose slot is in `slots`."""
    for bucket in range(buckets):
        keys = bucket_keys(settings.keys, bucket, buckets)
        slot = key_slot(keys.stream.encode())
        if slots is None or slot in slots:
            yield keys, slot


@contextmanager
def _asking(node: redis.Redis, slot: int, owner: str, me: str) -> Iterator[None]:
    """While the block runs, `node` (whose id is `me`) imports `slot` from its `owner`, so an
    ASKING command there may name the slot's keys; afterwards the slot is stable again. A slot
    the node owns, or imports or migrates already (a reshard under way), is left as it is."""
    if owner == me or _open_slot(node, slot):
        yield  # its own slot, or one a reshard has open: ASKING needs no more
        return
    node.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", owner)
    try:
        yield
    finally:
        node.execute_command("CLUSTER", "SETSLOT", slot, "STABLE")


def _run_asking(node: redis.Redis, commands: list[Command]) -> None:
    """Each command right after an ASKING, on one connection, in one round trip."""
    replies = round_trip(node, [step for c in commands for step in (("ASKING",), c)])
    first_error(replies)


def _open_slot(node: redis.Redis, slot: int) -> bool:
    """Whether `node` imports or migrates `slot` now (CLUSTER NODES: `[slot-<-id]`)."""
    for line in text(node.execute_command("CLUSTER", "NODES")).splitlines():
        if "myself" in line.split()[2]:
            return any(part.startswith(f"[{slot}-") for part in line.split()[8:])
    return False


def _address(node: redis.Redis) -> str:
    kwargs = node.connection_pool.connection_kwargs
    return f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"
