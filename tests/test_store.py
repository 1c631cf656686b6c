"""The tier store against the embedded Redis: indexes, records, time indexes and KNN."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pytest
import redis
from redisvl.index import SearchIndex
from redisvl.query.filter import Tag

from memory_tiers import TIERS, ConfigError, Keys, Settings, StoreError
from memory_tiers.server import EmbeddedRedis
from memory_tiers.store import Candidate, Candidates, MemoryRecord, TierStore

T0 = 1_732_600_000_000
HOSTILE_AGENTS = ("a}|@x:{", "a", "A", "a b-c", "a,b", "a*", "-a", "@agent_id:{a}")


def make_records(
    dim: int,
    agents: Sequence[str],
    n: int,
    seed: int = 0,
    with_state: bool = True,
) -> list[MemoryRecord]:
    """`n` records with random vectors, round robin over `agents`, ts and step increasing."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    return [
        MemoryRecord(
            entry_id=f"{T0 + i}-0",
            agent_id=agents[i % len(agents)],
            agent_type="explorer" if i % 2 else "trader",
            step=i,
            ts=T0 + i,
            importance=i / n,
            model_version="v1",
            vector=vectors[i],
            state_json=json.dumps({"i": i, "agent": agents[i % len(agents)]})
            if with_state
            else None,
        )
        for i in range(n)
    ]


def vec_attrs(client: redis.Redis, index_name: str) -> dict[str, Any]:
    """dims, algorithm, datatype, distance_metric of an index's vec field, read by redisvl."""
    attrs = SearchIndex.from_existing(index_name, redis_client=client).schema.fields["vec"].attrs
    return {
        "dims": attrs.dims,
        "algorithm": attrs.algorithm.value.upper(),
        "datatype": attrs.datatype.value.lower(),
        "distance_metric": attrs.distance_metric.value.upper(),
    }


def record_keys(client: redis.Redis, tier: str) -> list[str]:
    return sorted(client.scan_iter(match=f"{Keys().record_prefix(tier)}*"))


# -- indexes -----------------------------------------------------------------------------------


def test_ensure_indexes_creates_three_indexes_with_the_settings_dims(
    redis_client: redis.Redis, store: TierStore
) -> None:
    store.ensure_indexes()  # a second call finds them and is fine
    names = sorted(redis_client.execute_command("FT._LIST"))
    assert names == ["mt:idx:im", "mt:idx:ltm", "mt:idx:stm"]
    for tier, dim in (("stm", 384), ("im", 128), ("ltm", 32)):
        assert vec_attrs(redis_client, f"mt:idx:{tier}") == {
            "dims": dim,
            "algorithm": "FLAT",
            "datatype": "float32",
            "distance_metric": "L2",
        }


@pytest.mark.parametrize(
    ("existing", "message"),
    [
        ({"stm_dim": 128}, r"mt:idx:stm has vec DIM 128, settings say 384 \(MT_STM_DIM\)"),
        ({"im_algorithm": "HNSW"}, r"mt:idx:im has vec ALGORITHM HNSW, settings say FLAT"),
        ({"ltm_datatype": "float16"}, r"vec TYPE FLOAT16, settings say float32 \(MT_LTM_DATATYPE"),
    ],
)
def test_an_index_that_differs_from_the_settings_is_a_config_error(
    redis_client: redis.Redis, settings: Settings, existing: dict[str, Any], message: str
) -> None:
    TierStore(redis_client, Settings(redis_url=settings.redis_url, **existing)).ensure_indexes()
    with pytest.raises(ConfigError, match=message):
        TierStore(redis_client, settings).ensure_indexes()


def test_an_index_missing_a_field_is_a_config_error(
    redis_client: redis.Redis, settings: Settings
) -> None:
    redis_client.execute_command(
        "FT.CREATE", "mt:idx:stm", "ON", "HASH", "PREFIX", "1", "mt:stm:", "SCHEMA",
        "agent_id", "TAG", "vec", "VECTOR", "FLAT", "6", "TYPE", "FLOAT32", "DIM", "384",
        "DISTANCE_METRIC", "COSINE",
    )  # fmt: skip
    with pytest.raises(ConfigError) as caught:
        TierStore(redis_client, settings).ensure_indexes()
    assert "field agent_type of type NONE, the store needs TAG" in str(caught.value)
    assert "vec DISTANCE_METRIC COSINE, the store needs L2" in str(caught.value)


def test_hnsw_and_float16_indexes_still_find_the_nearest_record(
    redis_client: redis.Redis, settings: Settings
) -> None:
    custom = Settings(
        redis_url=settings.redis_url,
        stm_algorithm="HNSW",
        stm_datatype="float16",
        im_algorithm="HNSW",
        ltm_datatype="float16",
    )
    store = TierStore(redis_client, custom)
    store.ensure_indexes()
    assert vec_attrs(redis_client, "mt:idx:stm")["algorithm"] == "HNSW"
    assert vec_attrs(redis_client, "mt:idx:stm")["datatype"] == "float16"
    assert vec_attrs(redis_client, "mt:idx:im")["algorithm"] == "HNSW"
    assert vec_attrs(redis_client, "mt:idx:ltm")["datatype"] == "float16"
    for tier in TIERS:
        records = make_records(custom.tier(tier).dim, ["a", "b"], 40, seed=7)
        store.write(tier, records)
        for record in records[::5]:
            hits = store.search(tier, record.vector, k=3, agent_id=record.agent_id)
            assert hits[0].entry_id == record.entry_id
            assert hits[0].distance < 1e-4
        stored = store.read(tier, [store.key(tier, records[0].entry_id)])[0].vector
        dtype = np.float16 if custom.tier(tier).datatype == "float16" else np.float32
        np.testing.assert_array_equal(stored, records[0].vector.astype(dtype).astype(np.float32))


# -- writes, reads, deletes --------------------------------------------------------------------


def test_writing_the_same_entry_twice_leaves_one_record_and_one_member(
    redis_client: redis.Redis, store: TierStore
) -> None:
    first = make_records(384, ["a"], 1)[0]
    again = MemoryRecord(**{**vars(first), "step": 99, "importance": 0.5})
    store.write("stm", [first])
    store.write("stm", [again])
    key = store.key("stm", first.entry_id)
    assert record_keys(redis_client, "stm") == [key]
    assert redis_client.zrange("mt:ts:stm", 0, -1) == [key]
    assert redis_client.zrange("mt:ts:stm:agent:a", 0, -1) == [key]
    assert store.count("stm") == 1
    assert (
        int(SearchIndex.from_existing("mt:idx:stm", redis_client=redis_client).info()["num_docs"])
        == 1
    )
    (read,) = store.read("stm", [key])
    assert (read.step, read.importance) == (99, 0.5)


def test_read_round_trips_fields_and_vectors(store: TierStore) -> None:
    records = make_records(128, ["a", "b"], 6, with_state=False)
    store.write("im", records)
    keys = [store.key("im", r.entry_id) for r in records]
    read = store.read(
        "im", [keys[3], store.key("im", "0-0"), *keys[:2]]
    )  # a missing key is skipped
    assert [r.entry_id for r in read] == [
        records[3].entry_id,
        records[0].entry_id,
        records[1].entry_id,
    ]
    for got, want in zip(read, [records[3], records[0], records[1]], strict=True):
        fields = ("entry_id", "agent_id", "agent_type", "step", "ts", "importance", "model_version")
        assert [getattr(got, f) for f in fields] == [getattr(want, f) for f in fields]
        assert got.state_json is None
        assert got.vector.dtype == np.float32
        np.testing.assert_array_equal(got.vector, want.vector)


def test_reconstructions_are_stored_a_byte_a_feature_and_read_back(
    redis_client: redis.Redis, store: TierStore
) -> None:
    rng = np.random.default_rng(3)
    rebuilt = rng.random((4, 152)).astype(np.float32)
    rebuilt[0, :3] = [0.0, 1.0, 0.5]
    rebuilt[1, :2] = [-0.25, 1.5]  # outside [0, 1]: clipped
    records = [
        MemoryRecord(**{**vars(r), "reconstruction": rebuilt[i] if i != 2 else None})
        for i, r in enumerate(make_records(128, ["a"], 4, with_state=False))
    ]
    store.write("im", records)
    keys = [store.key("im", r.entry_id) for r in records]

    read = store.read("im", keys)

    assert redis_client.hstrlen(keys[0], "recon") == 152
    assert redis_client.hexists(keys[2], "recon") == 0
    assert read[2].reconstruction is None
    for i in (0, 1, 3):
        got = read[i].reconstruction
        assert got is not None and got.dtype == np.float32
        np.testing.assert_allclose(got, np.clip(rebuilt[i], 0, 1), atol=1 / 510 + 1e-7)
        np.testing.assert_allclose(got * 255, np.round(got * 255), atol=1e-4)  # steps of 1/255
    np.testing.assert_array_equal(read[0].reconstruction[:3], [0.0, 1.0, np.float32(128 / 255)])  # type: ignore[index]
    np.testing.assert_array_equal(read[1].reconstruction[:2], [0.0, 1.0])  # type: ignore[index]


@pytest.mark.parametrize(
    "reconstruction",
    [np.full(152, np.nan, np.float32), np.zeros((2, 152), np.float32), np.float32(0.5)],
)
def test_a_reconstruction_that_is_no_finite_row_is_refused(
    store: TierStore, reconstruction: Any
) -> None:
    good, bad = make_records(128, ["a"], 2, with_state=False)
    bad = MemoryRecord(**{**vars(bad), "reconstruction": reconstruction})
    good = MemoryRecord(**{**vars(good), "reconstruction": np.zeros(152, np.float32)})

    commands, refused = store.encode_records("im", [good, bad])

    assert refused == {
        bad.entry_id: f"record {bad.entry_id!r}: reconstruction must be a finite 1-D vector, "
        f"got shape {np.shape(reconstruction)}"
    }
    assert commands[0][:2] == ("HSET", store.key("im", good.entry_id))


def test_read_batch_reports_what_is_not_a_record_and_skips_what_is_gone(
    redis_client: redis.Redis, store: TierStore
) -> None:
    records = make_records(128, ["a", "b"], 6)
    store.write("im", records)
    keys = [store.key("im", r.entry_id) for r in records]
    redis_client.hdel(keys[0], "agent_type", "ts")
    redis_client.hset(keys[2], "vec", b"short")
    redis_client.hset(keys[4], "step", "many")

    read, matrix, problems = store.read_batch("im", [*keys, store.key("im", "0-0")])

    assert [r.entry_id for r in read] == [records[i].entry_id for i in (1, 3, 5)]
    assert problems == {
        keys[0]: "incomplete: no agent_type, ts",
        keys[2]: "corrupt: vec has 5 bytes, 512 expected",
        keys[4]: "corrupt: invalid literal for int() with base 10: b'many'",
    }
    assert matrix.shape == (3, 128) and matrix.dtype == np.float32
    for row, got, want in zip(matrix, read, [records[i] for i in (1, 3, 5)], strict=True):
        np.testing.assert_array_equal(row, want.vector)
        np.testing.assert_array_equal(got.vector, want.vector)
        assert (got.state_json, got.attributes) == (want.state_json, {})
    with pytest.raises(StoreError, match=f"record {keys[0]} is incomplete: no agent_type, ts"):
        store.read("im", keys)


def test_stm_keeps_the_state_json(store: TierStore) -> None:
    (record,) = make_records(384, ["a"], 1)
    store.write("stm", [record])
    (read,) = store.read("stm", [store.key("stm", record.entry_id)])
    assert read.state_json == record.state_json
    (hit,) = store.search("stm", record.vector, k=1, return_vectors=True)
    assert hit.state == {"i": 0, "agent": "a"}
    assert hit.vector is not None
    np.testing.assert_array_equal(hit.vector, record.vector)


def test_delete_commands_remove_the_hash_and_both_time_index_members(
    redis_client: redis.Redis, store: TierStore
) -> None:
    records = make_records(32, ["a", "b"], 10)
    store.write("ltm", records)
    gone, kept = records[:4], records[4:]
    with redis_client.pipeline(transaction=True) as pipe:
        for command in store.delete_commands("ltm", gone):
            pipe.execute_command(*command)
        pipe.execute()
    kept_keys = sorted(store.key("ltm", r.entry_id) for r in kept)
    assert record_keys(redis_client, "ltm") == kept_keys
    assert sorted(redis_client.zrange("mt:ts:ltm", 0, -1)) == kept_keys
    for agent in ("a", "b"):
        assert sorted(redis_client.zrange(f"mt:ts:ltm:agent:{agent}", 0, -1)) == sorted(
            store.key("ltm", r.entry_id) for r in kept if r.agent_id == agent
        )
    assert store.count("ltm") == 6
    assert (store.count("ltm", "a"), store.count("ltm", "b")) == (3, 3)
    info = SearchIndex.from_existing("mt:idx:ltm", redis_client=redis_client).info()
    assert int(info["num_docs"]) == 6
    hits = store.search("ltm", gone[0].vector, k=10)
    assert {h.entry_id for h in hits} == {r.entry_id for r in kept}


def test_encoded_records_join_the_callers_transaction(
    redis_client: redis.Redis, store: TierStore
) -> None:
    records = make_records(32, ["a"], 3)
    pipe = redis_client.pipeline(transaction=True)
    pipe.xadd(Keys().stream, {"agent_id": "a", "state": "{}"})
    commands, refused = store.encode_records("ltm", records)
    assert refused == {}
    for command in commands:
        pipe.execute_command(*command)
    for command in store.delete_commands("ltm", records[:1]):
        pipe.execute_command(*command)
    pipe.execute()
    assert redis_client.xlen(Keys().stream) == 1
    assert store.count("ltm") == 2
    assert store.oldest_keys("ltm", 10) == [store.key("ltm", r.entry_id) for r in records[1:]]


def test_a_bad_record_is_refused_as_data_and_the_others_encoded(store: TierStore) -> None:
    good, bad = make_records(32, ["a", "b"], 2)
    bad = MemoryRecord(**{**vars(bad), "vector": np.zeros(31, np.float32)})
    commands, refused = store.encode_records("ltm", [good, bad])
    assert list(refused) == [bad.entry_id]
    assert refused[bad.entry_id].startswith("record '1732600000001-0' vector has shape (31,)")
    assert [command[:2] for command in commands] == [
        ("HSET", store.key("ltm", good.entry_id)),
        ("ZADD", "mt:ts:ltm"),
        ("ZADD", "mt:ts:ltm:agent:a"),
        ("SADD", "mt:agents:ltm"),
    ]


def test_write_refuses_a_bad_record_and_writes_nothing(
    redis_client: redis.Redis, store: TierStore
) -> None:
    good, bad = make_records(32, ["a", "b"], 2)
    bad = MemoryRecord(**{**vars(bad), "vector": np.zeros(31, np.float32)})
    with pytest.raises(ValueError, match=r"record '1732600000001-0' vector has shape \(31,\)"):
        store.write("ltm", [good, bad])
    assert record_keys(redis_client, "ltm") == []


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("agent_id", "", "is empty"),
        ("agent_id", " a", "leading or trailing whitespace"),
        ("agent_id", "a\x1fb", "control character"),
        ("agent_type", "x\n", "leading or trailing whitespace"),
        ("model_version", "", "is empty"),
        ("importance", float("nan"), "must be finite"),
        ("step", 10**400, r"step '1000.* is out of range"),
        ("step", 2**53, r"step '9007199254740992' is out of range"),
        ("ts", -1, r"ts '-1' is out of range \[0, 253402300799999\]"),
        ("vector", np.full(32, np.nan, np.float32), "NaN or infinity"),
    ],
)
def test_records_that_would_index_wrongly_are_refused(
    redis_client: redis.Redis, store: TierStore, field: str, value: Any, problem: str
) -> None:
    (record,) = make_records(32, ["a"], 1)
    with pytest.raises(ValueError, match=problem):
        store.write("ltm", [MemoryRecord(**{**vars(record), field: value})])
    assert record_keys(redis_client, "ltm") == []


def test_float16_overflow_is_refused(redis_client: redis.Redis, settings: Settings) -> None:
    store = TierStore(redis_client, Settings(redis_url=settings.redis_url, ltm_datatype="float16"))
    store.ensure_indexes()
    (record,) = make_records(32, ["a"], 1)
    big = MemoryRecord(**{**vars(record), "vector": np.full(32, 1e6, np.float32)})
    with pytest.raises(ValueError, match=r"NaN or infinity \(as float16\)"):
        store.write("ltm", [big])


def test_oldest_keys_come_oldest_first_per_tier_and_agent(store: TierStore) -> None:
    records = make_records(32, ["a", "b"], 8)
    store.write("ltm", list(reversed(records)))
    keys = [store.key("ltm", r.entry_id) for r in records]
    assert store.oldest_keys("ltm", 3) == keys[:3]
    assert store.oldest_keys("ltm", 10, agent_id="b") == keys[1::2]
    assert store.oldest_keys("ltm", 10, max_ts=T0 + 2) == keys[:3]


# -- search ------------------------------------------------------------------------------------


@pytest.fixture
def populated(store: TierStore) -> Iterator[list[MemoryRecord]]:
    records = make_records(384, ["alice", "bob", "carol"], 51, seed=3)
    store.write("stm", records)
    yield records


def test_knn_per_agent_returns_only_that_agent_nearest_first(
    store: TierStore, populated: list[MemoryRecord]
) -> None:
    query = np.random.default_rng(11).standard_normal(384).astype(np.float32)
    for agent in ("alice", "bob", "carol"):
        own = [r for r in populated if r.agent_id == agent]
        hits = store.search("stm", query, k=5, agent_id=agent)
        assert {h.agent_id for h in hits} == {agent}
        distances = [h.distance for h in hits]
        assert distances == sorted(distances)
        expected = sorted(own, key=lambda r: float(np.sum((r.vector - query) ** 2)))[:5]
        assert [h.entry_id for h in hits] == [r.entry_id for r in expected]
        np.testing.assert_allclose(
            distances, [np.sum((r.vector - query) ** 2) for r in expected], rtol=1e-4
        )
        assert hits[0].vector is None


def test_a_records_own_vector_finds_it_first_at_distance_zero(
    store: TierStore, populated: list[MemoryRecord]
) -> None:
    for record in populated[::7]:
        hits = store.search("stm", record.vector, k=3, agent_id=record.agent_id)
        assert hits[0].entry_id == record.entry_id
        assert hits[0].key == f"mt:stm:{record.entry_id}"
        assert hits[0].distance < 1e-4
        assert (hits[0].step, hits[0].ts, hits[0].model_version) == (
            record.step, record.ts, record.model_version,
        )  # fmt: skip
        assert hits[0].state == json.loads(record.state_json or "")


def test_a_recall_round_hands_each_tier_its_candidates_and_reads_back_what_is_chosen(
    store: TierStore, populated: list[MemoryRecord]
) -> None:
    query = np.random.default_rng(12).standard_normal(384).astype(np.float32)
    own = sorted(
        (r for r in populated if r.agent_id == "bob"),
        key=lambda r: float(np.sum((r.vector - query) ** 2)),
    )
    ran: list[str] = []
    seen: dict[str, Candidates] = {}

    def choose(tier: str, found: Candidates) -> list[Candidate]:
        ran.append(tier)
        seen[tier] = found
        return found.chosen(np.argsort(found.distances)[2::-1].tolist())  # 3rd, 2nd, 1st

    hits = store.recall_round(
        {"stm": query, "im": np.zeros(128, np.float32)}, 10, choose,
        meanwhile=lambda: ran.append("meanwhile"), agent_id="bob",
    )  # fmt: skip

    assert ran == ["meanwhile", "stm", "im"]
    stm = seen["stm"]
    order = np.argsort(stm.distances)
    assert [stm.keys[i].decode() for i in order] == [f"mt:stm:{r.entry_id}" for r in own[:10]]
    np.testing.assert_allclose(
        stm.distances[order], [np.sum((r.vector - query) ** 2) for r in own[:10]], rtol=1e-4
    )
    [vectors] = stm.vectors  # an STM tier not measured exactly: by its vectors
    np.testing.assert_array_equal(
        vectors.values[np.argsort(stm.distances[vectors.positions])], [r.vector for r in own[:10]]
    )
    assert len(seen["im"]) == 0
    assert [h.entry_id for h in hits["stm"]] == [r.entry_id for r in own[2::-1]]
    assert [h.state for h in hits["stm"]] == [json.loads(r.state_json or "") for r in own[2::-1]]
    assert hits["im"] == []
    assert store.recall_round({}, 10, choose, agent_id="bob") == {}
    assert ran == ["meanwhile", "stm", "im"]


def test_step_range_and_extra_filters(store: TierStore, populated: list[MemoryRecord]) -> None:
    query = populated[20].vector
    hits = store.search("stm", query, k=50, agent_id="bob", step_range=(10, 30))
    expected = {r.entry_id for r in populated if r.agent_id == "bob" and 10 <= r.step <= 30}
    assert {h.entry_id for h in hits} == expected
    hits = store.search("stm", query, k=50, filters=Tag("agent_type") == "explorer")
    assert {h.entry_id for h in hits} == {r.entry_id for r in populated if r.step % 2}
    with pytest.raises(ValueError, match="low end above high end"):
        store.search("stm", query, step_range=(5, 1))


def test_hostile_agent_ids_neither_widen_nor_break_a_search(store: TierStore) -> None:
    records = make_records(32, HOSTILE_AGENTS, 8 * len(HOSTILE_AGENTS))
    store.write("ltm", records)
    for agent in HOSTILE_AGENTS:
        own = {r.entry_id for r in records if r.agent_id == agent}
        hits = store.search("ltm", records[0].vector, k=100, agent_id=agent)
        assert {h.entry_id for h in hits} == own, agent
        assert store.count("ltm", agent) == len(own)
    assert store.search("ltm", records[0].vector, k=5, agent_id="a}") == []
    with pytest.raises(ValueError, match="is empty"):
        store.search("ltm", records[0].vector, agent_id="")  # would otherwise match everyone


def test_search_refuses_a_query_vector_of_the_wrong_size(store: TierStore) -> None:
    with pytest.raises(
        ValueError, match=r"query vector has shape \(384,\), tier im needs \(128,\)"
    ):
        store.search("im", np.zeros(384, np.float32))
    with pytest.raises(ValueError, match="unknown tier 'mtm'"):
        store.search("mtm", np.zeros(384, np.float32))


# -- protocols ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "client_kwargs",
    [{}, {"protocol": 2}, {"decode_responses": True}, {"protocol": 2, "decode_responses": True}],
    ids=["default", "resp2", "default-decoded", "resp2-decoded"],
)
def test_the_store_works_the_same_on_resp2_and_the_default_protocol(
    redis_server: EmbeddedRedis, redis_client: redis.Redis, client_kwargs: dict[str, Any]
) -> None:
    client = redis.Redis.from_url(redis_server.url, **client_kwargs)
    try:
        store = TierStore(client, Settings(redis_url=redis_server.url, ltm_dim=16))
        store.ensure_indexes()
        records = make_records(16, ["a", "b"], 10)
        store.write("ltm", records)
        (read,) = store.read("ltm", [store.key("ltm", records[4].entry_id)])
        np.testing.assert_array_equal(read.vector, records[4].vector)
        hits = store.search("ltm", records[4].vector, k=2, agent_id="a", return_vectors=True)
        assert [h.entry_id for h in hits][:1] == [records[4].entry_id]
        assert hits[0].vector is not None and hits[0].distance < 1e-4
        assert store.oldest_keys("ltm", 1) == [store.key("ltm", records[0].entry_id)]
        with pytest.raises(ConfigError, match="has vec DIM 16, settings say 32"):
            TierStore(client, Settings(redis_url=redis_server.url)).ensure_indexes()
    finally:
        client.close()


def test_a_native_resp3_client_is_refused(redis_server: EmbeddedRedis, settings: Settings) -> None:
    client = redis.Redis.from_url(redis_server.url, protocol=3)
    try:
        with pytest.raises(ConfigError, match="protocol=3"):
            TierStore(client, settings)
    finally:
        client.close()


def test_redis_errors_come_back_as_store_errors_naming_the_index(
    redis_client: redis.Redis, settings: Settings
) -> None:
    # An index whose vector field has another size (a missing index would be recreated): over
    # a record, Redis refuses the KNN's 128-value query vector.
    redis_client.execute_command(
        "FT.CREATE", "mt:idx:im", "ON", "HASH", "PREFIX", "1", "mt:im:",
        "SCHEMA", "agent_id", "TAG",
        "vec", "VECTOR", "FLAT", "6", "TYPE", "FLOAT32", "DIM", "4", "DISTANCE_METRIC", "L2",
    )  # fmt: skip
    redis_client.hset("mt:im:1-0", mapping={"agent_id": "a", "vec": bytes(16)})
    store = TierStore(redis_client, settings)
    with pytest.raises(StoreError, match=r"KNN on mt:idx:im \(@agent_id:\{a\}\) failed"):
        store.search("im", np.zeros(128, np.float32), agent_id="a")
    redis_client.set("mt:ts:ltm", "not a sorted set")
    with pytest.raises(StoreError, match=r"write of 1 ltm records \(mt:ltm:1732600000000-0, "):
        store.write("ltm", make_records(32, ["a"], 1))
    with pytest.raises(StoreError, match="ZCARD mt:ts:ltm failed"):
        store.count("ltm")


def test_the_raw_create_commands_make_the_indexes_ensure_indexes_makes(
    redis_client: redis.Redis, settings: Settings, engine: Any
) -> None:
    made = TierStore(redis_client, settings, engine.schema)
    made.ensure_indexes()
    raw = TierStore(redis_client, settings, engine.schema, Keys("other"))
    for command in raw.create_commands().values():
        redis_client.execute_command(*command)
    raw.ensure_indexes()  # finds them as its settings say: no ConfigError, nothing to alter
    for tier in TIERS:
        mine = made.client.ft(made.keys.index(tier)).info()
        theirs = raw.client.ft(raw.keys.index(tier)).info()
        assert mine["attributes"] == theirs["attributes"]
        assert theirs["index_definition"]["prefixes"] == [raw.keys.record_prefix(tier)]
