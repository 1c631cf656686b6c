"""MemoryClient: what agents use. remember() XADDs states to the stream, recall() runs KNN.

Writes need only Redis: `remember` and `remember_many` validate each entry the way the daemon
will (protocol.encode_entry) and XADD it, so an agent that only writes never loads the model.
The embedding engine is loaded from `settings.model_file` on the first recall.

Recall decisions:
- A state query is featurized and encoded once, into every tier's space (one forward pass).
- A vector query is told apart by its length (STM/IM/LTM sizes). Lower tiers are reached
  exactly, through the bottleneck layers consolidation uses (`engine.compress`), so an STM
  vector finds its consolidated IM/LTM memories at tier distance 0. Higher tiers are reached
  approximately: the vector is decoded to features and those are encoded again.
- Over-fetch, then re-sort. Each tier's KNN returns `Settings.candidates(k)` memories (default
  max(5k, 50)); they are re-sorted by feature distance (mean squared difference, on the scale
  of the model's reconstruction MSE) and cut to k. A memory that keeps its raw state (STM
  always, IM and LTM with keep_state_after_stm) is measured exactly: its state's features
  against the query's (`MergedHit.exact`). Elsewhere its reconstruction (the stored vector
  decoded) is measured against a point halfway between the query's features and the query as
  the same tier reconstructs it: the reconstruction carries the decoder's error as the hit
  does, the features do not drift with it. Measured on held-out states (README, "Recall"),
  the midpoint beat either end alone at IM and LTM on simulated and schema-wide states
  (e.g. IM 0.902 vs 0.890 and 0.905, LTM 0.640 vs 0.637 and 0.596, simulated). For a vector
  query, whose features are only a reconstruction, every hit is measured that way against
  the query reconstructed at the hit's tier (a memory of the query vector itself is at 0).
- Redis and Python work at once (`TierStore.recall_round`, one connection): the tiers' KNNs
  are sent one write apart, so each tier is re-sorted as its reply arrives while Redis answers
  the next, and the k full hits of each are asked for once every KNN has answered. The query
  (and legacy candidates) go through the model in numpy (`engine.SMALL_BATCH`), where torch
  would spend more time dispatching than computing.
- The merged list ranks every tier's kept hits by the same distances: tier distances
  (`Hit.distance`, squared L2 in each tier's space) are not comparable across tiers.
- The first recall runs `TierStore.ensure_indexes`: missing indexes are created (a recall before
  anything was ingested finds nothing instead of failing), and indexes that do not match the
  settings are refused with ConfigError, as the daemon refuses them.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypedDict, TypeVar

import numpy as np
import numpy.typing as npt
import redis
from redis.exceptions import MovedError
from redisvl.query.filter import Tag

from .attributes import KIND, StateAttribute, state_attributes, where_filter
from .buckets import agent_keys
from .constants import TIERS
from .errors import ConfigError, EntryError, StoreError, error_chain, is_connection_error
from .features import feature_distances
from .protocol import KINDS, check_agent_id, encode_entry
from .resp import text
from .settings import Settings, env_var, redact_url
from .store import Candidate, Candidates, Hit, Rows, TierStore, failure_text

if TYPE_CHECKING:  # torch loads with the first recall, not with the client
    from .engine import EmbeddingEngine, Reconstruction

__all__ = [
    "ITEM_KEYS",
    "AgentMemory",
    "MemoryClient",
    "MemoryItem",
    "MergedHit",
    "Recall",
]

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]
_Chosen = dict[str, list[tuple[Candidate, float, bool]]]
"""Per tier, the candidates a recall keeps: (candidate, feature distance, measured exactly)."""
_T = TypeVar("_T")

SOCKET_TIMEOUT_S = 10.0
"""How long a client that opened its own connection waits for a Redis reply before failing
(StoreError); a recall takes milliseconds, so only a hung server or network waits this long."""

SOCKET_CONNECT_TIMEOUT_S = 5.0
"""How long such a client waits to connect to Redis before failing."""

ITEM_KEYS = ("agent_id", "state", "step", "ts", "kind", "importance")
"""Keys a `remember_many` item may have; agent_id and state are required."""


class _RequiredItem(TypedDict):
    agent_id: str
    state: Mapping[str, Any]


class MemoryItem(_RequiredItem, total=False):
    """One memory for `remember_many`; a plain dict with these keys works as well."""

    step: int | None
    ts: int | None
    kind: str
    importance: float | None


@dataclass(frozen=True)
class MergedHit:
    """One recalled memory and the feature distance it was ranked by."""

    tier: str
    hit: Hit
    feature_distance: float
    """Mean squared feature difference to the query: exact, or between reconstructions."""
    exact: bool
    """True: measured on the memory's raw state; False: on its reconstruction."""


@dataclass(frozen=True)
class Recall:
    """What one recall found: each tier's hits (nearest first) and one merged ranking."""

    agent_id: str
    query_tier: str | None
    """The tier a vector query was identified as; None for a state query."""
    reference: FloatArray
    """(input_dim,) the query's features: a state's extracted, a vector's decoded."""
    by_tier: dict[str, list[Hit]]
    """Searched tier -> its k hits, nearest first by feature distance (see `merged`)."""
    merged: list[MergedHit]
    """Hits of every searched tier, nearest first by feature distance, at most k."""

    def __len__(self) -> int:
        return len(self.merged)


@dataclass(frozen=True)
class _Query:
    tier: str | None
    reference: FloatArray  # (input_dim,)
    vectors: dict[str, FloatArray]  # tier -> (dim,)
    references: dict[str, FloatArray] = field(default_factory=dict)
    """tier -> `reconstructed_reference`, once computed."""

    def reconstructed_reference(self, engine: EmbeddingEngine, tier: str) -> FloatArray:
        """(input_dim,) what a tier's reconstructed memories are measured against (decoded
        once per tier).

        A vector query: itself as the tier reconstructs it (its memory is at 0). A state query:
        halfway between its features and that reconstruction; the sum of squared distances to
        both ranks as the distance to the midpoint, and ranked better than either alone.
        """
        if tier not in self.references:
            decoded = engine.decode(self.vectors[tier][None, :], tier)[0]
            if self.tier is None:
                decoded = ((decoded + self.reference) / 2).astype(np.float32)
            self.references[tier] = decoded
        return self.references[tier]


class MemoryClient:
    """Writes agent memories to the stream and recalls them from the tier indexes.

    Args:
        redis_client: a sync redis-py client; recall needs one that redisvl can read (any
            but `protocol=3`, see store.py).
        settings: key prefix, tier dimensions and index types, model path.
        engine: an embedding engine to use; default: loaded from `settings.model_file` on
            the first recall, checked against the settings' dimensions.

    Raises:
        ConfigError: `engine`'s dimensions differ from the settings'.
    """

    def __init__(
        self,
        redis_client: redis.Redis | redis.RedisCluster,
        settings: Settings,
        engine: EmbeddingEngine | None = None,
    ) -> None:
        self.redis = redis_client
        self.settings = settings
        self.keys = settings.keys
        self.dims = {tier: settings.tier(tier).dim for tier in TIERS}
        if engine is not None:
            _check_engine_dims(engine, self.dims)
        self._engine = engine
        self._store: TierStore | None = None
        self._bucket_stores: dict[str, TierStore] = {}
        self._indexes_checked = False
        self._lock = threading.Lock()
        self._owns_client = False

    @classmethod
    def from_settings(cls, settings: Settings) -> MemoryClient:
        """A client on its own connection to `settings.redis_url`; close() closes it.

        Raises:
            ConfigError: redis_url is unset.
        """
        if not settings.redis_url:
            raise ConfigError(
                "MemoryClient needs settings.redis_url (MT_REDIS_URL): the Redis the daemon reads"
            )
        client = cls(connect(settings), settings)
        client._owns_client = True
        return client

    @classmethod
    def from_url(cls, url: str, **settings_overrides: Any) -> MemoryClient:
        """A client on `url`, with Settings defaults changed by keyword (`prefix="mt2"`)."""
        return cls.from_settings(Settings(redis_url=url, **settings_overrides))

    def close(self) -> None:
        """Close the connection if this client opened it."""
        if self._owns_client:
            self.redis.close()

    def __enter__(self) -> MemoryClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- lazy parts ----------------------------------------------------------------------------

    @property
    def engine(self) -> EmbeddingEngine:
        """The embedding engine, loaded from settings.model_file on first use.

        Raises:
            ModelError: the checkpoint is missing, unreadable or of other dimensions.
        """
        if self._engine is None:
            with self._lock:
                if self._engine is None:
                    self._engine = self._load_engine()
        return self._engine

    def _load_engine(self) -> EmbeddingEngine:
        from .engine import EmbeddingEngine  # torch is imported here, not by writers

        started = time.perf_counter()
        engine = EmbeddingEngine.from_checkpoint(
            self.settings.model_file, expect_dims=self.settings.dims
        )
        log.info(
            "loaded model %s from %s in %.2fs",
            engine.version,
            self.settings.model_file,
            time.perf_counter() - started,
        )
        return engine

    @property
    def store(self) -> TierStore:
        """The tier indexes, declaring the model's state attributes; built on first use (a
        writer never needs them), loading the model."""
        if self._store is None:
            self._store = TierStore(self.one_redis, self.settings, self.engine.schema)
        return self._store

    @property
    def one_redis(self) -> redis.Redis:
        """The client's Redis, for what runs on one Redis only (not yet on a cluster).

        Raises:
            ConfigError: the client is a cluster's.
        """
        if isinstance(self.redis, redis.RedisCluster):
            raise ConfigError(
                "this works on one Redis, not yet on a Redis Cluster (buckets: recall and "
                "remember do)"
            )
        return self.redis

    def _ready_store(self) -> TierStore:
        store = self.store
        if not self._indexes_checked:
            store.ensure_indexes()
            self._indexes_checked = True
        return store

    def store_for(self, agent_id: str) -> TierStore:
        """The tier store that holds `agent_id`'s memories, its indexes made sure of: the
        deployment's on one Redis; with buckets (settings.buckets > 1), its bucket's, on the
        cluster node that owns the bucket's slot (`self.redis` a redis.RedisCluster)."""
        if self.settings.buckets == 1:
            return self._ready_store()
        keys = agent_keys(self.keys, agent_id, self.settings.buckets)
        store = self._bucket_stores.get(keys.tag)
        if store is None:
            if not isinstance(self.redis, redis.RedisCluster):
                raise ConfigError(
                    f"{env_var('buckets')}={self.settings.buckets} needs a redis.RedisCluster "
                    "client: the buckets live on the nodes of a Redis Cluster"
                )
            node = self.redis.get_node_from_key(keys.index("stm")).redis_connection
            store = TierStore(node, self.settings, self.engine.schema, keys)
            store.ensure_indexes()
            self._bucket_stores[keys.tag] = store
        return store

    def in_bucket(self, agent_id: str, work: Callable[[TierStore], _T]) -> _T:
        """`work(store)` on the store of `agent_id`'s memories (`store_for`).

        On a cluster, if the bucket's node has failed or no longer owns the bucket (a
        failover, a finished reshard), the bucket's node is found again and `work` runs once
        more there. While the bucket's slot is moving (a reshard under way) its memories lie
        on two nodes: then StoreError says so, and nothing is answered from a part of them.
        """
        store = self.store_for(agent_id)
        try:
            return work(store)
        except StoreError as e:
            if self.settings.buckets == 1 or not _node_changed(e):
                raise
            log.info("bucket %s: its node changed (%s); finding it again", store.keys.tag, e)
        assert isinstance(self.redis, redis.RedisCluster)
        self.redis.nodes_manager.initialize()
        self._bucket_stores.pop(store.keys.tag, None)
        return work(self.store_for(agent_id))

    def stream_of(self, agent_id: str) -> str:
        """The stream an agent's entries go to: its bucket's (buckets.py)."""
        return agent_keys(self.keys, agent_id, self.settings.buckets).stream

    # -- writes --------------------------------------------------------------------------------

    def remember(
        self,
        agent_id: str,
        state: Mapping[str, Any],
        step: int | None = None,
        ts: int | None = None,
        kind: str = "state",
        importance: float | None = None,
    ) -> str:
        """XADD one memory to the stream; returns its entry id.

        Raises:
            EntryError: the entry would be refused by the daemon; nothing was written.
            StoreError: Redis failed.
        """
        fields = encode_entry(agent_id, state, step, ts, kind, importance)
        stream = self.stream_of(agent_id)
        try:
            entry_id = self.redis.xadd(stream, fields)  # type: ignore[arg-type]
        except redis.RedisError as e:
            raise StoreError(
                f"XADD to {stream} for agent {agent_id!r} failed: {failure_text(e, self.keys)}"
            ) from e
        return text(entry_id)

    def remember_many(self, items: Iterable[Mapping[str, Any]]) -> list[str]:
        """XADD many memories in one pipelined round trip; returns their entry ids in order.

        Args:
            items: mappings (`MemoryItem`) with agent_id and state, and optionally step, ts,
                kind and importance.

        Raises:
            EntryError: an item is invalid ("item 3: ..."); the whole batch is checked before
                anything is written, so nothing was.
            StoreError: Redis failed.
        """
        entries = [_item_fields(i, item) for i, item in enumerate(items)]
        if not entries:
            return []
        streams = [self.stream_of(text(fields["agent_id"])) for fields in entries]
        pipe = self.redis.pipeline(transaction=False)
        for stream, fields in zip(streams, entries, strict=True):
            pipe.xadd(stream, fields)  # type: ignore[arg-type]
        try:
            ids = pipe.execute()
        except redis.RedisError as e:
            raise StoreError(
                f"pipelined XADD of {len(entries)} entries to {', '.join(sorted(set(streams)))} "
                "failed: "
                f"{failure_text(e, self.keys)}"
            ) from e
        return [text(entry_id) for entry_id in ids]

    def agent(self, agent_id: str) -> AgentMemory:
        """A handle that logs and recalls the memories of one agent.

        Raises:
            EntryError: the agent id would be refused by the daemon.
        """
        return AgentMemory(self, check_agent_id(agent_id))

    # -- reads ---------------------------------------------------------------------------------

    def recall(
        self,
        agent_id: str,
        query: Mapping[str, Any] | npt.ArrayLike,
        k: int = 10,
        tiers: Sequence[str] = TIERS,
        step_range: tuple[int, int] | None = None,
        filters: Any = None,
        where: Mapping[str, Any] | None = None,
        kinds: Sequence[str] | None = None,
    ) -> Recall:
        """The memories of `agent_id` nearest to `query`, per tier and merged.

        Each tier over-fetches `settings.candidates(k)` by KNN and keeps the k nearest by
        feature distance (see the module doc).

        Args:
            query: a state dict, or a vector of one tier's size (its tier is told by length).
                A state that gives scalar fields but no grid of the schema (for a schema
                without grids: not every scalar field) is partial: every memory of the agent
                is ranked exactly on those fields alone, from its state attributes.
            k: hits per tier, and the length of the merged list at most.
            tiers: which tiers to search.
            step_range: only memories with lo <= step <= hi.
            filters: a further redisvl FilterExpression (`Num("importance") > 0.5`), ANDed.
            where: conditions on the state's fields, ANDed: a numeric field -> (low, high),
                inclusive, either end None; a categorical field -> a value or a list of
                values (`{"health": (None, 20), "current_action": "gather"}`). A memory whose
                state left a field out never matches a condition on it.
            kinds: only memories of these kinds (`("state",)` keeps actions out; actions are
                otherwise recalled like states, by their state form). Memories stored before
                kinds were recorded have none and never match.

        Raises:
            ValueError: bad k, tiers, step_range, where, or a vector of no tier's size.
            FeatureError: the state cannot be featurized; the message names the field.
            EntryError: the agent id would be refused by the daemon.
            StoreError: Redis failed.
        """
        agent_id = check_agent_id(agent_id)
        searched = _check_tiers(tiers)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k={k!r}: must be an integer of at least 1")
        started = time.perf_counter()
        if where:
            state_filter = where_filter(state_attributes(self.engine.schema), where)
            filters = state_filter if filters is None else state_filter & filters
        if kinds is not None:
            kind_filter = _kind_filter(kinds)
            filters = kind_filter if filters is None else kind_filter & filters
        query_tier, reference, chosen, hits = self.in_bucket(
            agent_id,
            lambda store: self._search(store, agent_id, query, k, searched, step_range, filters),
        )
        ranked = {tier: _merged_hits(tier, chosen[tier], hits[tier]) for tier in searched}
        merged = sorted(
            (m for tier_hits in ranked.values() for m in tier_hits),
            key=lambda m: (m.feature_distance, TIERS.index(m.tier), m.hit.distance),
        )[:k]
        log.debug(
            "recall agent=%r tiers=%s hits=%s in %.1fms",
            agent_id,
            ",".join(searched),
            {tier: len(tier_hits) for tier, tier_hits in ranked.items()},
            1000 * (time.perf_counter() - started),
        )
        by_tier = {tier: [m.hit for m in tier_hits] for tier, tier_hits in ranked.items()}
        return Recall(agent_id, query_tier, reference, by_tier, merged)

    def _search(
        self,
        store: TierStore,
        agent_id: str,
        query: Mapping[str, Any] | npt.ArrayLike,
        k: int,
        searched: Sequence[str],
        step_range: tuple[int, int] | None,
        filters: Any,
    ) -> tuple[str | None, FloatArray, _Chosen, dict[str, list[Hit]]]:
        """recall's talk with the store: (the query's tier, its reference features, each tier's
        chosen candidates with their feature distances, their hits)."""
        if isinstance(query, Mapping) and (given := self._partial_fields(query)):
            query_tier = None
            reference, chosen, hits = self._rank_partial(
                store, agent_id, query, given, k, searched, step_range, filters
            )
        else:
            prepared = self._prepare(query, searched)
            query_tier, reference = prepared.tier, prepared.reference
            kept = TIERS if self.settings.keep_state_after_stm else ("stm",)
            exact = [t for t in searched if t in kept] if prepared.tier is None else []
            chosen = {}

            def choose(tier: str, found: Candidates) -> list[Candidate]:
                chosen[tier] = self._rerank(prepared, tier, found, k)
                return [c for c, _, _ in chosen[tier]]

            rebuilt = [tier for tier in searched if tier not in exact]

            def meanwhile() -> None:
                for tier in rebuilt:
                    prepared.reconstructed_reference(self.engine, tier)

            hits = store.recall_round(
                {tier: prepared.vectors[tier] for tier in searched},
                self.settings.candidates(k),
                choose,
                meanwhile=meanwhile if rebuilt else None,  # None: nothing to overlap
                agent_id=agent_id,
                exact=exact,
                version=self.engine.version,
                step_range=step_range,
                filters=filters,
            )
        return query_tier, reference, chosen, hits

    def reconstruct(self, hit: Hit | MergedHit) -> Reconstruction:
        """An approximate readable state of a hit from any tier, decoded from its vector.

        Raises:
            ValueError: the hit carries no vector (searched without return_vectors).
        """
        found = hit.hit if isinstance(hit, MergedHit) else hit
        if found.vector is None:
            raise ValueError(f"hit {found.key} has no vector: search with return_vectors=True")
        return self.engine.reconstruct_from_embedding(found.vector, found.tier)

    def _partial_fields(self, query: Mapping[str, Any]) -> list[StateAttribute]:
        """The scalar fields of a partial state query; [] for a query the vector path serves.

        The line: a query that gives a grid of the schema is an observation, served by KNN
        and the re-sort; one that gives scalar fields but no grid (or, for a schema without
        grids, not every scalar field) asks by what it knows, ranked on those fields alone.
        """
        schema = self.engine.schema
        attributes = state_attributes(schema)
        given = [a for a in attributes if a.field in query]
        if not given or any(g.name in query for g in schema.grids):
            return []
        return given if schema.grids or len(given) < len(attributes) else []

    def _rank_partial(
        self,
        store: TierStore,
        agent_id: str,
        query: Mapping[str, Any],
        given: Sequence[StateAttribute],
        k: int,
        searched: Sequence[str],
        step_range: tuple[int, int] | None,
        filters: Any,
    ) -> tuple[FloatArray, _Chosen, dict[str, list[Hit]]]:
        """Recall by the fields a partial state gives: every memory of the agent (matching the
        filters) is ranked exactly by feature distance over those fields' slots alone, read
        from its state attributes, in every tier alike. Missing fields pull toward nothing.

        Returns:
            The query's features (its given fields; defaults elsewhere), per tier the k
            nearest as (candidate, distance, exact), and their hits.
        """
        schema = self.engine.schema
        asked = {a.field: query[a.field] for a in given}
        reference = schema.extract(asked)  # (input_dim,)
        fields = schema.restricted_to(asked)  # the given fields' slots alone, as `schema` has them
        queried = fields.extract(asked)
        chosen: _Chosen = {}

        def choose(tier: str, records: list[tuple[str, dict[str, str]]]) -> list[Candidate]:
            states = [_partial_state(given, values) for _, values in records]
            features = fields.extract_batch(states) if states else np.zeros((0, fields.input_dim))
            distances = np.mean((features - queried) ** 2, axis=1)
            keys = [key for key, _ in records]
            order = np.lexsort((np.array(keys), distances))[:k].tolist()
            chosen[tier] = [
                (Candidate(keys[i], float(distances[i])), float(distances[i]), True) for i in order
            ]
            return [candidate for candidate, _, _ in chosen[tier]]

        names = [a.name for a in given]
        hits = store.attribute_round(
            searched, agent_id, names, choose, step_range=step_range, filters=filters
        )
        return reference, chosen, hits

    def _prepare(self, query: Mapping[str, Any] | npt.ArrayLike, tiers: Sequence[str]) -> _Query:
        """The query's vector in each searched tier, and its features."""
        engine = self.engine
        if isinstance(query, Mapping):
            features = engine.schema.extract(query)  # (input_dim,)
            vectors = engine.encode_features(features[None, :], tiers)  # {tier: (1, dim)}
            return _Query(None, features, {tier: vectors[tier][0] for tier in tiers})
        vector, tier = self._vector_tier(query)
        features = engine.decode(vector[None, :], tier)[0]  # (dim,) -> (input_dim,)
        vectors = {tier: vector}
        level = TIERS.index(tier)
        lowest = max(TIERS.index(t) for t in tiers)
        for upper, lower in itertools.pairwise(TIERS[level : lowest + 1]):
            vectors[lower] = engine.compress(vectors[upper][None, :], upper)[0]  # exact
        if any(TIERS.index(t) < level for t in tiers):
            # Approximate: the decoded features, encoded again into the higher tiers.
            encoded = engine.encode_features(features[None, :])
            vectors.update({t: encoded[t][0] for t in TIERS[:level]})
        features = features.astype(np.float32)
        return _Query(tier, features, vectors, references={tier: features})

    def _vector_tier(self, query: npt.ArrayLike) -> tuple[FloatArray, str]:
        """`query` as a float32 vector, and the tier its length belongs to."""
        sizes = " or ".join(f"{dim} ({tier})" for tier, dim in self.dims.items())
        try:
            vector = np.asarray(query, dtype=np.float32)
        except (TypeError, ValueError) as e:
            raise ValueError(f"query must be a state dict or a vector of {sizes}: {e}") from None
        if vector.ndim != 1:
            raise ValueError(f"query vector has shape {vector.shape}; expected a 1-D vector")
        # Equal sizes in two tiers: the higher resolution one is assumed.
        tier = next((t for t, dim in self.dims.items() if dim == vector.size), None)
        if tier is None:
            raise ValueError(
                f"query vector has {vector.size} values; expected {sizes}, or a state dict"
            )
        if not np.isfinite(vector).all():
            raise ValueError("query vector holds NaN or infinity")
        return vector, tier

    def _rerank(
        self, query: _Query, tier: str, candidates: Candidates, k: int
    ) -> list[tuple[Candidate, float, bool]]:
        """The k nearest of one tier's candidates as (candidate, feature distance, exact),
        nearest first (ties: KNN distance).

        A candidate with its state's features (or a state, extracted here) is measured
        exactly; any other by its reconstruction: the one its record stores, or else its
        vector's, decoded here. Anything else (a stored state the schema now refuses, a
        stored reconstruction of another schema's width) ranks last.
        """
        engine = self.engine
        width = engine.schema.input_dim
        distances = np.full(len(candidates), np.inf)
        exact = np.zeros(len(candidates), dtype=bool)
        measured = [rows for rows in candidates.features if rows.values.shape[1] == width]
        if candidates.states:
            positions = list(candidates.states)
            states = [candidates.states[i] for i in positions]
            extracted, good, _ = engine.schema.extract_valid(states)
            measured.append(Rows([positions[j] for j in good], extracted))
        for rows in measured:
            distances[rows.positions] = feature_distances(query.reference, rows.values)
            exact[rows.positions] = True
        rebuilt = [rows for rows in candidates.reconstructions if rows.values.shape[1] == width]
        rebuilt += [
            Rows(rows.positions, engine.decode(rows.values, tier)) for rows in candidates.vectors
        ]
        for rows in rebuilt:
            reference = query.reconstructed_reference(engine, tier)
            distances[rows.positions] = feature_distances(reference, rows.values)
        order = np.lexsort((candidates.distances, distances))[:k].tolist()
        return [
            (candidate, float(distances[i]), bool(exact[i]))
            for candidate, i in zip(candidates.chosen(order), order, strict=True)
        ]


class AgentMemory:
    """One agent's memory logger: log states and actions, recall this agent's memories."""

    def __init__(self, client: MemoryClient, agent_id: str) -> None:
        self.client = client
        self.agent_id = agent_id

    def __repr__(self) -> str:
        url = redact_url(self.client.settings.redis_url)
        return f"AgentMemory(agent_id={self.agent_id!r}, redis_url={url!r})"

    def log_state(
        self,
        state: Mapping[str, Any],
        step: int | None = None,
        ts: int | None = None,
        importance: float | None = None,
    ) -> str:
        """Remember one state of this agent; returns the stream entry id."""
        return self.client.remember(self.agent_id, state, step, ts, "state", importance)

    def log_action(
        self,
        action: Mapping[str, Any],
        step: int | None = None,
        ts: int | None = None,
        importance: float | None = None,
    ) -> str:
        """Remember one action (action_type, action_params, context, outcome); returns its id.

        The daemon maps it to state form (protocol.action_to_state) before encoding.
        """
        return self.client.remember(self.agent_id, action, step, ts, "action", importance)

    def recall(
        self,
        query: Mapping[str, Any] | npt.ArrayLike,
        k: int = 10,
        tiers: Sequence[str] = TIERS,
        step_range: tuple[int, int] | None = None,
        filters: Any = None,
        where: Mapping[str, Any] | None = None,
        kinds: Sequence[str] | None = None,
    ) -> Recall:
        """This agent's memories nearest to `query`; see MemoryClient.recall."""
        return self.client.recall(self.agent_id, query, k, tiers, step_range, filters, where, kinds)

    def reconstruct(self, hit: Hit | MergedHit) -> Reconstruction:
        """An approximate readable state of a hit; see MemoryClient.reconstruct."""
        return self.client.reconstruct(hit)


def connect(
    settings: Settings,
    *,
    timeout_s: float = SOCKET_TIMEOUT_S,
    connect_timeout_s: float = SOCKET_CONNECT_TIMEOUT_S,
) -> redis.Redis | redis.RedisCluster:
    """A client of `settings.redis_url` (set) for a MemoryClient: a redis.RedisCluster when
    there are buckets.

    It speaks RESP2: a recall parses 150 FT.SEARCH documents, and hiredis reads a 50-document
    reply in 30 us as RESP2 lists but in 250 us as RESP3 maps (redis-py 8's default).
    """
    assert settings.redis_url
    kind = redis.Redis if settings.buckets == 1 else redis.RedisCluster
    return kind.from_url(
        settings.redis_url,
        protocol=2,
        socket_timeout=timeout_s,
        socket_connect_timeout=connect_timeout_s,
    )  # the URL's own protocol=/socket_timeout=/socket_connect_timeout= arguments win


def _item_fields(index: int, item: Mapping[str, Any]) -> dict[str, str]:
    """The XADD fields of one remember_many item; EntryError names the item."""
    if not isinstance(item, Mapping):
        raise EntryError(f"item {index}: expected a mapping, got {type(item).__name__}")
    unknown = sorted(str(key) for key in item if key not in ITEM_KEYS)
    if unknown:
        raise EntryError(f"item {index}: unknown keys {unknown}; expected {', '.join(ITEM_KEYS)}")
    missing = [key for key in ("agent_id", "state") if key not in item]
    if missing:
        raise EntryError(f"item {index}: missing {', '.join(missing)}")
    try:
        return encode_entry(
            item["agent_id"],
            item["state"],
            item.get("step"),
            item.get("ts"),
            item.get("kind", "state"),
            item.get("importance"),
        )
    except EntryError as e:
        raise EntryError(f"item {index}: {e}") from e


def _node_changed(error: BaseException) -> bool:
    """Whether `error` says the node asked is gone (an outage, `is_connection_error`) or no
    longer owns the slot (MOVED; not ASK: a slot being moved)."""
    return is_connection_error(error) or any(isinstance(e, MovedError) for e in error_chain(error))


def _check_tiers(tiers: Sequence[str]) -> list[str]:
    if isinstance(tiers, str):
        tiers = [tiers]
    unknown = [t for t in tiers if t not in TIERS]
    if unknown or not tiers:
        raise ValueError(f"tiers {list(tiers)!r}: expected some of {', '.join(TIERS)}")
    return [t for t in TIERS if t in tiers]  # in tier order, each once


def _check_engine_dims(engine: EmbeddingEngine, dims: Mapping[str, int]) -> None:
    if dict(engine.dims) != dict(dims):
        raise ConfigError(
            f"engine has tier dimensions {engine.dims}, the settings say {dict(dims)} "
            "(MT_STM_DIM, MT_IM_DIM, MT_LTM_DIM must match the model)"
        )


def _kind_filter(kinds: Sequence[str]) -> Any:
    """The filter of `recall(kinds=...)`; ValueError naming a kind the protocol has not."""
    chosen = [kinds] if isinstance(kinds, str) else list(kinds)
    unknown = [k for k in chosen if k not in KINDS]
    if unknown or not chosen:
        raise ValueError(f"kinds {chosen!r}: expected some of {', '.join(KINDS)}")
    return Tag(KIND) == chosen


def _partial_state(given: Sequence[StateAttribute], values: Mapping[str, str]) -> dict[str, Any]:
    """A record's given fields as a state, from its attribute values (strings from Redis)."""
    return {
        a.field: float(values[a.name]) if a.numeric else values[a.name]
        for a in given
        if a.name in values
    }


def _merged_hits(
    tier: str, chosen: Sequence[tuple[Candidate, float, bool]], hits: Sequence[Hit]
) -> list[MergedHit]:
    """The chosen candidates' full hits with their feature distances; a record gone since
    the search is left out."""
    by_key = {hit.key: hit for hit in hits}
    return [
        MergedHit(tier, by_key[c.key], distance, exact)
        for c, distance, exact in chosen
        if c.key in by_key
    ]
