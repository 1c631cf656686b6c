"""Buckets (buckets.py): the agent -> bucket function producers in any language reimplement,
and bucket key names that share one hash slot each."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import pytest
import redis
from redis.crc import key_slot

from memory_tiers import Settings
from memory_tiers.buckets import agent_keys, bucket_keys, bucket_of, bucket_tags, check_buckets
from memory_tiers.constants import TIERS, Keys
from memory_tiers.store import BUCKET_BLOCK_SIZE, MemoryRecord, TierStore


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


def test_a_buckets_small_indexes_reserve_little_memory(redis_client: redis.Redis) -> None:
    """B buckets hold 3·B indexes; at RediSearch's default BLOCK_SIZE (1,024 vectors) each
    would reserve a block, 1.5 MB at STM, even for one memory: measured 139 MB for these 48
    buckets at 1,024 and 23 MB at 64."""
    settings = Settings(buckets=48)
    before = redis_client.info("memory")["used_memory"]
    for bucket in range(48):
        store = TierStore(redis_client, settings, keys=bucket_keys(settings.keys, bucket, 48))
        store.ensure_indexes()
        for tier in TIERS:
            dim = settings.tier(tier).dim
            store.write(tier, [record(f"1-{bucket}", np.full(dim, 0.5, dtype=np.float32))])
        assert store.count("stm") == 1
        assert block_size(store.create_commands()["stm"]) == BUCKET_BLOCK_SIZE
    grown_mb = (redis_client.info("memory")["used_memory"] - before) / 2**20
    assert grown_mb < 60, f"48 buckets with a memory each took {grown_mb:.0f} MB"
    untagged = TierStore(redis_client, Settings(), keys=Keys("mt"))
    assert block_size(untagged.create_commands()["stm"]) is None  # one Redis: as before


def block_size(create: Sequence[object]) -> object:
    """The BLOCK_SIZE an FT.CREATE gives its vector field, or None (RediSearch's default)."""
    args = list(create)
    return args[args.index("BLOCK_SIZE") + 1] if "BLOCK_SIZE" in args else None


def record(entry_id: str, vector: np.ndarray) -> MemoryRecord:
    return MemoryRecord(
        entry_id=entry_id, agent_id="a", agent_type="explorer", step=0, ts=1, model_version="v",
        vector=vector,
    )  # fmt: skip
