"""The consumer group (stream.py): reads in the daemon's order, and trims of acked entries.

Against the embedded Redis of conftest.py, flushed per test.
"""

from __future__ import annotations

import time

import redis

from memory_tiers import Keys, Settings
from memory_tiers.stream import GroupReader, ReadPosition, ensure_group, trim_acked

KEYS = Keys()


def _ids(messages: list[tuple[str, object]]) -> list[str]:
    return [entry_id for entry_id, _ in messages]


def _reader(redis_client: redis.Redis, name: str = "me") -> GroupReader:
    ensure_group(redis_client, KEYS)
    return GroupReader(redis_client, Settings(batch_size=2, block_ms=10), name)


# -- read position -----------------------------------------------------------------------------


def test_the_position_reads_own_pending_entries_first_then_new_ones(
    redis_client: redis.Redis,
) -> None:
    ids = [redis_client.xadd(KEYS.stream, {"n": n}) for n in range(5)]
    reader = _reader(redis_client)
    assert _ids(reader.read_new()) == ids[:2]  # delivered, never acked: pending now
    position = ReadPosition(reader)
    assert _ids(position.next_batch(wait=False)) == ids[:2]  # own pending ones first
    assert _ids(position.next_batch(wait=False)) == []  # none left after them
    assert _ids(position.next_batch(wait=False)) == ids[2:4]  # then new ones
    assert _ids(position.next_batch(wait=True)) == ids[4:]
    assert position.next_batch(wait=True) == []  # waited block_ms for none


def test_a_batch_read_ahead_comes_first_and_a_restart_rereads_what_is_pending(
    redis_client: redis.Redis,
) -> None:
    ids = [redis_client.xadd(KEYS.stream, {"n": n}) for n in range(4)]
    position = ReadPosition(_reader(redis_client))
    assert position.next_batch(wait=False) == []  # nothing of its own pending yet
    assert _ids(position.next_batch(wait=False)) == ids[:2]
    position.read_ahead = position.next_batch(wait=False)
    assert _ids(position.read_ahead) == ids[2:]
    assert _ids(position.next_batch(wait=False)) == ids[2:]  # the one read ahead
    assert position.read_ahead == []
    position.restart()
    assert _ids(position.next_batch(wait=False)) == ids[:2]  # nothing acked: read again
    assert _ids(position.next_batch(wait=False)) == ids[2:]


def test_claims_take_over_idle_entries_and_count_in_the_claims_key(
    redis_client: redis.Redis,
) -> None:
    ids = [redis_client.xadd(KEYS.stream, {"n": n}) for n in range(3)]
    dead = _reader(redis_client, "dead")
    assert _ids(dead.read_new()) == ids[:2]
    heir = GroupReader(redis_client, Settings(batch_size=10, claim_idle_ms=1), "heir")
    redis_client.xdel(KEYS.stream, ids[1])
    time.sleep(0.01)  # idle past claim_idle_ms
    cursor, messages = heir.claim_idle()
    assert cursor == "0-0"
    assert _ids(messages) == ids[:2]
    assert not messages[1][1]  # deleted: no fields
    assert redis_client.get(KEYS.claims) == "1"


# -- stream retention --------------------------------------------------------------------------


def test_trim_keeps_what_any_group_still_needs(redis_client: redis.Redis) -> None:
    """Entry n has id n*1000-0; trimming removes whole stream nodes of ~100 entries."""
    pipe = redis_client.pipeline(transaction=False)
    for n in range(1, 1001):
        pipe.xadd(KEYS.stream, {"n": n}, id=f"{n * 1000}-0")
    pipe.execute()
    redis_client.xgroup_create(KEYS.stream, KEYS.group, id="0")
    delivered = redis_client.xreadgroup(KEYS.group, "c", {KEYS.stream: ">"}, count=600)
    redis_client.xack(KEYS.stream, KEYS.group, *(i for i, _ in delivered[0][1] if i != "300000-0"))

    def kept() -> list[int]:
        entries = redis_client.xrange(KEYS.stream)
        return [int(entry_id.split("-")[0]) // 1000 for entry_id, _ in entries]

    def trimmed_up_to(bound: int) -> None:
        """Everything from `bound` on is kept; of what is before it, less than a node."""
        left = kept()
        assert left[-(1001 - bound) :] == list(range(bound, 1001))
        assert bound - 100 < left[0] <= bound

    assert trim_acked(redis_client, KEYS, 1.0, now_ms=10**7) > 0
    trimmed_up_to(300)  # the oldest pending entry
    redis_client.xack(KEYS.stream, KEYS.group, "300000-0")
    assert trim_acked(redis_client, KEYS, 1.0, now_ms=10**7) > 0
    trimmed_up_to(601)  # the first entry never delivered
    assert trim_acked(redis_client, KEYS, 999.5, now_ms=10**6) == 0  # cutoff: entry 0.5
    redis_client.xgroup_create(KEYS.stream, "another-team", id="0")  # has read nothing
    redis_client.xreadgroup(KEYS.group, "c", {KEYS.stream: ">"})
    redis_client.xack(KEYS.stream, KEYS.group, *(f"{n * 1000}-0" for n in range(601, 1001)))
    before = kept()
    assert trim_acked(redis_client, KEYS, 1.0, now_ms=10**7) == 0
    assert kept() == before


def test_a_stream_nobody_consumes_is_not_trimmed(redis_client: redis.Redis) -> None:
    assert trim_acked(redis_client, KEYS, 1.0, now_ms=10**13) == 0  # no stream at all
    redis_client.xadd(KEYS.stream, {"n": 1}, id="1000-0")
    assert trim_acked(redis_client, KEYS, 1.0, now_ms=10**13) == 0
    assert redis_client.xlen(KEYS.stream) == 1
