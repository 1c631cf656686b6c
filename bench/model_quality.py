"""Model quality per tier against PCA at the same dimension, on held-out simulated states.

For each tier (STM 384, IM 128, LTM 32) it measures, on states of a simulated world the
model never saw:
  - reconstruction MSE (decode the tier's embedding back to features);
  - neighbour recall@10: KNN in the tier's vector space against exact KNN in feature space.
PCA is fitted with numpy's SVD on the same training states the checkpoint was trained on
(regenerated from the checkpoint's recorded simulation seed and worlds). PCA with at least as
many components as there are features is exact, so at STM and IM it is the ceiling, not a rival.

    python bench/model_quality.py [--model models/state_autoencoder.pt] [--heldout 10000]
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import numpy as np

from memory_tiers import TIERS, EmbeddingEngine, load_checkpoint, simulate_states
from memory_tiers.train import split_data

HELDOUT_SEED = 10_000
"""Seed of the held-out world: far from any seed a training run uses by default."""


@dataclass(frozen=True)
class Row:
    tier: str
    dim: int
    ae_mse: float
    pca_mse: float
    ae_recall: float
    pca_recall: float
    pca_components: int


def knn(points: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Indices of each query's k nearest points by L2, the query itself (index i) excluded."""
    sq = (points**2).sum(1)
    result = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), 256):
        q = queries[start : start + 256]
        d = sq[None, :] - 2.0 * q @ points.T + (q**2).sum(1)[:, None]  # (B, N)
        d[np.arange(len(q)), np.arange(start, start + len(q))] = np.inf
        result[start : start + len(q)] = np.argpartition(d, k, axis=1)[:, :k]
    return result


def recall_at_k(truth: np.ndarray, found: np.ndarray) -> float:
    """Mean share of the true neighbours that the approximate search found."""
    hits = [len(set(t) & set(f)) for t, f in zip(truth, found, strict=True)]
    return float(np.mean(hits)) / truth.shape[1]


@dataclass(frozen=True)
class PCA:
    """The top principal components of training features, fitted with numpy's SVD."""

    mean: np.ndarray  # (input_dim,)
    components: np.ndarray  # (d, input_dim); d <= input_dim

    @classmethod
    def fit(cls, train: np.ndarray, dim: int) -> PCA:
        mean = train.mean(0)
        _, _, vt = np.linalg.svd(train - mean, full_matrices=False)
        return cls(mean, vt[: min(dim, vt.shape[0])])

    def project(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) @ self.components.T  # (N, input_dim) -> (N, d)

    def reconstruct(self, projected: np.ndarray) -> np.ndarray:
        return projected @ self.components + self.mean  # (N, d) -> (N, input_dim)


def measure(model_path: str, heldout: int, queries: int, k: int) -> list[Row]:
    checkpoint = load_checkpoint(model_path)
    data = checkpoint.metrics.get("data", {})
    if data.get("kind") != "simulation":
        sys.exit(f"{model_path} was not trained on the simulation ({data}); cannot refit PCA")
    engine = EmbeddingEngine.from_loaded(checkpoint, device="cpu")
    schema = engine.schema
    training = simulate_states(data["states"], seed=data["seed"], worlds=data["worlds"])
    val_fraction = checkpoint.metrics["config"]["val_fraction"]
    train_features, _ = split_data(schema.extract_batch(training), val_fraction)
    test = schema.extract_batch(simulate_states(heldout, seed=HELDOUT_SEED))
    truth = knn(test, test[:queries], k)
    embeddings = engine.encode_features(test)
    rows = []
    for tier in TIERS:
        vectors = embeddings[tier]
        ae_mse = float(((engine.decode(vectors, tier) - test) ** 2).mean())
        fitted = PCA.fit(train_features, vectors.shape[1])
        projected = fitted.project(test)
        pca_mse = float(((fitted.reconstruct(projected) - test) ** 2).mean())
        rows.append(
            Row(
                tier=tier,
                dim=vectors.shape[1],
                ae_mse=ae_mse,
                pca_mse=pca_mse,
                ae_recall=recall_at_k(truth, knn(vectors, vectors[:queries], k)),
                pca_recall=recall_at_k(truth, knn(projected, projected[:queries], k)),
                pca_components=len(fitted.components),
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="models/state_autoencoder.pt")
    parser.add_argument("--heldout", type=int, default=10_000, help="held-out states")
    parser.add_argument("--queries", type=int, default=1000, help="recall queries")
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()
    rows = measure(args.model, args.heldout, args.queries, args.k)
    print(
        f"held-out: {args.heldout} states of an unseen world (seed {HELDOUT_SEED}); "
        f"recall@{args.k} over {args.queries} queries"
    )
    print(
        f"| tier | dim | AE MSE | PCA MSE | AE/PCA MSE | AE recall@{args.k} | PCA recall@{args.k} |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        pca_label = f"{r.pca_mse:.5f}" + (
            "" if r.pca_components == r.dim else f" ({r.pca_components} comp., exact)"
        )
        ratio = r.ae_mse / r.pca_mse if r.pca_mse > 1e-9 else float("inf")
        print(
            f"| {r.tier.upper()} | {r.dim} | {r.ae_mse:.5f} | {pca_label} | {ratio:.2f} "
            f"| {r.ae_recall:.3f} | {r.pca_recall:.3f} |"
        )


if __name__ == "__main__":
    main()
