"""How well a model serves recall on agents' states, per tier, against PCA of the same size.

Recall here is what agents get: per agent, the k memories nearest to a query, scored against
the agent's k truly nearest stored states (L2 in the schema's feature space). Each agent's
states are split into stored memories and held-out queries, so a query never finds itself.

Per tier it measures, all in memory (no Redis):
- reconstruction MSE of the tier's vectors, and of PCA with as many components;
- `vector_recall`: plain KNN over the tier's vectors;
- `recall`: what `MemoryClient.recall` does: KNN over-fetches `candidates`, which are re-sorted
  by exact feature distance where the tier keeps the raw state, elsewhere by the distance of
  their reconstruction to the midpoint of the query's features and its reconstruction at that
  tier (`features.feature_distances`, the client's measure);
- `pca_recall`: KNN over PCA projections.
PCA is fitted on given features: the model's training data in the bench, the evaluated data
itself in `memory-tiers evaluate` (which flatters PCA: it has seen the test states).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from .attributes import attribute_values, state_attributes
from .constants import TIERS
from .errors import MemoryTiersError
from .features import feature_distances

if TYPE_CHECKING:
    from .client import MemoryClient
    from .engine import EmbeddingEngine

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]

RETRAIN_STM_RECALL = 0.95
"""STM recall below this (after rerank) says the model should be retrained on these states."""

RETRAIN_IM_RECALL = 0.80
"""IM recall below this (after rerank) says the model should be retrained on these states."""

DRIFT_FACTOR = 3.0
"""States whose reconstruction error exceeds this many times the model's held-out error are
far off what the model knows (evaluate's verdict, the daemon's drift sample, stats)."""


@dataclass(frozen=True)
class AgentStates:
    """One agent's feature rows: the memories it stores and the queries held out from them."""

    agent_id: str
    stored: FloatArray  # (n, input_dim)
    queries: FloatArray  # (q, input_dim)


@dataclass(frozen=True)
class TierQuality:
    """One tier's figures; recalls are means over every query of every agent."""

    tier: str
    dim: int
    keeps_state: bool
    mse: float
    pca_mse: float
    vector_recall: float
    recall: float
    pca_recall: float


@dataclass(frozen=True)
class PCA:
    """The top principal components of some features, fitted with numpy's SVD."""

    mean: FloatArray  # (input_dim,)
    components: FloatArray  # (d, input_dim); d <= input_dim

    @classmethod
    def fit(cls, features: FloatArray, dim: int) -> PCA:
        """PCA with `dim` components (fewer when the features have fewer dimensions)."""
        mean = features.mean(0)
        _, _, vt = np.linalg.svd(features - mean, full_matrices=False)
        return cls(mean, vt[: min(dim, vt.shape[0])])

    def project(self, x: FloatArray) -> FloatArray:
        """(N, input_dim) -> (N, d)."""
        projected: FloatArray = (x - self.mean) @ self.components.T
        return projected

    def reconstruct(self, projected: FloatArray) -> FloatArray:
        """(N, d) -> (N, input_dim)."""
        features: FloatArray = projected @ self.components + self.mean
        return features


def split_agents(
    features: FloatArray,
    agent_ids: Sequence[str],
    queries: int,
    *,
    min_stored: int = 20,
    seed: int = 0,
) -> list[AgentStates]:
    """Each agent's rows, `queries` of them (at random, at most a fifth) held out as queries.

    Agents with fewer than `min_stored` rows left to store are skipped.
    """
    if len(features) != len(agent_ids):
        raise ValueError(f"{len(features)} feature rows but {len(agent_ids)} agent ids")
    rng = np.random.default_rng(seed)
    ids = np.asarray(agent_ids)
    agents = []
    for agent_id in dict.fromkeys(agent_ids):
        rows = features[ids == agent_id]
        held = min(queries, len(rows) // 5)
        if held < 1 or len(rows) - held < min_stored:
            continue
        chosen = np.zeros(len(rows), dtype=bool)
        chosen[rng.choice(len(rows), size=held, replace=False)] = True
        agents.append(AgentStates(agent_id, rows[~chosen], rows[chosen]))
    return agents


def nearest(points: FloatArray, queries: FloatArray, k: int) -> IntArray:
    """(q, k) indices of each query's k nearest points by L2, nearest first.

    In float64: the expanded form's cancellation in float32 (~1e-7 of the squared norms)
    reorders neighbours whose distances differ by less, and this is the ground truth.
    """
    k = min(k, len(points))
    points = np.asarray(points, dtype=np.float64)
    queries = np.asarray(queries, dtype=np.float64)
    d = (
        (points**2).sum(1)[None, :] - 2.0 * queries @ points.T + (queries**2).sum(1)[:, None]
    )  # (q, n)
    part = np.argpartition(d, k - 1, axis=1)[:, :k]
    order = np.argsort(np.take_along_axis(d, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def recall_at_k(truth: IntArray, found: IntArray) -> float:
    """Mean share of the true neighbours that were found."""
    hits = [len(set(t.tolist()) & set(f.tolist())) for t, f in zip(truth, found, strict=True)]
    return float(np.mean(hits)) / int(truth.shape[1])


def evaluate(
    engine: EmbeddingEngine,
    agents: Sequence[AgentStates],
    pca_features: FloatArray,
    *,
    k: int = 10,
    candidates: int = 50,
    state_tiers: Sequence[str] = ("stm",),
) -> list[TierQuality]:
    """Each tier's quality on `agents`, PCA fitted on `pca_features`.

    Args:
        state_tiers: tiers whose memories keep the raw state (reranked exactly).

    Raises:
        MemoryTiersError: no agent has enough states.
    """
    if not agents:
        raise MemoryTiersError("no agent has enough states to evaluate (20 stored and a query)")
    rows = []
    for tier in TIERS:
        dim = engine.dims[tier]
        pca = PCA.fit(pca_features, dim)
        sums = np.zeros(5)
        counts = np.zeros(2)
        for agent in agents:
            figures = _agent_figures(engine, pca, agent, tier, k, candidates, tier in state_tiers)
            sums += figures * np.array([len(agent.stored)] * 2 + [len(agent.queries)] * 3)
            counts += (len(agent.stored), len(agent.queries))
        mse, pca_mse = sums[:2] / counts[0]
        vector_recall, recall, pca_recall = sums[2:] / counts[1]
        rows.append(
            TierQuality(
                tier, dim, tier in state_tiers, mse, pca_mse, vector_recall, recall, pca_recall
            )
        )
    return rows


def _agent_figures(
    engine: EmbeddingEngine,
    pca: PCA,
    agent: AgentStates,
    tier: str,
    k: int,
    candidates: int,
    keeps_state: bool,
) -> npt.NDArray[np.float64]:
    """[mse, pca_mse, vector_recall, recall, pca_recall] of one agent at one tier."""
    stored_vectors = engine.encode_features(agent.stored, (tier,))[tier]  # (n, dim)
    query_vectors = engine.encode_features(agent.queries, (tier,))[tier]  # (q, dim)
    decoded = engine.decode(stored_vectors, tier)  # (n, input_dim)
    truth = nearest(agent.stored, agent.queries, k)
    pool = nearest(stored_vectors, query_vectors, max(k, candidates))  # (q, C)
    # As the client measures: a state exactly; a reconstruction against the midpoint of the
    # query's features and its own reconstruction at the tier.
    if keeps_state:
        compared, references = agent.stored, agent.queries
    else:
        compared = decoded
        references = (agent.queries + engine.decode(query_vectors, tier)) / 2
    reranked = np.stack(
        [
            row[np.argsort(feature_distances(reference, compared[row]), kind="stable")[:k]]
            for row, reference in zip(pool, references, strict=True)
        ]
    )
    projected = pca.project(agent.stored)
    return np.array(
        [
            float(((decoded - agent.stored) ** 2).mean()),
            float(((pca.reconstruct(projected) - agent.stored) ** 2).mean()),
            recall_at_k(truth, pool[:, :k]),
            recall_at_k(truth, reranked),
            recall_at_k(truth, nearest(projected, pca.project(agent.queries), k)),
        ]
    )


def verdict(rows: Sequence[TierQuality], validation_mse: Mapping[str, float] | None) -> str:
    """One line: whether the model serves these states, and what to do if not.

    Retrain when recall falls short, or when these states reconstruct more than DRIFT_FACTOR
    times worse than the model's own held-out states (they are unlike what it learnt). PCA is
    not a criterion: fitted on the evaluated states themselves, it is a generous rival.
    """
    by_tier = {row.tier: row for row in rows}
    problems = []
    if by_tier["stm"].recall < RETRAIN_STM_RECALL:
        problems.append(f"STM recall {by_tier['stm'].recall:.2f} < {RETRAIN_STM_RECALL}")
    if by_tier["im"].recall < RETRAIN_IM_RECALL:
        problems.append(f"IM recall {by_tier['im'].recall:.2f} < {RETRAIN_IM_RECALL}")
    if validation_mse:
        problems += [
            f"{row.tier.upper()} error {row.mse:.4f} is {row.mse / validation_mse[row.tier]:.0f}x "
            "the model's held-out error"
            for row in rows
            if row.mse > DRIFT_FACTOR * validation_mse[row.tier]
        ]
    if not problems:
        return "ok: the model serves these states; no retraining needed"
    return (
        "retrain: " + "; ".join(problems) + ". Run `memory-tiers train --from-stream --broad "
        "100000 --init MODEL` (fine-tune on your states), then `memory-tiers reencode`"
    )


@dataclass(frozen=True)
class AgentTrial:
    """One agent's states to store and held-out states to recall with, as agents send them."""

    agent_id: str
    stored: Sequence[Mapping[str, Any]]
    queries: Sequence[Mapping[str, Any]]


def client_recall(
    client: MemoryClient, trials: Sequence[AgentTrial], *, k: int = 10, tiers: Sequence[str] = TIERS
) -> dict[str, float]:
    """Per tier, recall@k of `client.recall` against exact KNN over extracted features.

    Every stored state is written into every tier, as ingest and consolidation would leave it
    (vectors from the client's engine; the raw state in STM, and in IM and LTM when
    `keep_state_after_stm`); then each query recalls one tier at a time. The agents' memories
    should not exist before.
    """
    schema = client.engine.schema
    client.store.ensure_indexes()  # before the writes, so each is indexed as it lands
    sums = dict.fromkeys(tiers, 0.0)
    count = 0
    for number, trial in enumerate(trials):
        features = schema.extract_batch(trial.stored)
        entry_ids = _store_everywhere(client, trial, features, first_ts=number * 10_000_000 + 1)
        truth = nearest(features, schema.extract_batch(trial.queries), k)
        for query, true_rows in zip(trial.queries, truth, strict=True):
            wanted = {entry_ids[row] for row in true_rows.tolist()}
            for tier in tiers:
                found = client.recall(trial.agent_id, query, k, tiers=(tier,)).by_tier[tier]
                sums[tier] += len(wanted & {h.entry_id for h in found}) / len(wanted)
        count += len(trial.queries)
    return {tier: total / max(count, 1) for tier, total in sums.items()}


def partial_recall(
    client: MemoryClient,
    trials: Sequence[AgentTrial],
    *,
    k: int = 10,
    tiers: Sequence[str] = TIERS,
    seed: int = 0,
) -> dict[str, float]:
    """Per tier, recall@k of `client.recall` for partial queries: each query keeps 2 to 4 of
    the scalar fields its state gives, at random; truth is the stored states nearest over
    those fields' feature slots alone. Ties count: a hit is right when it is as near as the
    k-th truth. Stores as `client_recall` does (the agents' memories should not exist before).
    """
    schema = client.engine.schema
    fields = [a.field for a in state_attributes(schema)]
    slices = schema.slices()
    rng = np.random.default_rng(seed)
    client.store.ensure_indexes()
    sums = dict.fromkeys(tiers, 0.0)
    count = 0
    for number, trial in enumerate(trials):
        entry_ids = _store_everywhere(
            client, trial, schema.extract_batch(trial.stored), first_ts=number * 10_000_000 + 1
        )
        row_of = {entry_id: row for row, entry_id in enumerate(entry_ids)}
        for state in trial.queries:
            present = [f for f in fields if f in state]
            size = min(len(present), int(rng.integers(2, 5)))
            query = {present[i]: state[present[i]] for i in rng.permutation(len(present))[:size]}
            slots = np.concatenate([np.arange(schema.input_dim)[slices[f]] for f in query])
            masked = [{f: s[f] for f in query if f in s} for s in trial.stored]
            distances = np.mean(
                (schema.extract_batch(masked) - schema.extract(query))[:, slots] ** 2, axis=1
            )
            bound = np.sort(distances)[min(k, len(distances)) - 1] + 1e-12
            for tier in tiers:
                found = client.recall(trial.agent_id, query, k, tiers=(tier,)).by_tier[tier]
                right = sum(distances[row_of[h.entry_id]] <= bound for h in found)
                sums[tier] += right / min(k, len(distances))
        count += len(trial.queries)
    return {tier: total / max(count, 1) for tier, total in sums.items()}


def _store_everywhere(
    client: MemoryClient, trial: AgentTrial, features: FloatArray, first_ts: int
) -> list[str]:
    """Write the trial's stored states into every tier; their entry ids, in order."""
    from .store import MemoryRecord  # redisvl loads only where Redis is used
    from .tiers import reconstructions

    engine = client.engine
    vectors = engine.encode_features(features)
    attributes = state_attributes(engine.schema)
    entry_ids = [f"{first_ts + i}-0" for i in range(len(trial.stored))]
    for tier in TIERS:
        keep = tier == "stm" or client.settings.keep_state_after_stm
        rebuilt = reconstructions(engine, tier, vectors[tier])
        records = [
            MemoryRecord(
                entry_id=entry_id,
                agent_id=trial.agent_id,
                agent_type="unknown",
                step=i,
                ts=first_ts + i,
                model_version=engine.version,
                vector=vectors[tier][i],
                state_json=json.dumps(state) if keep else None,
                features=features[i] if keep else None,  # as ingest and consolidation write
                reconstruction=rebuilt[i],
                attributes=attribute_values(attributes, state),
            )
            for i, (entry_id, state) in enumerate(zip(entry_ids, trial.stored, strict=True))
        ]
        client.store.write(tier, records)
    return entry_ids
