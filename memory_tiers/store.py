"""Tier indexes (declared redisvl schemas) and the records in them: write, read, delete, KNN.

One HASH per memory under `Keys.record(tier, entry_id)`, so replaying a stream entry overwrites
its record instead of adding one. Every record write also ZADDs the record key to the tier's
time index and the agent's time index (scored by ts, ms) in the same pipeline, so consolidation
picks the oldest records without scanning.

Decisions:
- Distance metric L2. RediSearch reports L2 as the *squared* Euclidean distance; a record found
  by its own vector is at exactly 0, and unlike COSINE the vector's length counts, which matters
  for autoencoder codes (IP has no fixed self-distance at all).
- Protocol: the store parses no reply by its wire shape alone. FT.INFO is read raw and both the
  RESP2 flat list and the RESP3 map are handled; HGETALL uses NEVER_DECODE, so vectors come back
  as bytes whatever `decode_responses` is. KNN is a raw FT.SEARCH (`_knn_command`, no
  SORTBY), tested with RESP2 (`protocol=2`) and redis-py 8's default (`Redis.from_url`:
  protocol unset, RESP3 on the wire, RESP2-shaped search replies). A client made with an
  explicit `protocol=3` is refused: redisvl 0.28, which creates the indexes, cannot read its
  native FT.SEARCH maps.
- TAG fields are case sensitive and split on `TAG_SEPARATOR` (a control character) instead of
  ',', so an agent id is always exactly one tag; query values are escaped by redisvl's `Tag`.
- Redis ACL refusals (NOPERM) are reported with what the user needs (`failure_text`): RediSearch
  treats an index name as a key, so every index is named under the prefix too (`Keys.index`).
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import reduce
from typing import Any, NamedTuple, TypeVar

import numpy as np
import numpy.typing as npt
import redis
from redis.commands.search.index_definition import IndexDefinition, IndexType
from redis.exceptions import AskError, ClusterCrossSlotError, NoPermissionError
from redisvl.exceptions import RedisVLError
from redisvl.index import SearchIndex
from redisvl.query.filter import FilterExpression, Num, Tag
from redisvl.schema import IndexSchema

from . import resp
from .attributes import KIND_ATTRIBUTE, StateAttribute, state_attributes
from .constants import TIERS, Keys
from .errors import MISSING_INDEX_ERRORS, ConfigError, StoreError
from .features import FeatureSchema
from .protocol import integer_problem, read_json, tag_problem
from .resp import Command, Conversation, text, zadd
from .settings import Settings, TierSettings, env_var

log = logging.getLogger(__name__)

VECTOR_FIELD = "vec"
"""Hash field holding the vector, as raw bytes of the tier's datatype."""

STATE_FIELD = "state"
"""Hash field holding the raw state JSON (STM records); stored, not indexed."""

FEATURES_FIELD = "features"
"""Hash field holding the raw state's features (float32 bytes), kept with the state: recall's
exact re-sort reads 50 of them in microseconds, where parsing and featurizing 50 states
takes milliseconds. Stored, not indexed; valid under the schema of `model_version`'s model."""

RECONSTRUCTION_FIELD = "recon"
"""Hash field holding the record's reconstruction: its vector decoded by the model that
wrote the vector, one byte per feature (features lie in [0, 1]: round(x * 255), off by at
most 1/510). Recall re-sorts IM and LTM candidates by it rather than decode 100 vectors a
recall, for input_dim bytes a record (152 at the default schema); after a retrain it still
approximates the memory, where the new model's decoder would misread the old vector. Stored,
not indexed."""

RECONSTRUCTED_TIERS = frozenset({"im", "ltm"})
"""Tiers whose records carry their reconstruction: those that keep no raw state by default."""

DISTANCE_METRIC = "L2"
"""Vector distance of every tier index; RediSearch reports it squared."""

TAG_SEPARATOR = "\x1f"
"""TAG separator of the indexes: a control character that `tag_problem` refuses in values."""

MAX_ATTRIBUTE_ROWS = 10_000
"""Records of one agent per tier that a partial-state recall reads at most."""

TAG_FIELDS = ("agent_id", "agent_type", "model_version")
"""Indexed TAG fields of every record."""

NUMERIC_FIELDS = ("step", "ts", "importance")
"""Indexed NUMERIC fields of every record."""

HIT_FIELDS = (*TAG_FIELDS, *NUMERIC_FIELDS, STATE_FIELD, VECTOR_FIELD)
"""The fields a full Hit is read from."""

BUCKET_BLOCK_SIZE = 64
"""Vectors per allocation block of a bucket's FLAT index (RediSearch's BLOCK_SIZE; its
default is 1,024). A cluster holds B small indexes per tier, each with at least one block:
20,000 records over 256 buckets took 405 MB at 1,024 and 125 MB at 64 (one index: 94 MB)."""

_DTYPES: dict[str, type[np.floating[Any]]] = {"float32": np.float32, "float16": np.float16}
_DISTANCE = "vector_distance"
_DISTANCE_NAME = _DISTANCE.encode()
_VECTOR_NAME, _STATE_NAME, _FEATURES_NAME, _RECONSTRUCTION_NAME = (
    name.encode() for name in (VECTOR_FIELD, STATE_FIELD, FEATURES_FIELD, RECONSTRUCTION_FIELD)
)
_T = TypeVar("_T")
_Row = tuple[bytes, Mapping[bytes, Any]]
"""One FT.SEARCH document: its key and its returned fields, names and values as bytes."""

RECORD_FIELDS: tuple[str, ...] = (
    *TAG_FIELDS,
    *NUMERIC_FIELDS,
    VECTOR_FIELD,
    STATE_FIELD,
    FEATURES_FIELD,
    RECONSTRUCTION_FIELD,
)
"""A record hash's own fields, in the order the codec writes and reads them (its attributes
follow). Every record has those before the state; the state, its features and the
reconstruction are optional."""
_VECTOR, _STATE, _FEATURES, _RECONSTRUCTION = (
    RECORD_FIELDS.index(f)
    for f in (VECTOR_FIELD, STATE_FIELD, FEATURES_FIELD, RECONSTRUCTION_FIELD)
)

Vector = npt.NDArray[np.float32]


@dataclass(frozen=True, eq=False, kw_only=True)
class MemoryRecord:
    """One memory in one tier, as written to and read from its record hash."""

    entry_id: str
    """Stream entry id (`1732600000000-0`); the record key derives from it."""
    agent_id: str
    agent_type: str
    step: int
    ts: int
    """Milliseconds since the epoch; scores the time indexes."""
    model_version: str
    vector: Vector
    """(dim,) float32 vector of the record's tier."""
    importance: float = 0.0
    state_json: str | None = None
    """The raw state JSON; kept in STM, dropped by consolidation."""
    features: Vector | None = None
    """(input_dim,) float32 features of the raw state under the schema of `model_version`'s
    model; written only with the state."""
    reconstruction: Vector | None = None
    """(input_dim,) float32 in [0, 1]: `vector` decoded by the model that wrote it
    (RECONSTRUCTION_FIELD); written in RECONSTRUCTED_TIERS."""
    attributes: Mapping[str, float | str] = field(default_factory=dict)
    """State attributes (attributes.py): attribute name -> the state's value."""

    def with_vector(
        self, vector: Vector, *, reconstruction: Vector | None = None, keep_state: bool = True
    ) -> MemoryRecord:
        """This memory with another vector (the next tier's, or a new model's) and that
        vector's `reconstruction`, for the move that writes it; its raw state and features
        only if `keep_state`.

        A field-by-field copy: dataclasses.replace runs the frozen __init__ again, 4-5 us a
        record, and consolidation makes 1,000 a batch."""
        changes: dict[str, Any] = {"vector": vector, "reconstruction": reconstruction}
        if not keep_state:
            changes.update(state_json=None, features=None)
        moved = object.__new__(MemoryRecord)
        moved.__dict__.update(self.__dict__, **changes)
        return moved


@dataclass(frozen=True, eq=False, kw_only=True)
class Hit:
    """One KNN result."""

    tier: str
    key: str
    entry_id: str
    agent_id: str
    agent_type: str
    step: int
    ts: int
    importance: float
    model_version: str
    distance: float
    """Squared Euclidean distance to the query vector (RediSearch's L2)."""
    vector: Vector | None = None
    """(dim,) float32, only when the search asked for vectors."""
    state: dict[str, Any] | None = None
    """The parsed state JSON, when the record kept it (STM)."""


class Candidate(NamedTuple):
    """A chosen KNN result: its record's key and its distance to the query vector."""

    key: str
    distance: float
    """Squared Euclidean distance to the query vector (RediSearch's L2)."""


class Rows(NamedTuple):
    """One column of some of a tier's candidates, one row each, all of one width: which
    candidates (`positions`) and their rows (`values`, (len(positions), width) float32)."""

    positions: list[int]
    values: Vector


@dataclass(frozen=True, eq=False)
class Candidates:
    """One tier's KNN results with only what re-sorting them needs, as columns: a recall reads
    three tiers of 50, and a tuple and an array per candidate cost more than the re-sort.

    Candidate i is the record `keys[i]` at `distances[i]` (squared L2 to the query vector),
    measured by at most one of: its state's features, where the serving model wrote them
    (`features`); its stored reconstruction (`reconstructions`); its parsed state (`states`,
    read for a record that has neither); its vector (`vectors`). Features and
    reconstructions come as one Rows per width: one, unless the schema changed under some
    records. A candidate with none (a record gone since the search) ranks last.
    """

    keys: list[bytes]
    distances: npt.NDArray[np.float64]
    features: list[Rows] = field(default_factory=list)
    reconstructions: list[Rows] = field(default_factory=list)
    vectors: list[Rows] = field(default_factory=list)
    states: dict[int, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.keys)

    def chosen(self, positions: Iterable[int]) -> list[Candidate]:
        """The candidates at `positions`, in that order."""
        return [Candidate(text(self.keys[i]), float(self.distances[i])) for i in positions]

    def unmeasured(self) -> list[int]:
        """Positions of the candidates with nothing to measure them by."""
        measured = set(self.states)
        for rows in (*self.features, *self.reconstructions, *self.vectors):
            measured.update(rows.positions)
        return [i for i in range(len(self.keys)) if i not in measured]


@dataclass(frozen=True)
class IndexState:
    """One tier index as FT.INFO reports it."""

    num_docs: int
    failures: int
    """hash_indexing_failures: records the index could not index, which no search finds."""
    indexing: bool
    """Whether it is (re)indexing existing records in the background, as after FT.CREATE."""
    last_error: str | None = None
    """The last indexing error and its key, if any."""


def index_states(
    client: redis.Redis | redis.RedisCluster, keys: Keys
) -> dict[str, IndexState | None]:
    """Each tier's index by FT.INFO (one pipelined round trip); None for a missing one.

    Raises:
        redis.RedisError: Redis failed, or refused FT.INFO (as the status readers expect it).
    """
    pipe = client.pipeline(transaction=False)
    for tier in TIERS:
        pipe.execute_command("FT.INFO", keys.index(tier))
    states: dict[str, IndexState | None] = {}
    for tier, reply in zip(TIERS, pipe.execute(raise_on_error=False), strict=True):
        if isinstance(reply, Exception) and not missing_index(reply):
            raise reply
        states[tier] = None if isinstance(reply, Exception) else _index_state(reply)
    return states


def missing_index(error: BaseException) -> bool:
    """Whether `error` is RediSearch saying the index does not exist."""
    return any(phrase in str(error).lower() for phrase in MISSING_INDEX_ERRORS)


def _index_state(info: Any) -> IndexState:
    errors = _lookup(info, "index errors")
    last = text(_lookup(errors, "last indexing error") or "N/A")
    key = text(_lookup(errors, "last indexing error key") or "N/A")
    return IndexState(
        num_docs=int(float(text(_lookup(info, "num_docs") or 0))),
        failures=int(float(text(_lookup(info, "hash_indexing_failures") or 0))),
        indexing=bool(int(float(text(_lookup(info, "indexing") or 0)))),
        last_error=None if last == "N/A" else f"{key}: {last}",
    )


def tier_schema(
    keys: Keys, tier: TierSettings, state: Sequence[StateAttribute] = ()
) -> IndexSchema:
    """The declared index of one tier: prefix, TAG/NUMERIC fields, the vector field, and the
    `state` attributes (attributes.py)."""
    tag_attrs = {"case_sensitive": True, "separator": TAG_SEPARATOR}
    vector_attrs = {
        "dims": tier.dim,
        "algorithm": tier.algorithm.lower(),
        "datatype": tier.datatype,
        "distance_metric": DISTANCE_METRIC.lower(),
    }
    if keys.tag and tier.algorithm.upper() == "FLAT":
        vector_attrs["block_size"] = BUCKET_BLOCK_SIZE
    fields: list[dict[str, Any]] = [
        *({"name": name, "type": "tag", "attrs": tag_attrs} for name in TAG_FIELDS),
        *({"name": name, "type": "numeric"} for name in NUMERIC_FIELDS),
        {"name": VECTOR_FIELD, "type": "vector", "attrs": vector_attrs},
        *(_attribute_field(a) for a in state),
    ]
    index = {"name": keys.index(tier.name), "prefix": keys.record_prefix(tier.name)}
    schema: IndexSchema = IndexSchema.from_dict(
        {"index": {**index, "storage_type": "hash"}, "fields": fields}
    )
    return schema


def _attribute_field(attribute: StateAttribute) -> dict[str, Any]:
    if attribute.numeric:
        return {"name": attribute.name, "type": "numeric"}
    return {
        "name": attribute.name,
        "type": "tag",
        "attrs": {"case_sensitive": True, "separator": TAG_SEPARATOR},
    }


class TierStore:
    """The three tier indexes and their records, on one Redis client.

    Args:
        client: any sync redis-py client except one made with `protocol=3` (see module doc);
            `decode_responses` may be either.
        settings: dimensions, algorithm and datatype of each tier, and the key prefix.

    Raises:
        ConfigError: the client speaks native RESP3 search replies.
    """

    def __init__(
        self,
        client: redis.Redis,
        settings: Settings,
        schema: FeatureSchema | None = None,
        keys: Keys | None = None,
    ) -> None:
        """A store over `client`; with the model's `schema`, its indexes also declare the
        record attributes (attributes.py), added to existing indexes by `ensure_indexes`.
        Its keys are `keys` (one bucket's, on the node that holds it: buckets.py), by default
        the deployment's."""
        _check_client(client)
        self.client = client
        self.keys = settings.keys if keys is None else keys
        self.tiers = {name: settings.tier(name) for name in TIERS}
        self.state_attributes = state_attributes(schema) if schema is not None else ()
        self.record_attributes = (KIND_ATTRIBUTE, *self.state_attributes)
        """What every record carries besides its own fields: its kind and its state fields."""
        self._indexes = {
            name: SearchIndex(
                tier_schema(self.keys, tier, self.record_attributes), redis_client=client
            )
            for name, tier in self.tiers.items()
        }

    def key(self, tier: str, entry_id: str) -> str:
        """Record key of one entry in one tier."""
        return self.keys.record(self._tier(tier).name, entry_id)

    # -- indexes -------------------------------------------------------------------------------

    def ensure_indexes(self) -> None:
        """Create each missing tier index, then check every index against the settings.

        Raises:
            ConfigError: an existing index differs from the settings; the message names both.
            StoreError: Redis failed.
        """
        for name in TIERS:
            index = self._indexes[name]
            failure: str | None = None
            if self._index_info(name) is None:
                try:
                    index.create(overwrite=False)
                except RedisVLError as e:
                    # Another process may have created it since; the check below decides.
                    failure = failure_text(e, self.keys)
                    log.warning("creating index %s failed: %s", index.name, failure)
                else:
                    tier = self.tiers[name]
                    log.info(
                        "created index %s: dim %d %s %s %s",
                        index.name, tier.dim, tier.algorithm, tier.datatype, DISTANCE_METRIC,
                    )  # fmt: skip
            info = self._index_info(name)
            if info is None:
                raise StoreError(f"index {index.name} could not be created: {failure}")
            problems = _index_problems(self.keys, self.tiers[name], info)
            if problems:
                raise ConfigError(
                    f"index {index.name} has {'; '.join(problems)}. Drop it "
                    f"(FT.DROPINDEX {index.name}; its records stay) or change the settings"
                )
            self._add_attributes(index.name, info)

    def create_commands(self) -> dict[str, Command]:
        """Tier -> the FT.CREATE of its index, as `ensure_indexes` has redisvl send it: for a
        cluster node that is asked to create it before it owns the slot (cluster.py)."""
        commands: dict[str, Command] = {}
        for name, index in self._indexes.items():
            prefix = index.schema.index.prefix
            definition = IndexDefinition(
                prefix=prefix if isinstance(prefix, list) else [prefix], index_type=IndexType.HASH
            )
            fields = [arg for f in index.schema.redis_fields for arg in f.redis_args()]
            commands[name] = ("FT.CREATE", index.name, *definition.args, "SCHEMA", *fields)
        return commands

    def _add_attributes(self, index: str, info: Any) -> None:
        """FT.ALTER an index that lacks some record attributes (made before them, or by a store
        without the schema) to declare them; Redis then indexes the existing records.

        Raises:
            ConfigError: an attribute exists with another type.
            StoreError: Redis failed.
        """
        existing = {
            text(_lookup(a, "attribute")): text(_lookup(a, "type")).upper()
            for a in _lookup(info, "attributes") or []
        }
        missing: list[Any] = []
        for attribute in self.record_attributes:
            kind = "NUMERIC" if attribute.numeric else "TAG"
            found = existing.get(attribute.name)
            if found is None:
                missing += [attribute.name, kind]
                if not attribute.numeric:
                    missing += ["SEPARATOR", TAG_SEPARATOR, "CASESENSITIVE"]
            elif found != kind:
                raise ConfigError(
                    f"index {index} has {attribute.name} (state field {attribute.field!r}) of "
                    f"type {found}, the store needs {kind}. Drop it (FT.DROPINDEX {index}; "
                    "its records stay)"
                )
        if not missing:
            return
        try:
            self.client.execute_command("FT.ALTER", index, "SCHEMA", "ADD", *missing)
        except redis.RedisError as e:
            raise StoreError(f"FT.ALTER {index} failed: {failure_text(e, self.keys)}") from e
        log.info("index %s: declared the record attributes %s", index, missing[::2])

    def _index_info(self, tier: str) -> Any:
        """The raw FT.INFO reply of one tier's index (RESP2 list or RESP3 map), None if absent."""
        name = self.keys.index(tier)
        try:
            return self.client.execute_command("FT.INFO", name)
        except redis.ResponseError as e:
            if missing_index(e):
                return None
            raise StoreError(f"FT.INFO {name} failed: {failure_text(e, self.keys)}") from e
        except redis.RedisError as e:
            raise StoreError(f"FT.INFO {name} failed: {failure_text(e, self.keys)}") from e

    # -- writes and deletes --------------------------------------------------------------------

    def encode_records(
        self, tier: str, records: Sequence[MemoryRecord]
    ) -> tuple[list[Command], dict[str, str]]:
        """The commands that write the records that fit `tier`, and why the others do not.

        Refusals are data, not an exception: ingest dead-letters those records, consolidation
        leaves their sources in place, and both write the rest in the same transaction.

        Returns:
            One `HSET key field value ...` per record that fits, then the ZADDs of their keys
            to the tier's and each agent's time index (scored by ts) and the SADD of their
            agents to the tier's agent set; and entry id -> why, for each record that does not
            fit (vector shape, TAG value, number), naming the record and the field.
        """
        settings = self._tier(tier)
        name, prefix = settings.name, self.keys.record_prefix(settings.name)
        vectors = _batch_vector_bytes(settings, records)
        rebuilt = _batch_reconstruction_bytes(records)
        good_tags: set[str] = set()
        hsets: list[Command] = []
        refused: dict[str, str] = {}
        scores: dict[str, int] = {}
        by_agent: defaultdict[str, dict[str, int]] = defaultdict(dict)
        for i, record in enumerate(records):
            converted = (
                None if vectors is None else vectors[i],
                None if rebuilt is None else rebuilt[i],
            )
            try:
                command = _hset_command(prefix, settings, record, converted, good_tags)
            except ValueError as e:
                refused[record.entry_id] = str(e)
                continue
            hsets.append(command)
            scores[command[1]] = by_agent[record.agent_id][command[1]] = int(record.ts)
        if not scores:
            return hsets, refused
        indexes = [
            zadd(self.keys.time_index(name), scores),
            *(zadd(self.keys.agent_time_index(name, a), s) for a, s in by_agent.items()),
        ]
        # The count rule of consolidation finds agents here; it prunes the emptied ones.
        return [*hsets, *indexes, ("SADD", self.keys.agents(name), *by_agent)], refused

    def delete_commands(self, tier: str, records: Sequence[MemoryRecord]) -> list[Command]:
        """The commands that remove `records`' hashes and their members of both time indexes
        (only their entry_id and agent_id are read)."""
        settings = self._tier(tier)
        by_agent: defaultdict[str, list[str]] = defaultdict(list)
        for record in records:
            by_agent[record.agent_id].append(self.keys.record(settings.name, record.entry_id))
        if not by_agent:
            return []
        keys = [key for agent_keys in by_agent.values() for key in agent_keys]
        return [
            ("DEL", *keys),
            ("ZREM", self.keys.time_index(settings.name), *keys),
            *(
                ("ZREM", self.keys.agent_time_index(settings.name, agent_id), *agent_keys)
                for agent_id, agent_keys in by_agent.items()
            ),
        ]

    def write(self, tier: str, records: Sequence[MemoryRecord]) -> None:
        """Write `records` and their time index entries in one MULTI/EXEC.

        Raises:
            ValueError: a record does not fit the tier (the first one's reason); nothing is
                written.
            StoreError: Redis failed.
        """
        commands, refused = self.encode_records(tier, records)
        if refused:
            raise ValueError(next(iter(refused.values())))
        with self.client.pipeline(transaction=True) as pipe:
            for command in commands:
                pipe.execute_command(*command)
            try:
                pipe.execute()
            except redis.RedisError as e:
                first = self.key(tier, records[0].entry_id) if records else "-"
                raise StoreError(
                    f"write of {len(records)} {tier} records ({first}, ...) failed: "
                    f"{failure_text(e, self.keys)}"
                ) from e

    # -- reads ---------------------------------------------------------------------------------

    def read(self, tier: str, keys: Sequence[str]) -> list[MemoryRecord]:
        """The records under `keys`, in order, vectors as float32; missing keys are skipped.

        Raises:
            ValueError: a key is not a record key of `tier`.
            StoreError: Redis failed, or a record hash is incomplete or corrupt.
        """
        prefix = self.keys.record_prefix(self._tier(tier).name)
        for key in keys:
            if not key.startswith(prefix):
                raise ValueError(f"{key!r} is not a {tier} record key ({prefix}...)")
        records, _, problems = self.read_batch(tier, keys)
        for key, problem in problems.items():
            raise StoreError(f"record {key} is {problem}")
        return records

    def read_batch(
        self, tier: str, keys: Sequence[str]
    ) -> tuple[list[MemoryRecord], Vector, dict[str, str]]:
        """The records under `keys` of `tier`, and what is wrong with those that are not.

        One HMGET per key in one round trip (resp.py) and one np.frombuffer over the joined
        vector bytes instead of a dict and an array per record: consolidation reads its
        batches here.

        Returns:
            The records that exist, in the order of `keys`, attributes included; the (N, dim)
            float32 matrix of their vectors (each record's vector is its row); and key -> why
            ("incomplete: no ...", "corrupt: ...") for each hash that is not a whole record.
            A key whose hash is gone is in neither.

        Raises:
            StoreError: Redis failed.
        """
        settings = self._tier(tier)
        names = [attribute.name for attribute in self.record_attributes]
        try:
            # raw replies: the vector is binary even when the client decodes replies
            rows = resp.round_trip(
                self.client, [("HMGET", k, *RECORD_FIELDS, *names) for k in keys]
            )
            resp.first_error(rows)
        except redis.RedisError as e:
            raise StoreError(
                f"reading {len(keys)} {tier} records failed: {failure_text(e, self.keys)}"
            ) from e
        width = settings.dim * np.dtype(settings.datatype).itemsize
        problems: dict[str, str] = {}
        whole: list[tuple[str, list[Any]]] = []
        for key, row in zip(keys, rows, strict=True):
            if None in row[:_STATE] or len(row[_VECTOR]) != width:
                problem = _row_problem(row, width)
                if problem:
                    problems[key] = problem
                continue  # else vanished: the hash is gone
            whole.append((key, row))
        matrix = _vector_matrix(settings, [row[_VECTOR] for _, row in whole])
        start = len(self.keys.record_prefix(settings.name))
        rebuilt = _reconstructions([row[_RECONSTRUCTION] for _, row in whole])
        records: list[MemoryRecord] = []
        decoded: list[int] = []
        for i, (key, row) in enumerate(whole):
            try:
                records.append(_decode_row(key[start:], row, (matrix[i], rebuilt[i]), names))
            except ValueError as e:
                problems[key] = f"corrupt: {e}"
            else:
                decoded.append(i)
        return records, matrix if len(decoded) == len(whole) else matrix[decoded], problems

    def count(self, tier: str, agent_id: str | None = None) -> int:
        """Records in one tier (or of one agent there): ZCARD of the time index.

        The time index is written in the same transaction as the records, so it is exact and
        O(1); FT.INFO num_docs is neither per agent nor free of indexing failures.
        """
        name = self._tier(tier).name
        key = (
            self.keys.time_index(name)
            if agent_id is None
            else self.keys.agent_time_index(name, agent_id)
        )
        try:
            return int(self.client.zcard(key))
        except redis.RedisError as e:
            raise StoreError(f"ZCARD {key} failed: {failure_text(e, self.keys)}") from e

    def oldest_keys(
        self, tier: str, limit: int, *, agent_id: str | None = None, max_ts: int | None = None
    ) -> list[str]:
        """Up to `limit` record keys of a tier (or of one agent), oldest first, ts <= max_ts."""
        name = self._tier(tier).name
        key = (
            self.keys.time_index(name)
            if agent_id is None
            else self.keys.agent_time_index(name, agent_id)
        )
        high = "+inf" if max_ts is None else max_ts
        try:
            members = self.client.zrangebyscore(key, "-inf", high, start=0, num=limit)
        except redis.RedisError as e:
            raise StoreError(f"ZRANGEBYSCORE {key} failed: {failure_text(e, self.keys)}") from e
        return [text(m) for m in members]

    # -- search --------------------------------------------------------------------------------

    def search(
        self,
        tier: str,
        vector: npt.ArrayLike,
        k: int = 10,
        *,
        agent_id: str | None = None,
        step_range: tuple[int, int] | None = None,
        filters: FilterExpression | None = None,
        return_vectors: bool = False,
    ) -> list[Hit]:
        """The `k` records of `tier` nearest to `vector`, nearest first.

        Args:
            vector: (dim,) query vector of the tier.
            agent_id: only this agent's records (an exact TAG match, escaped).
            step_range: only records with lo <= step <= hi.
            filters: any further redisvl filter, ANDed with the above.
            return_vectors: fill `Hit.vector` (float32).

        Raises:
            ValueError: bad vector, k, agent_id or step_range.
            StoreError: the query failed.
        """
        settings = self._tier(tier)
        where = _filter(agent_id, step_range, filters)
        returned = [*TAG_FIELDS, *NUMERIC_FIELDS, STATE_FIELD]
        if return_vectors:
            returned.append(VECTOR_FIELD)
        command = self._knn_command(settings, vector, k, where, returned)
        rows = self._search({tier: command}, f"KNN on {self.keys.index(tier)} ({where})")[tier]
        if agent_id is not None:
            rows = _own(agent_id, rows)
        try:
            distances = [float(fields[_DISTANCE_NAME]) for _, fields in rows]
        except (KeyError, ValueError) as e:
            raise StoreError(f"search hits are incomplete or corrupt: {e!r}") from e
        order = sorted(range(len(rows)), key=distances.__getitem__)
        return _decoded_hits(
            settings, self.keys, [(text(rows[i][0]), rows[i][1], distances[i]) for i in order]
        )

    def recall_round(
        self,
        vectors: Mapping[str, npt.ArrayLike],
        n: int,
        choose: Callable[[str, Candidates], list[Candidate]],
        *,
        meanwhile: Callable[[], object] | None = None,
        agent_id: str,
        exact: Collection[str] = (),
        version: str = "",
        step_range: tuple[int, int] | None = None,
        filters: FilterExpression | None = None,
    ) -> dict[str, list[Hit]]:
        """Per tier of `vectors`: the `n` records of one agent nearest to its vector, lean, as
        Candidates; `choose(tier, candidates)` picks and orders the ones to return; their full
        hits, in that order. One round (`_round`): `meanwhile()` runs while Redis answers the
        first tier (work of the caller's that needs no reply; it may run again if the round
        is retried).

        A candidate of a tier in `exact` carries its state's features if the model `version`
        wrote them; one of a tier in RECONSTRUCTED_TIERS its stored reconstruction (written
        by the model of its vector, whichever that was); failing that, its parsed state, or,
        with no state, its vector (read on the way). Other candidates carry their vectors.
        `choose` gets a tier's candidates as columns (`Candidates`).

        Candidates are not read with their agent_id (that field cost Redis ~170 us per tier of
        50); the hits are, and one of another agent (were the TAG filter ever to widen) is
        logged and left out, so none is ever returned.

        Raises:
            ValueError: bad vector, n, agent_id or step_range.
            StoreError: Redis failed, or a record is corrupt.
        """
        where = _filter(agent_id, step_range, filters)
        measures = {tier: _measure(tier, tier in exact) for tier in vectors}
        commands = {
            tier: self._knn_command(
                self._tier(tier),
                vector,
                n,
                where,
                (FEATURES_FIELD, "model_version") if tier in exact else (measures[tier],),
            )
            for tier, vector in vectors.items()
        }

        def pick(tier: str, rows: list[_Row], conversation: Conversation) -> list[Candidate]:
            settings = self._tier(tier)
            found = _decode_candidates(settings, rows, measures[tier], version)
            return choose(tier, self._measurable(settings, found, conversation))

        return self._round(commands, pick, f"KNN ({where})", agent_id, meanwhile)

    def attribute_round(
        self,
        tiers: Sequence[str],
        agent_id: str,
        names: Sequence[str],
        choose: Callable[[str, list[tuple[str, dict[str, str]]]], list[Candidate]],
        *,
        step_range: tuple[int, int] | None = None,
        filters: FilterExpression | None = None,
        limit: int = MAX_ATTRIBUTE_ROWS,
    ) -> dict[str, list[Hit]]:
        """Per tier, every record of one agent that matches the filters (at most `limit`) as
        (key, {attribute: value}) of the attributes `names` it has; `choose(tier, rows)` picks
        and orders the ones to return; their full hits, in that order. One round (`_round`).

        Raises:
            ValueError: a bad agent_id or step_range.
            StoreError: Redis failed, or a hit is corrupt.
        """
        where = str(_filter(agent_id, step_range, filters))
        returned = ["agent_id", *names]
        commands: dict[str, Command] = {}
        for tier in tiers:
            commands[tier] = (
                "FT.SEARCH", self.keys.index(self._tier(tier).name), where,
                "RETURN", len(returned), *returned, "LIMIT", 0, limit, "DIALECT", 2,
            )  # fmt: skip
        raw_names = [(name, name.encode()) for name in names]

        def pick(tier: str, rows: list[_Row], _: Conversation) -> list[Candidate]:
            records = [
                (text(key), {name: text(fields[raw]) for name, raw in raw_names if raw in fields})
                for key, fields in _own(agent_id, rows)
            ]
            return choose(tier, records)

        return self._round(commands, pick, f"reading attributes ({where})", agent_id)

    def _round(
        self,
        commands: dict[str, Command],
        pick: Callable[[str, list[_Row], Conversation], list[Candidate]],
        label: str,
        agent_id: str,
        meanwhile: Callable[[], object] | None = None,
    ) -> dict[str, list[Hit]]:
        """Per tier: its search's rows, `pick`ed (the chosen candidates, in order), then the
        full hits of those, read through the index (INKEYS, as a user allowed to search but
        not to read records can); a record gone since the search is left out.

        One connection, Redis and Python working at once: each tier's rows are picked as its
        reply arrives, while Redis answers the next tier's search. Redis writes the replies
        of the commands it read together only after running them all (three KNNs sent
        together answered the first 1.7-1.8 ms after sending, one sent alone 0.7-0.85 ms;
        100k records a tier), so the searches go one write apart: the first alone, then
        `meanwhile()` while Redis answers it and the second after it (one search then waits
        queued behind the one Redis runs), or with nothing to do meanwhile the second once the
        first has answered; each later one as a reply comes in. For the same reason the
        chosen hits are asked for once every search has answered (those chosen so far while
        the last tier is picked): sent sooner, they would hold back a reply.
        """

        def talk(conversation: Conversation) -> dict[str, list[Hit]]:
            unsent = list(commands)
            searches: dict[str, int] = {}

            def send_next() -> None:
                if unsent:
                    tier = unsent.pop(0)
                    [searches[tier]] = conversation.send([commands[tier]])

            due: dict[str, Command] = {}
            reads: dict[str, int] = {}

            def send_reads() -> None:
                reads.update(zip(due, conversation.send(list(due.values())), strict=True))
                due.clear()

            send_next()
            if meanwhile is not None:
                meanwhile()
                send_next()
            chosen: dict[str, list[Candidate]] = {}
            last = next(reversed(commands), None)
            for tier in commands:
                reply = conversation.reply(searches[tier])
                send_next()
                if tier == last:
                    send_reads()
                chosen[tier] = pick(tier, _search_rows(self._ok(reply, label)), conversation)
                keys = [c.key for c in chosen[tier]]
                if keys:
                    due[tier] = self._read_command(tier, keys, HIT_FIELDS)
            send_reads()
            return {
                tier: _hits_of(
                    self._tier(tier),
                    self.keys,
                    candidates,
                    _own(
                        agent_id,
                        _search_rows(self._ok(conversation.reply(reads[tier]), "reading records")),
                    )
                    if tier in reads
                    else [],
                )
                for tier, candidates in chosen.items()
            }

        return self._converse(talk, label)

    def _measurable(
        self, tier: TierSettings, found: Candidates, conversation: Conversation
    ) -> Candidates:
        """`found`, each candidate with something to measure: those with no features,
        reconstruction or vector (records stored before reconstructions were) get their
        record's parsed state, or else its vector (one more read; a record gone meanwhile
        stays without).

        Raises:
            StoreError: a record has neither state nor vector.
        """
        unmeasured = found.unmeasured()
        if not unmeasured:
            return found
        keys = [text(found.keys[i]) for i in unmeasured]
        [ticket] = conversation.send(
            [self._read_command(tier.name, keys, [STATE_FIELD, VECTOR_FIELD])]
        )
        rows = _search_rows(self._ok(conversation.reply(ticket), "reading records"))
        records = {text(key): fields for key, fields in rows}
        states: dict[int, Any] = {}
        raw_vectors: list[bytes | None] = [None] * len(found)
        for i, key in zip(unmeasured, keys, strict=True):
            if key not in records:
                continue
            fields = records[key]
            if fields.get(_STATE_NAME) is not None:
                states[i] = parsed_state(fields[_STATE_NAME])
            elif fields.get(_VECTOR_NAME) is not None:
                raw_vectors[i] = fields[_VECTOR_NAME]
            else:
                raise StoreError(f"search hit {key} is incomplete: no {VECTOR_FIELD}")
        try:
            vectors = _vector_rows(tier, found.keys, raw_vectors)
        except ValueError as e:
            raise StoreError(f"search hits are incomplete or corrupt: {e}") from e
        return replace(found, states=states, vectors=[*found.vectors, *vectors])

    def _read_command(
        self, tier: str, keys: Sequence[str], fields: Sequence[str]
    ) -> tuple[Any, ...]:
        """FT.SEARCH reading `fields` of those of a tier's `keys` that exist (INKEYS): records
        read through the index, as a user allowed to search but not to read keys can."""
        return (
            "FT.SEARCH", self.keys.index(tier), "*", "INKEYS", len(keys), *keys,
            "RETURN", len(fields), *fields, "LIMIT", 0, len(keys), "DIALECT", 2,
        )  # fmt: skip

    def _search(self, commands: Mapping[str, tuple[Any, ...]], label: str) -> dict[str, list[_Row]]:
        """Tier -> the rows of its FT.SEARCH command, all sent in one round trip."""

        def talk(conversation: Conversation) -> dict[str, list[_Row]]:
            tickets = conversation.send(list(commands.values()))
            return {
                tier: _search_rows(self._ok(conversation.reply(ticket), label))
                for tier, ticket in zip(commands, tickets, strict=True)
            }

        return self._converse(talk, label)

    def _converse(self, talk: Callable[[Conversation], _T], label: str) -> _T:
        """`talk` over one pooled connection (discarded if anything fails midway, as replies
        may be left unread). Connection errors are retried as the client's retry policy says;
        if an index is missing (dropped, or Redis restored without it), the indexes are
        recreated (over the existing records) and `talk` runs once more.

        Raises:
            StoreError: Redis failed (`label` says doing what), or `talk` raised it.
        """

        def attempt() -> _T:
            with resp.conversation(self.client) as conversation:
                return talk(conversation)

        def retried() -> _T:
            retry = self.client.get_retry()
            try:
                return attempt() if retry is None else retry.call_with_retry(attempt, _no_op)
            except redis.RedisError as e:
                raise StoreError(f"{label} failed: {failure_text(e, self.keys)}") from e

        try:
            return retried()
        except StoreError as e:
            if not missing_index(e):
                raise
        log.warning("a tier index is missing; recreating the tier indexes")
        self.ensure_indexes()
        return retried()

    def _ok(self, reply: Any, label: str) -> Any:
        """`reply`, unless it is an error reply: then StoreError naming what failed."""
        if isinstance(reply, Exception):
            raise StoreError(f"{label} failed: {failure_text(reply, self.keys)}") from reply
        return reply

    def _knn_command(
        self,
        tier: TierSettings,
        vector: npt.ArrayLike,
        n: int,
        where: FilterExpression | None,
        fields: Sequence[str],
    ) -> tuple[Any, ...]:
        """FT.SEARCH for the `n` records of a tier nearest to `vector` that match `where`, with
        `fields` and the distance. Built here rather than through redisvl's VectorQuery, and
        without its SORTBY: KNN already yields the n nearest, which callers order themselves;
        the sort cost Redis 0.15 ms per query (100k records, 50 nearest, one agent).
        """
        if n < 1:
            raise ValueError(f"k={n}: must be at least 1")
        blob = _vector_bytes(tier, vector, "query vector")
        rendered = "*" if where is None else str(where)
        prefilter = "*" if rendered == "*" else f"({rendered})"
        returned = [*fields, _DISTANCE]
        return (
            "FT.SEARCH", self.keys.index(tier.name),
            f"{prefilter}=>[KNN {n} @{VECTOR_FIELD} $vector AS {_DISTANCE}]",
            "RETURN", len(returned), *returned, "LIMIT", 0, n,
            "PARAMS", 2, "vector", blob, "DIALECT", 2,
        )  # fmt: skip

    def _tier(self, tier: str) -> TierSettings:
        try:
            return self.tiers[tier]
        except KeyError:
            raise ValueError(f"unknown tier {tier!r}: expected one of {', '.join(TIERS)}") from None


def _no_op(_: Exception) -> None:
    """A retry's failure hook with nothing to do: `attempt` already discarded the connection."""


# -- helpers: client, errors, FT.INFO ----------------------------------------------------------


def failure_text(error: BaseException, keys: Keys) -> str:
    """`error`'s text, with what the user needs where Redis's own text does not say it: for an
    ACL refusal (NOPERM, also as a cause), Redis names neither the user's key patterns nor,
    for a key, which key; for a cluster redirection (MOVED, ASK, CROSSSLOT), a bare slot and
    address."""
    causes: list[BaseException] = []
    cause: BaseException | None = error
    while cause is not None:
        causes.append(cause)
        cause = cause.__cause__
    if any(_refused_by_acl(c) for c in causes):
        return (
            f"{error} (Redis ACL: the user in {env_var('redis_url')} needs the key pattern "
            f"~{keys.prefix}:* and the commands of the ACL SETUSER line in the README, Security)"
        )
    if any(_redirected_by_cluster(c) for c in causes) and keys.tag:
        return (
            f"{error} (bucket {keys.tag}'s hash slot is being moved to another node of the "
            "cluster, or has been: its memories may be on two nodes, so nothing is answered "
            "from a part of them; retry once the reshard is done)"
        )
    if any(_redirected_by_cluster(c) for c in causes):
        return (
            f"{error} (the Redis at {env_var('redis_url')} is a node of a Redis Cluster that "
            f"does not hold this key's hash slot: with {env_var('buckets')}=1 memory-tiers "
            f"runs on one Redis, or a primary with replicas; on a cluster set "
            f"{env_var('buckets')} (README, 'Running on a Redis Cluster'))"
        )
    return str(error)


def _refused_by_acl(error: BaseException) -> bool:
    # A refusal inside MULTI/EXEC or a pipeline may come back as another ResponseError type.
    return isinstance(error, NoPermissionError) or (
        isinstance(error, redis.ResponseError) and "no permissions" in str(error).lower()
    )


def _redirected_by_cluster(error: BaseException) -> bool:
    # redis-py's MovedError and AskError keep only "<slot> <host:port>" of Redis's reply.
    return isinstance(error, (AskError, ClusterCrossSlotError)) or (
        isinstance(error, redis.ResponseError) and str(error).startswith("CROSSSLOT")
    )


def _check_client(client: redis.Redis) -> None:
    kwargs = getattr(getattr(client, "connection_pool", None), "connection_kwargs", {})
    protocol = kwargs.get("protocol")
    if str(protocol) == "3" or not kwargs.get("legacy_responses", True):
        raise ConfigError(
            f"TierStore needs a client with protocol=2 or redis-py's default, got protocol="
            f"{protocol}: redisvl cannot parse native RESP3 FT.SEARCH replies"
        )


def _lookup(reply: Any, key: str) -> Any:
    """`key`'s value in a RESP3 map or a RESP2 flat key/value list (flags may trail), else None."""
    if isinstance(reply, dict):
        return next((v for k, v in reply.items() if text(k).lower() == key), None)
    if isinstance(reply, (list, tuple)):
        for i in range(0, len(reply) - 1, 2):
            if text(reply[i]).lower() == key:
                return reply[i + 1]
    return None


def _index_problems(keys: Keys, tier: TierSettings, info: Any) -> list[str]:
    """What in an FT.INFO reply differs from the index the store declares for `tier`."""
    problems = []
    prefixes = [text(p) for p in _lookup(_lookup(info, "index_definition"), "prefixes") or []]
    if prefixes != [keys.record_prefix(tier.name)]:
        problems.append(f"prefixes {prefixes}, the store writes {keys.record_prefix(tier.name)!r}")
    attributes = {text(_lookup(a, "attribute")): a for a in _lookup(info, "attributes") or []}
    expected = {**dict.fromkeys(TAG_FIELDS, "TAG"), **dict.fromkeys(NUMERIC_FIELDS, "NUMERIC")}
    for name, kind in {**expected, VECTOR_FIELD: "VECTOR"}.items():
        actual = text(_lookup(attributes.get(name), "type")).upper()
        if actual != kind:
            problems.append(f"field {name} of type {actual}, the store needs {kind}")
    vec = attributes.get(VECTOR_FIELD)
    if vec is None:
        return problems
    settings_say = [
        ("DIM", "dim", str(tier.dim), f"{tier.name}_dim"),
        ("ALGORITHM", "algorithm", tier.algorithm, f"{tier.name}_algorithm"),
        ("TYPE", "data_type", tier.datatype, f"{tier.name}_datatype"),
    ]
    for label, key, wanted, setting in settings_say:
        actual = text(_lookup(vec, key)).upper()
        if actual != wanted.upper():
            problems.append(
                f"{VECTOR_FIELD} {label} {actual}, settings say {wanted} ({env_var(setting)})"
            )
    metric = text(_lookup(vec, "distance_metric")).upper()
    if metric != DISTANCE_METRIC:
        problems.append(
            f"{VECTOR_FIELD} DISTANCE_METRIC {metric}, the store needs {DISTANCE_METRIC}"
        )
    return problems


# -- helpers: records, vectors, filters --------------------------------------------------------


def _vector_bytes(tier: TierSettings, vector: npt.ArrayLike, what: str) -> bytes:
    """`vector` as bytes of the tier's datatype, after checking its shape and values."""
    try:
        array = np.asarray(vector, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what} is not a numeric vector: {e}") from None
    if array.shape != (tier.dim,):
        raise ValueError(f"{what} has shape {array.shape}, tier {tier.name} needs ({tier.dim},)")
    with np.errstate(over="ignore"):  # an overflow to inf is refused just below
        stored = array.astype(_DTYPES[tier.datatype])
    if not np.isfinite(stored).all():
        raise ValueError(f"{what} holds NaN or infinity (as {tier.datatype})")
    return stored.tobytes()


def _hset_command(
    prefix: str,
    tier: TierSettings,
    record: MemoryRecord,
    converted: tuple[bytes | None, bytes | None],
    good_tags: set[str],
) -> Command:
    """The record's flat `HSET key field value ...` (RECORD_FIELDS, then its attributes).

    Args:
        converted: the record's vector and reconstruction as stored, where the batch's were
            converted together (`_batch_vector_bytes`, `_batch_reconstruction_bytes`); each
            None: convert and check it here.
        good_tags: TAG values already checked in this batch; the record's good ones join them,
            so each distinct value is checked once per batch.

    Raises:
        ValueError: the record does not fit the tier: the first field that does not, in field
            order, naming the record and the field.
    """
    entry_id = record.entry_id
    if not isinstance(entry_id, str) or not entry_id:
        raise ValueError(f"record {entry_id!r}: entry_id must be a non-empty string")
    tags = (record.agent_id, record.agent_type, record.model_version)
    _check_tags(entry_id, tags, good_tags)
    importance, step, ts = record.importance, int(record.step), int(record.ts)
    if not math.isfinite(importance):
        raise ValueError(f"record {entry_id!r}: importance {importance!r} must be finite")
    problem = integer_problem("step", step) or integer_problem("ts", ts)
    if problem:
        # Redis would round it, fail to index it, or fail the time index's ZADD.
        raise ValueError(f"record {entry_id!r}: {problem}")
    vector, rebuilt = converted
    if vector is None:
        vector = _vector_bytes(tier, record.vector, f"record {entry_id!r} vector")
    # RECORD_FIELDS up to the state, spelled out: 10x faster than zipping names and values.
    command: Command = (
        "HSET", prefix + entry_id,
        "agent_id", tags[0], "agent_type", tags[1], "model_version", tags[2],
        "step", step, "ts", ts, "importance", float(importance),
        VECTOR_FIELD, vector,
    )  # fmt: skip
    if record.state_json is not None:
        command += (STATE_FIELD, record.state_json)
        if record.features is not None:
            command += (FEATURES_FIELD, _features_bytes(record))
    if record.reconstruction is not None:
        command += (RECONSTRUCTION_FIELD, rebuilt or _reconstruction_bytes(record))
    for name, value in record.attributes.items():
        command += (name, value)
    return command


def _check_tags(entry_id: str, tags: tuple[str, str, str], good_tags: set[str]) -> None:
    """Checks a record's TAG values (in TAG_FIELDS order) that this batch has not seen yet,
    adding the good ones to `good_tags`: a batch's records mostly share their tags.

    Raises:
        ValueError: the first tag that Redis could not index as written, naming the record.
    """
    for name, tag in zip(TAG_FIELDS, tags, strict=True):
        if not (isinstance(tag, str) and tag in good_tags):
            problem = tag_problem(tag)
            if problem:
                raise ValueError(f"record {entry_id!r}: {name} {tag!r} {problem}")
            good_tags.add(tag)


def _features_bytes(record: MemoryRecord) -> bytes:
    """A record's features as stored: float32 bytes of a finite 1-D vector.

    Raises:
        ValueError: they are not one, naming the record.
    """
    features = np.asarray(record.features, dtype=np.float32)
    if features.ndim != 1 or not np.isfinite(features).all():
        raise ValueError(
            f"record {record.entry_id!r}: features must be a finite 1-D vector, "
            f"got shape {features.shape}"
        )
    return features.tobytes()


def _reconstruction_bytes(record: MemoryRecord) -> bytes:
    """A record's reconstruction as stored: one byte per feature, round(x * 255).

    Raises:
        ValueError: it is not a finite 1-D vector, naming the record.
    """
    row = np.asarray(record.reconstruction, dtype=np.float32)
    if row.ndim != 1 or not np.isfinite(row).all():
        raise ValueError(
            f"record {record.entry_id!r}: reconstruction must be a finite 1-D vector, "
            f"got shape {row.shape}"
        )
    return _quantized(row).tobytes()


def _batch_reconstruction_bytes(records: Sequence[MemoryRecord]) -> list[bytes | None] | None:
    """Every record's reconstruction as `_reconstruction_bytes` makes it (None for a record
    without one), converted together; None if one is not finite or they do not stack."""
    present = [i for i, record in enumerate(records) if record.reconstruction is not None]
    stored: list[bytes | None] = [None] * len(records)
    if not present:
        return stored
    try:
        rows = np.asarray([records[i].reconstruction for i in present], dtype=np.float32)
    except (TypeError, ValueError):
        return None
    if rows.ndim != 2 or not np.isfinite(rows).all():
        return None
    quantized = _quantized(rows)
    for row, i in enumerate(present):
        stored[i] = quantized[row].tobytes()
    return stored


def _quantized(rows: Vector) -> npt.NDArray[np.uint8]:
    """Features in [0, 1] as stored in RECONSTRUCTION_FIELD: round(x * 255), as uint8."""
    scaled = np.clip(rows, 0.0, 1.0) * np.float32(255)
    quantized: npt.NDArray[np.uint8] = np.rint(scaled, out=scaled).astype(np.uint8)
    return quantized


def _reconstructions(raws: Sequence[bytes | None]) -> list[Vector | None]:
    """Stored reconstructions as float32 features in [0, 1] (None for an absent or empty
    one), those of one width converted together."""
    rebuilt: list[Vector | None] = [None] * len(raws)
    for rows in _reconstruction_rows(raws):
        for i, row in zip(rows.positions, rows.values, strict=True):
            rebuilt[i] = row
    return rebuilt


def _batch_vector_bytes(tier: TierSettings, records: Sequence[MemoryRecord]) -> list[bytes] | None:
    """Every record's vector as `_vector_bytes` makes it, converted together; None if any is
    not a finite (dim,) vector (or the vectors do not stack)."""
    if not records:
        return []
    try:
        array = np.asarray([record.vector for record in records], dtype=np.float32)
    except (TypeError, ValueError):
        return None
    if array.shape != (len(records), tier.dim):
        return None
    with np.errstate(over="ignore"):
        stored = array.astype(_DTYPES[tier.datatype])
    if not np.isfinite(stored).all():
        return None
    return [row.tobytes() for row in stored]


def _decode_row(
    entry_id: str,
    row: Sequence[Any],
    decoded: tuple[Vector, Vector | None],
    attributes: Sequence[str] = (),
) -> MemoryRecord:
    """A record from its hash's values (RECORD_FIELDS, then the `attributes`; bytes, None where
    absent), its vector and its reconstruction (`decoded`: the caller decodes a batch's
    together).

    Raises:
        ValueError: a field every record has is missing, or a number is not one.
    """
    state, features = row[_STATE], row[_FEATURES]
    vector, reconstruction = decoded
    return MemoryRecord(
        entry_id=entry_id,
        **_decode_fields(row),
        vector=vector,
        state_json=None if state is None else text(state),
        features=np.frombuffer(features, dtype=np.float32) if features else None,
        reconstruction=reconstruction,
        attributes={
            name: text(value)
            for name, value in zip(attributes, row[len(RECORD_FIELDS) :], strict=True)
            if value is not None
        },
    )


def _decode_fields(row: Sequence[Any]) -> dict[str, Any]:
    """The TAG and NUMERIC fields of a record's values (RECORD_FIELDS order), by name: what a
    record and a search hit both carry.

    Raises:
        ValueError: one is missing, or a number is not one.
    """
    problem = _incomplete(row, RECORD_FIELDS[:_VECTOR])
    if problem:
        raise ValueError(problem)
    agent_id, agent_type, version, step, ts, importance = row[:_VECTOR]
    return {
        "agent_id": text(agent_id), "agent_type": text(agent_type), "model_version": text(version),
        "step": int(step), "ts": int(ts), "importance": float(importance),
    }  # fmt: skip


def _row_problem(row: Sequence[Any], width: int) -> str | None:
    """Why an HMGET row (RECORD_FIELDS order) is not a record; None when its hash is just gone."""
    if all(value is None for value in row):
        return None
    incomplete = _incomplete(row, RECORD_FIELDS[:_STATE])
    if incomplete:
        return incomplete
    return f"corrupt: {VECTOR_FIELD} has {len(row[_VECTOR])} bytes, {width} expected"


def _incomplete(row: Sequence[Any], required: Sequence[str]) -> str | None:
    """'incomplete: no ...' naming the `required` fields (the first of RECORD_FIELDS) missing
    from `row`, or None."""
    missing = [name for name, value in zip(required, row, strict=False) if value is None]
    return f"incomplete: no {', '.join(missing)}" if missing else None


def _search_rows(reply: Any) -> list[_Row]:
    """FT.SEARCH's documents as (key, {field name: value}), all bytes, from RESP2 or RESP3;
    as hiredis built them where it can (a recall reads 150 documents)."""
    if isinstance(reply, dict):  # RESP3: {total_results, results: [{id, extra_attributes}]}
        return [(doc[b"id"], doc[b"extra_attributes"]) for doc in reply[b"results"]]
    pairs = zip(reply[1::2], reply[2::2], strict=True)  # RESP2: [total, id, [f, v, ...], ...]
    return [(key, dict(zip(fields[::2], fields[1::2], strict=True))) for key, fields in pairs]


def _own(agent_id: str, rows: list[_Row]) -> list[_Row]:
    """`rows` of `agent_id` alone: never hand one agent another's memories, even if the TAG
    filter were to widen."""
    own = agent_id.encode()
    if all(fields.get(b"agent_id") == own for _, fields in rows):
        return rows
    leaked = [text(key) for key, fields in rows if fields.get(b"agent_id") != own]
    log.error("KNN for agent %r returned other agents' keys %s", agent_id, leaked[:5])
    return [(key, fields) for key, fields in rows if fields.get(b"agent_id") == own]


def _measure(tier: str, exact: bool) -> str:
    """The field recall measures a tier's candidates by: their states' features where `exact`,
    else their stored reconstructions where the tier keeps them, else their vectors."""
    if exact:
        return FEATURES_FIELD
    return RECONSTRUCTION_FIELD if tier in RECONSTRUCTED_TIERS else VECTOR_FIELD


def _decode_candidates(
    tier: TierSettings, rows: Sequence[_Row], measure: str, version: str
) -> Candidates:
    """Lean KNN rows as Candidates, with the field `measure` names where a row has it
    (FEATURES_FIELD: only features the model `version` wrote), converted together.

    Raises:
        StoreError: a row has no distance, or a field of the wrong size.
    """
    try:
        keys = [key for key, _ in rows]
        distances = np.array([float(fields[_DISTANCE_NAME]) for _, fields in rows])
        raws = [fields.get(measure.encode()) for _, fields in rows]
        if measure == FEATURES_FIELD:
            trusted = version.encode()
            raws = [
                raw if fields.get(b"model_version") == trusted else None
                for raw, (_, fields) in zip(raws, rows, strict=True)
            ]
            return Candidates(keys, distances, features=_feature_rows(raws))
        if measure == RECONSTRUCTION_FIELD:
            return Candidates(keys, distances, reconstructions=_reconstruction_rows(raws))
        return Candidates(keys, distances, vectors=_vector_rows(tier, keys, raws))
    except (KeyError, ValueError) as e:
        raise StoreError(f"search hits are incomplete or corrupt: {e!r}") from e


def _rows_by_length(
    raws: Sequence[bytes | None], convert: Callable[[bytes, int], Vector]
) -> list[Rows]:
    """The non-empty `raws` as Rows, one per byte length: `convert(joined bytes, count)`
    gives the matrix of those rows."""
    positions: defaultdict[int, list[int]] = defaultdict(list)
    values: defaultdict[int, list[bytes]] = defaultdict(list)
    for i, raw in enumerate(raws):
        if raw:
            positions[len(raw)].append(i)
            values[len(raw)].append(raw)
    return [
        Rows(positions[length], convert(b"".join(same), len(same)))
        for length, same in values.items()
    ]


def _feature_rows(raws: Sequence[bytes | None]) -> list[Rows]:
    """Stored features (float32 bytes) as Rows.

    Raises:
        ValueError: one is not whole float32s.
    """
    return _rows_by_length(
        raws, lambda joined, count: np.frombuffer(joined, dtype=np.float32).reshape(count, -1)
    )


def _reconstruction_rows(raws: Sequence[bytes | None]) -> list[Rows]:
    """Stored reconstructions as Rows of float32 features in [0, 1]."""

    def dequantized(joined: bytes, count: int) -> Vector:
        quantized = np.frombuffer(joined, dtype=np.uint8).reshape(count, -1)
        rows: Vector = np.divide(quantized, np.float32(255), dtype=np.float32)
        return rows

    return _rows_by_length(raws, dequantized)


def _vector_rows(
    tier: TierSettings, keys: Sequence[bytes | str], raw_vectors: Sequence[bytes | None]
) -> list[Rows]:
    """The vectors present among `raw_vectors` (the rows of `keys`) as Rows, converted
    together; [] if none is.

    Raises:
        ValueError: one (an empty one too) is not the tier's size, naming its key.
    """
    present = [(i, raw) for i, raw in enumerate(raw_vectors) if raw is not None]
    if not present:
        return []
    size = tier.dim * np.dtype(_DTYPES[tier.datatype]).itemsize
    bad = next((i for i, raw in present if len(raw) != size), None)
    if bad is not None:
        raise ValueError(f"{text(keys[bad])}: {VECTOR_FIELD} is not {tier.dim} x {tier.datatype}")
    matrix = _vector_matrix(tier, [raw for _, raw in present])
    return [Rows([i for i, _ in present], matrix)]


def _vector_matrix(tier: TierSettings, raws: Sequence[bytes]) -> npt.NDArray[np.float32]:
    """Stored vectors of the tier's datatype and dim, each of the right size, as one
    (N, dim) float32 matrix: (N * dim,) joined, converted in one copy."""
    joined = np.frombuffer(b"".join(raws), dtype=_DTYPES[tier.datatype])
    return joined.reshape(len(raws), tier.dim).astype(np.float32)


def parsed_state(raw: bytes | str | None) -> Any:
    """A stored state JSON parsed; None (which featurizing refuses) if absent or it does not
    parse."""
    try:
        return None if raw is None else read_json(raw)
    except (ValueError, RecursionError):
        return None


def _hits_of(
    tier: TierSettings, keys: Keys, chosen: Sequence[Candidate], rows: Sequence[_Row]
) -> list[Hit]:
    """The chosen candidates' full hits from their records' `rows`, in the candidates' order,
    each at its KNN distance; a record gone since the search is left out."""
    found = {text(key): fields for key, fields in rows}
    return _decoded_hits(
        tier, keys, [(c.key, found[c.key], c.distance) for c in chosen if c.key in found]
    )


_HIT_NAMES = tuple(name.encode() for name in RECORD_FIELDS[:_VECTOR])


def _decoded_hits(
    tier: TierSettings, keys: Keys, found: Sequence[tuple[str, Mapping[bytes, Any], float]]
) -> list[Hit]:
    """Each (key, returned fields, distance) of `found` as a Hit (`_decode_hit`), their
    vectors converted together."""
    raw_vectors = [fields.get(_VECTOR_NAME) for _, fields, _ in found]
    try:
        vectors: dict[int, Vector] = {
            i: row
            for rows in _vector_rows(tier, [key for key, _, _ in found], raw_vectors)
            for i, row in zip(rows.positions, rows.values, strict=True)
        }
    except ValueError as e:
        raise StoreError(f"search hits are incomplete or corrupt: {e}") from e
    return [
        _decode_hit(tier, keys, key, fields, distance, vectors.get(i))
        for i, (key, fields, distance) in enumerate(found)
    ]


def _decode_hit(
    tier: TierSettings,
    keys: Keys,
    key: str,
    fields: Mapping[bytes, Any],
    distance: float,
    vector: Vector | None,
) -> Hit:
    """A record's returned `fields` (HIT_FIELDS, some maybe absent) and its decoded `vector`
    as a Hit at `distance`, read through the record codec (`_decode_fields`)."""
    try:
        state = fields.get(_STATE_NAME)
        return Hit(
            tier=tier.name,
            key=key,
            entry_id=key[len(keys.record_prefix(tier.name)) :],
            **_decode_fields([fields.get(name) for name in _HIT_NAMES]),
            distance=distance,
            vector=vector,
            state=None if state is None else read_json(state),
        )
    except (KeyError, ValueError) as e:
        raise StoreError(f"search hit {key} is incomplete or corrupt: {e!r}") from e


def _filter(
    agent_id: str | None, step_range: tuple[int, int] | None, extra: FilterExpression | None
) -> FilterExpression | None:
    parts: list[FilterExpression] = []
    if agent_id is not None:
        problem = tag_problem(agent_id)
        if problem:
            # Tag("agent_id") == "" would match every agent.
            raise ValueError(f"agent_id {agent_id!r} {problem}")
        parts.append(Tag("agent_id") == agent_id)
    if step_range is not None:
        low, high = step_range
        if low > high:
            raise ValueError(f"step_range {step_range}: low end above high end")
        parts.append(Num("step").between(int(low), int(high)))
    if extra is not None:
        parts.append(extra)
    return reduce(lambda a, b: a & b, parts) if parts else None
