"""EmbeddingEngine: states to tier vectors in batches, tier-to-tier compression, reconstruction."""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint import Checkpoint, load_checkpoint, pick_device
from .constants import TIERS
from .errors import ModelError
from .features import FeatureSchema, default_schema
from .model import FoldedModel, ModelConfig, StateAutoencoder
from .protocol import action_to_state

log = logging.getLogger(__name__)

UNTRAINED_VERSION = "untrained"
"""model_version of an engine built without a trained checkpoint."""

SMALL_BATCH = 256
"""Rows up to which a CPU engine encodes through FoldedModel (fused ops on folded weights)
rather than the model's modules: one query encodes in 0.09-0.16 ms instead of 0.16-0.31
(2-core EPYC, one thread); larger batches (ingest) gain nothing from it. A CPU engine decodes
through it at any size, as folding takes out a layer: 51 IM candidates in 0.51-0.61 ms instead
of 0.79-0.86, 1,000 LTM vectors (consolidation's reconstructions) in 7.6 ms instead of 13.3."""

EMBEDDING_NAMES = {"stm": "full_vector", "im": "compressed_vector", "ltm": "abstract_vector"}
"""The design's names for each tier's embedding."""


@dataclass(frozen=True)
class Reconstruction:
    """An approximate state decoded from one tier's embedding."""

    tier: str
    features: np.ndarray  # (input_dim,) in [0, 1]
    state: dict[str, Any]  # numbers de-normalized, categories by argmax


class EmbeddingEngine:
    """Encodes states into all three tiers and decodes embeddings back, in batches.

    Build it from a checkpoint (`from_checkpoint`) for real use. An engine over an
    untrained model (`untrained`) works but is flagged loudly: its vectors mean nothing.
    """

    def __init__(
        self,
        model: StateAutoencoder,
        schema: FeatureSchema,
        version: str,
        trained: bool = True,
        device: str | torch.device | None = None,
        validation_mse: Mapping[str, float] | None = None,
    ) -> None:
        """An engine over `model`; `validation_mse` is its checkpoint's held-out MSE per tier."""
        if model.config.input_dim != schema.input_dim:
            raise ModelError(
                f"model input_dim {model.config.input_dim} != schema input_dim {schema.input_dim}"
            )
        self.device = pick_device(str(device) if device else None)
        self.model = model.to(self.device).eval()
        self.schema = schema
        self.version = version
        self.trained = trained
        self.validation_mse = (
            {t: float(validation_mse[t]) for t in TIERS} if validation_mse else None
        )
        """Reconstruction MSE per tier on the training run's held-out states; None if unknown."""
        if not trained:
            message = (
                "memory_tiers is using an UNTRAINED autoencoder: its vectors carry no learned "
                "structure and recall quality is meaningless. Train one: memory-tiers train"
            )
            warnings.warn(message, stacklevel=2)
            log.warning(message)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        expect_schema: FeatureSchema | None = None,
        expect_dims: tuple[int, int, int] | None = None,
        device: str | torch.device | None = None,
    ) -> EmbeddingEngine:
        """An engine over a saved checkpoint (loaded with weights_only=True)."""
        checkpoint = load_checkpoint(path, expect_schema, expect_dims)
        return cls.from_loaded(checkpoint, device)

    @classmethod
    def from_loaded(
        cls, checkpoint: Checkpoint, device: str | torch.device | None = None
    ) -> EmbeddingEngine:
        """An engine over a checkpoint already in memory."""
        metrics = checkpoint.metrics
        trained = bool(metrics.get("trained", False))
        return cls(
            checkpoint.model, checkpoint.schema, checkpoint.version, trained, device,
            validation_mse=metrics.get("val_mse"),
        )  # fmt: skip

    @classmethod
    def untrained(
        cls,
        schema: FeatureSchema | None = None,
        dims: tuple[int, int, int] = (384, 128, 32),
        seed: int = 0,
        device: str | torch.device | None = None,
    ) -> EmbeddingEngine:
        """An engine over freshly initialised weights, for tests and first runs."""
        schema = schema or default_schema()
        torch.manual_seed(seed)
        model = StateAutoencoder(ModelConfig(schema.input_dim, *dims))
        return cls(model, schema, UNTRAINED_VERSION, trained=False, device=device)

    @property
    def dims(self) -> dict[str, int]:
        """Vector size of each tier."""
        config = self.model.config
        return {"stm": config.stm_dim, "im": config.im_dim, "ltm": config.ltm_dim}

    @torch.no_grad()
    def encode_features(
        self, features: np.ndarray, tiers: Sequence[str] = TIERS
    ) -> dict[str, np.ndarray]:
        """Feature rows (N, input_dim) to the vectors of `tiers` {tier: (N, dim)} float32.

        One encoder pass; the bottlenecks run only as far down as the lowest tier asked for
        (the daemon asks for STM alone).
        """
        unknown = set(tiers) - set(TIERS)
        if unknown:
            raise ValueError(f"unknown tiers {sorted(unknown)}: expected some of {TIERS}")
        features = np.asarray(features, dtype=np.float32)
        if features.ndim != 2 or features.shape[1] != self.schema.input_dim:
            raise ModelError(
                f"features: expected rows of {self.schema.input_dim}, got shape {features.shape}"
            )
        if self.device.type == "cpu" and len(features) <= SMALL_BATCH:
            down_to = max(tiers, key=TIERS.index, default="stm")
            encoded = self._folded.encode(features, down_to)
            return {tier: encoded[tier] for tier in tiers}
        x = torch.as_tensor(features, dtype=torch.float32, device=self.device)
        vectors = {"stm": self.model.encode_stm(x)}
        if "im" in tiers or "ltm" in tiers:
            vectors["im"] = self.model.stm_to_im(vectors["stm"])
        if "ltm" in tiers:
            vectors["ltm"] = self.model.im_to_ltm(vectors["im"])
        return {tier: vectors[tier].cpu().numpy() for tier in tiers}

    def encode_states(self, states: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
        """States to each tier's vectors {tier: (N, dim)}, featurized and encoded as one batch.

        Raises:
            FeatureError: a state is invalid; the message names the item, field and value.
        """
        return self.encode_features(self.schema.extract_batch(states))

    def create_state_embeddings(self, states: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
        """The batch form of create_state_embedding: {full_vector: (N, 384), ...}."""
        return {EMBEDDING_NAMES[t]: v for t, v in self.encode_states(states).items()}

    def create_state_embedding(self, state: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """One state's embeddings: full_vector (STM), compressed_vector (IM), abstract_vector."""
        return {name: v[0] for name, v in self.create_state_embeddings([state]).items()}

    def create_action_embedding(self, action: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """An action's embeddings, through its state-like form (action_to_state)."""
        return self.create_state_embedding(action_to_state(action))

    @torch.no_grad()
    def compress(self, vectors: np.ndarray, from_tier: str) -> np.ndarray:
        """Stored vectors one tier down: STM (N, 384) -> IM (N, 128), or IM -> LTM (N, 32)."""
        layers = {"stm": self.model.stm_to_im, "im": self.model.im_to_ltm}
        if from_tier not in layers:
            raise ValueError(f"cannot compress from tier {from_tier!r}: expected 'stm' or 'im'")
        x = torch.as_tensor(vectors, dtype=torch.float32, device=self.device)
        return layers[from_tier](x).cpu().numpy()

    @functools.cached_property
    def _folded(self) -> FoldedModel:
        return FoldedModel(self.model)

    @torch.no_grad()
    def decode(self, vectors: np.ndarray, tier: str) -> np.ndarray:
        """Embeddings (N, dim) of one tier to reconstructed feature rows (N, input_dim)."""
        if tier not in TIERS:
            raise ValueError(f"unknown tier {tier!r}: expected one of {', '.join(TIERS)}")
        rows = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        if rows.shape[-1] != self.dims[tier]:
            raise ModelError(
                f"{tier} vectors: expected last dimension {self.dims[tier]}, got shape {rows.shape}"
            )
        if self.device.type == "cpu":
            return self._folded.decode(rows, tier)
        x = torch.as_tensor(rows, device=self.device)
        decoders = {
            "stm": self.model.decode_from_stm,
            "im": self.model.decode_from_im,
            "ltm": self.model.decode_from_ltm,
        }
        decoded: np.ndarray = decoders[tier](x).cpu().numpy()
        return decoded

    def reconstruct_from_embedding(
        self, embedding: np.ndarray, tier: str = "stm"
    ) -> Reconstruction:
        """An approximate state from one embedding: features and a readable state dict.

        Raises:
            ValueError: unknown tier, or an embedding of the wrong size for the tier.
        """
        if tier in self.dims and np.size(embedding) != self.dims[tier]:
            raise ValueError(
                f"a {tier} embedding has {self.dims[tier]} values, got {np.size(embedding)}"
            )
        features = self.decode(np.asarray(embedding, dtype=np.float32), tier)[0]
        return Reconstruction(tier, features, self.schema.describe(features))
