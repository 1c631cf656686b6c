"""How far the states a daemon encodes are from what its model learnt: sampled reconstruction error.

A model reconstructs states like its training data well and others badly, so the error on live
states, next to the error on the training run's held-out states (in the checkpoint), says when
agents have drifted away from what the model knows and recall suffers. Decoding every state
would double the encode cost; one in `every` is enough to follow the trend.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from .constants import TIERS

if TYPE_CHECKING:
    from .engine import EmbeddingEngine

RECENT_SAMPLES = 200
"""The running error weighs about this many of the latest sampled states (an exponential
moving average; a plain mean until that many were sampled)."""


class ReconstructionDrift:
    """Reconstruction MSE per tier of one in `every` encoded states, recent states weighing most.

    `sample` is called on the ingest thread, `mse` from metrics scrapes and heartbeats: a lock
    keeps the tiers of one reading together.
    """

    def __init__(self, engine: EmbeddingEngine, every: int) -> None:
        if every < 1:
            raise ValueError(f"every={every}: must be at least 1")
        self.engine = engine
        self.every = every
        self.samples = 0
        self._seen = 0
        self._mse = dict.fromkeys(TIERS, 0.0)
        self._lock = threading.Lock()

    def sample(self, features: npt.NDArray[np.float32]) -> None:
        """Take every `every`-th row of a batch's features (counting across batches)."""
        first = -self._seen % self.every
        self._seen += len(features)
        rows = features[first :: self.every]  # (n, input_dim)
        if not len(rows):
            return
        vectors = self.engine.encode_features(rows)
        errors = {
            tier: ((self.engine.decode(vectors[tier], tier) - rows) ** 2).mean(axis=1)
            for tier in TIERS
        }  # tier -> (n,)
        with self._lock:
            for i in range(len(rows)):
                self.samples += 1
                weight = max(1.0 / self.samples, 1.0 / RECENT_SAMPLES)
                for tier in TIERS:
                    self._mse[tier] += weight * (float(errors[tier][i]) - self._mse[tier])

    def mse(self) -> dict[str, float] | None:
        """The running reconstruction MSE per tier; None before the first sample."""
        with self._lock:
            return dict(self._mse) if self.samples else None
