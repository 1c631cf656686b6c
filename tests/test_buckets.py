"""Buckets (buckets.py): the agent -> bucket function producers in any language reimplement,
and bucket key names that share one hash slot each."""

from __future__ import annotations

from collections import Counter

import pytest
from redis.crc import key_slot

from memory_tiers.buckets import agent_keys, bucket_keys, bucket_of, bucket_tags, check_buckets
from memory_tiers.constants import Keys


def test_the_bucket_of_an_agent_is_the_standard_crc32_of_its_utf8_id_modulo_b() -> None:
    # 0xCBF43926 is CRC-32's published check value for "123456789": what zlib, Java's CRC32,
    # Go's crc32.ChecksumIEEE and Node's zlib.crc32 all give.
    assert bucket_of("123456789", 1000) == 0xCBF43926 % 1000 == 262
    assert bucket_of("123456789", 1) == 0
    assert bucket_of("agent-é", 1000) == 747  # of its UTF-8 bytes (Latin-1's would give 431)
    counts = Counter(bucket_of(f"agent-{i}", 16) for i in range(16_000))
    assert sorted(counts) == list(range(16))
    assert min(counts.values()) > 800 and max(counts.values()) < 1200  # 1,000 each on average


@pytest.mark.parametrize("buckets", [2, 3, 16, 1000])
def test_bucket_tags_fall_in_equal_shares_of_the_slots_in_bucket_order(buckets: int) -> None:
    tags = bucket_tags(buckets)
    assert len(set(tags)) == len(tags) == buckets
    shares = [key_slot(tag.encode()) * buckets // 16384 for tag in tags]
    assert shares == list(range(buckets))


def test_everything_a_bucket_holds_shares_its_slot_and_deployment_keys_stay_untagged() -> None:
    keys = Keys("mt")
    slots = set()
    for bucket in range(8):
        held = bucket_keys(keys, bucket, 8)
        names = [
            held.stream, held.dead_letters, held.claims,
            *(held.index(t) for t in ("stm", "im", "ltm")),
            held.record("stm", "1-0"), held.record("ltm", "9-9"),
            held.time_index("im"), held.agent_time_index("im", "agent-7"), held.agents("ltm"),
        ]  # fmt: skip
        assert len({key_slot(name.encode()) for name in names}) == 1, names
        slots.add(key_slot(held.stream.encode()))
        assert held.lock("consolidate-stm") == keys.lock("consolidate-stm")
        assert held.heartbeats == keys.heartbeats and held.group == keys.group
    assert len(slots) == 8


def test_one_bucket_is_the_layout_of_one_redis() -> None:
    keys = Keys("mt")
    assert bucket_tags(1) == ("",)
    assert agent_keys(keys, "agent-1", 1) == keys
    assert (keys.stream, keys.index("stm"), keys.record("stm", "1-0")) == (
        "mt:states", "mt:idx:stm", "mt:stm:1-0"
    )  # fmt: skip
    assert keys.agent_time_index("im", "a") == "mt:ts:im:agent:a"
    tagged = agent_keys(keys, "agent-1", 4)
    assert tagged.tag == bucket_tags(4)[bucket_of("agent-1", 4)]
    assert tagged.record("stm", "1-0") == f"mt:stm:{tagged.tag}:1-0"
    assert tagged.index("stm") == f"mt:idx:stm:{tagged.tag}"


@pytest.mark.parametrize("buckets", [0, -1, 16385, True, "2", 2.0])
def test_a_bad_bucket_count_is_refused(buckets: object) -> None:
    with pytest.raises(ValueError, match="from 1 to 16384"):
        check_buckets(buckets)


@pytest.mark.parametrize("bucket", [-1, 4, True])
def test_a_bucket_outside_the_count_is_refused(bucket: int) -> None:
    with pytest.raises(ValueError, match="expected 0 to 3"):
        bucket_keys(Keys(), bucket, 4)
