"""Training the autoencoder: data split, weighted multi-tier loss, early stopping.

The trained model leaves as a `checkpoint.Checkpoint`; writing and reading it is checkpoint.py's.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, cast

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .checkpoint import Checkpoint, pick_device, weights_version
from .errors import ModelError
from .features import FeatureSchema, default_schema
from .model import ModelConfig, StateAutoencoder
from .sampling import sample_states

log = logging.getLogger(__name__)

LOSS_WEIGHTS = (0.5, 0.3, 0.2)
"""Weights of the STM, IM and LTM reconstruction losses, higher on STM accuracy (the design)."""

DEFAULT_DISTANCE_WEIGHT = 0.1
"""λ of the distance-preservation term; chosen by measurement (README, "The model")."""

SAMMON_OFFSET = 0.01
"""Added to feature distances in the Sammon weights 1/(d + offset): equal states weigh finitely."""

SATURATED_LOGIT = 12.0
"""|Pre-sigmoid output| past which an output unit is stuck: its gradient (< 1e-5) is gone."""

TARGET_FLOOR = 1e-3
"""A feature whose values in training all lie within this of the stuck end needs no revival."""


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of one training run; saved in the checkpoint's metrics."""

    epochs: int = 50
    batch_size: int = 64
    learning_rate: float = 1e-3
    val_fraction: float = 0.2
    patience: int = 5
    seed: int = 0
    device: str | None = None
    progress: bool = True
    distance_weight: float = DEFAULT_DISTANCE_WEIGHT
    """λ of the distance-preservation term (`distance_stress`); 0: reconstruction alone."""

    def __post_init__(self) -> None:
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction={self.val_fraction}: must be between 0 and 1")
        if not (math.isfinite(self.distance_weight) and self.distance_weight >= 0):
            raise ValueError(
                f"distance_weight={self.distance_weight}: must be a finite number >= 0"
            )
        if self.epochs < 1 or self.batch_size < 1 or self.patience < 1:
            raise ValueError("epochs, batch_size and patience must be at least 1")


def split_data(features: np.ndarray, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """The first (1 - val_fraction) rows for training, the rest for validation, in order.

    Keeping time order (as designed) means validation states come from later in the run,
    not from the same moments as training states, so the validation loss is not flattered.
    """
    n_train = round(len(features) * (1.0 - val_fraction))
    if n_train < 1 or n_train >= len(features):
        raise ValueError(
            f"{len(features)} samples cannot be split {1 - val_fraction:.0%}/{val_fraction:.0%}"
        )
    return features[:n_train], features[n_train:]


def pairwise_distances(x: torch.Tensor) -> torch.Tensor:
    """L2 distances of every pair of rows, (B, d) -> (B * (B - 1) / 2,), differentiable at 0.

    torch.pdist's gradient is NaN where two rows are equal (sqrt at 0), and batches of agent
    states do hold equal rows; the square root here is of the squared distance plus 1e-12.
    """
    rows, cols = torch.triu_indices(len(x), len(x), offset=1, device=x.device)
    squared = (x * x).sum(1)  # (B,)
    d2 = squared[:, None] + squared[None, :] - 2.0 * (x @ x.T)  # (B, B), one matmul
    return torch.sqrt(d2[rows, cols].clamp_min(0.0) + 1e-12)


def distance_stress(embedding: torch.Tensor, feature_distances: torch.Tensor) -> torch.Tensor:
    """How badly a tier's space keeps the batch's feature distances: 1 - cos², in [0, 1].

    cos is the Sammon-weighted (w = 1 / (d_x + SAMMON_OFFSET)) cosine between the pairwise
    distances in the tier's space and in feature space. It ignores scale, so each tier may
    shrink or stretch distances freely, and it stresses near pairs most: the neighbours
    that recall must find. 0 when every distance is kept up to one factor.
    """
    d_tier = pairwise_distances(embedding)
    weights = 1.0 / (feature_distances + SAMMON_OFFSET)
    dot = (weights * d_tier * feature_distances).sum()
    norms = (weights * d_tier * d_tier).sum() * (weights * feature_distances**2).sum()
    return 1.0 - dot * dot / norms.clamp_min(1e-12)


@torch.no_grad()
def revive_saturated_outputs(model: StateAutoencoder, x: torch.Tensor) -> list[int]:
    """Re-initialize decoder output units stuck at 0 or 1 on `x` while `x` needs other values.

    A model trained on data where a feature is always 0 (say, the "other" slot of a category
    that the simulation never leaves) drives that output's logit far negative, where the
    sigmoid's gradient vanishes: fine-tuning on data that does use the feature cannot move it
    (the default model's "other" slots sat at logit -30, 1.0 error on every such state). The
    unit's weights are drawn afresh, small, and its bias set to the logit of the feature's mean,
    so training starts it where a new model would. Healthy units are untouched.

    Returns:
        The revived output columns (feature indices).
    """
    model.eval()
    output = cast(nn.Linear, model.decoder[-2])  # model.decoder[-1] is the Sigmoid
    logits = torch.cat([model.decoder[:-1](model.encode_stm(b)) for b in x.split(4096)])
    low, high = x.min(0).values, x.max(0).values
    stuck_low = (logits.max(0).values < -SATURATED_LOGIT) & (high > TARGET_FLOOR)
    stuck_high = (logits.min(0).values > SATURATED_LOGIT) & (low < 1.0 - TARGET_FLOOR)
    columns = torch.nonzero(stuck_low | stuck_high).flatten()
    if len(columns):
        mean = x[:, columns].mean(0).clamp(TARGET_FLOOR, 1.0 - TARGET_FLOOR)
        fresh = nn.Linear(output.in_features, len(columns)).to(x.device)
        output.weight[columns] = fresh.weight
        output.bias[columns] = torch.log(mean / (1.0 - mean))
    return columns.tolist()


def tier_losses(
    model: StateAutoencoder, x: torch.Tensor, criterion: nn.Module
) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """Reconstruction loss and distance stress from each tier's embedding, the encoder run once.

    Returns:
        (STM, IM, LTM) reconstruction losses, and the same tiers' `distance_stress`.
    """
    stm, im, ltm = model.encode_all(x)  # (B, 384), (B, 128), (B, 32)
    reconstruction = (
        criterion(model.decode_from_stm(stm), x),
        criterion(model.decode_from_im(im), x),
        criterion(model.decode_from_ltm(ltm), x),
    )
    feature_distances = pairwise_distances(x)
    stress = tuple(distance_stress(z, feature_distances) for z in (stm, im, ltm))
    return reconstruction, stress


def objective(
    reconstruction: Sequence[torch.Tensor], stress: Sequence[torch.Tensor], distance_weight: float
) -> torch.Tensor:
    """The training objective: Σ w_t·MSE_t + λ·Σ w_t·stress_t, tier weights LOSS_WEIGHTS."""
    total = torch.zeros((), device=reconstruction[0].device)
    for weight, mse, tier_stress in zip(LOSS_WEIGHTS, reconstruction, stress, strict=True):
        total = total + weight * (mse + distance_weight * tier_stress)
    return total


class AutoencoderTrainer:
    """Trains a StateAutoencoder on feature vectors with the design's weighted loss."""

    def __init__(
        self,
        schema: FeatureSchema,
        model_config: ModelConfig | None = None,
        config: TrainConfig | None = None,
        start_from: StateAutoencoder | None = None,
    ) -> None:
        """A trainer of a new model, or of a copy of `start_from` (fine-tuning: its dims win)."""
        self.schema = schema
        self.config = config or TrainConfig()
        self.device = pick_device(self.config.device)
        torch.manual_seed(self.config.seed)
        if start_from is not None:
            model_config = start_from.config
        model_config = model_config or ModelConfig(input_dim=schema.input_dim)
        if model_config.input_dim != schema.input_dim:
            raise ModelError(
                f"model input_dim {model_config.input_dim} != schema input_dim {schema.input_dim}"
            )
        self.model = StateAutoencoder(model_config).to(self.device)
        if start_from is not None:
            self.model.load_state_dict(start_from.state_dict())
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.config.learning_rate)
        self.criterion = nn.MSELoss()
        self.history: dict[str, list[float]] = {"train_loss": [], "val_loss": []}

    def _tensor(self, features: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(features, dtype=torch.float32, device=self.device)

    def train_epoch(
        self,
        x: torch.Tensor,
        generator: torch.Generator,
        on_batch: Callable[[], object] | None = None,
    ) -> float:
        """One pass over shuffled mini-batches; returns the mean weighted loss.

        `on_batch` is called after each batch (a progress bar's update).
        """
        self.model.train()
        order = torch.randperm(len(x), generator=generator).to(self.device)
        total, batches = 0.0, 0
        for start in range(0, len(x), self.config.batch_size):
            batch = x[order[start : start + self.config.batch_size]]
            self.optimizer.zero_grad(set_to_none=True)
            loss = objective(
                *tier_losses(self.model, batch, self.criterion), self.config.distance_weight
            )
            loss.backward()
            self.optimizer.step()
            total += loss.item()
            batches += 1
            if on_batch is not None:
                on_batch()
        return total / batches

    @torch.no_grad()
    def evaluate(self, features: np.ndarray | torch.Tensor) -> dict[str, float]:
        """Per tier: reconstruction MSE and distance stress; 'loss' is the full objective.

        Stress is measured over pairs within batches of `batch_size` (as trained) and averaged,
        so the objective chosen on is the one optimized.
        """
        self.model.eval()
        x = features if isinstance(features, torch.Tensor) else self._tensor(features)
        size = self.config.batch_size
        sums = np.zeros(6)
        for start in range(0, len(x), size):
            batch = x[start : start + size]
            if len(batch) < 2:
                continue
            reconstruction, stress = tier_losses(self.model, batch, self.criterion)
            sums += len(batch) * np.array([part.item() for part in (*reconstruction, *stress)])
        mse, stress_mean = sums[:3] / len(x), sums[3:] / len(x)
        loss = objective(
            [torch.tensor(m) for m in mse],
            [torch.tensor(v) for v in stress_mean],
            self.config.distance_weight,
        ).item()
        names = ("stm", "im", "ltm")
        return {
            **dict(zip(names, mse.tolist(), strict=True)),
            **{f"{n}_stress": v for n, v in zip(names, stress_mean.tolist(), strict=True)},
            "loss": loss,
        }

    def train(self, train_features: np.ndarray, val_features: np.ndarray) -> dict[str, Any]:
        """Train until `epochs` or until validation loss stops improving for `patience` epochs.

        The best model by validation loss is kept in `self.model`. Returns the metrics.
        """
        x_train, x_val = self._tensor(train_features), self._tensor(val_features)
        revived = revive_saturated_outputs(self.model, x_train)
        if revived:
            log.warning(
                "re-initialized %d output units stuck where the training data needs them: %s",
                len(revived),
                ", ".join(self.schema.slot_names()[i] for i in revived),
            )
        generator = torch.Generator().manual_seed(self.config.seed)
        best_loss, best_epoch, best_state = float("inf"), 0, copy.deepcopy(self.model.state_dict())
        started = time.perf_counter()
        # Per batch, not per epoch: an epoch of a large set on a busy CPU takes minutes.
        per_epoch = math.ceil(len(x_train) / self.config.batch_size)
        progress = tqdm(
            total=self.config.epochs * per_epoch, desc="training", unit="batch",
            disable=not self.config.progress,
        )  # fmt: skip
        for epoch in range(1, self.config.epochs + 1):
            train_loss = self.train_epoch(x_train, generator, on_batch=progress.update)
            val_loss = self.evaluate(x_val)["loss"]
            self.history["train_loss"].append(train_loss)
            self.history["val_loss"].append(val_loss)
            progress.set_postfix(epoch=epoch, train=f"{train_loss:.5f}", val=f"{val_loss:.5f}")
            if val_loss < best_loss:
                best_loss, best_epoch = val_loss, epoch
                best_state = copy.deepcopy(self.model.state_dict())
            elif epoch - best_epoch >= self.config.patience:
                log.info(
                    "early stop at epoch %d: best val loss %.6f at %d", epoch, best_loss, best_epoch
                )
                break
        progress.close()
        seconds = time.perf_counter() - started
        self.model.load_state_dict(best_state)
        epochs_run = len(self.history["train_loss"])
        return {
            "trained": True,
            "val_mse": self.evaluate(x_val),
            "train_mse": self.evaluate(x_train),
            "best_epoch": best_epoch,
            "epochs_run": epochs_run,
            "train_samples": len(train_features),
            "val_samples": len(val_features),
            "train_seconds": seconds,
            "train_samples_per_s": len(train_features) * epochs_run / seconds,
            "device": str(self.device),
            "config": asdict(self.config),
            **self.history,
        }


def train_autoencoder_pipeline(
    training_data: Sequence[Mapping[str, Any]],
    schema: FeatureSchema | None = None,
    batch_size: int = 64,
    epochs: int = 50,
    *,
    broad_states: int = 0,
    start_from: Checkpoint | None = None,
    **train_options: Any,
) -> tuple[AutoencoderTrainer, Checkpoint]:
    """The whole flow as designed: featurize, split 80/20, train, keep the best model.

    Args:
        training_data: agent state dicts, in time order.
        schema: the feature schema; the default one covers the design's fields.
        broad_states: also train on this many states sampled across the whole schema
            (`sampling.sample_states`, seeded with the run's seed), so the model serves agents
            unlike `training_data` too. Each source is split in its own time order.
        start_from: fine-tune this checkpoint's model instead of a new one; its schema is the
            schema (giving another one raises ModelError).
        train_options: further TrainConfig fields (val_fraction, patience, seed, device, ...).

    Returns:
        The trainer and a checkpoint of its best model, ready for checkpoint.save_checkpoint().
    """
    if start_from is not None:
        if schema is not None and schema.to_dict() != start_from.schema.to_dict():
            raise ModelError(
                f"cannot fine-tune model {start_from.version} (schema "
                f"{start_from.schema.fingerprint()}) on schema {schema.fingerprint()}"
            )
        schema = start_from.schema
    schema = schema or default_schema()
    config = TrainConfig(batch_size=batch_size, epochs=epochs, **train_options)
    train_features, val_features = training_split(schema, training_data, broad_states, config)
    trainer = AutoencoderTrainer(
        schema, config=config, start_from=start_from.model if start_from else None
    )
    log.info(
        "training on %d states (%d validation), input_dim=%d, device=%s",
        len(train_features), len(val_features), schema.input_dim, trainer.device,
    )  # fmt: skip
    metrics = trainer.train(train_features, val_features)
    model = trainer.model.to("cpu").eval()
    return trainer, Checkpoint(model, schema, weights_version(model), metrics)


def training_split(
    schema: FeatureSchema,
    training_data: Sequence[Mapping[str, Any]],
    broad_states: int,
    config: TrainConfig,
) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) features of the data and of `broad_states` schema-wide samples.

    Each source is split on its own, so validation holds the later part of both.
    """
    parts = [split_data(schema.extract_batch(training_data), config.val_fraction)]
    if broad_states:
        broad = sample_states(
            schema, broad_states, num_agents=broad_agents(broad_states), seed=config.seed
        )
        parts.append(split_data(schema.extract_batch(broad), config.val_fraction))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def broad_agents(num_states: int) -> int:
    """Sampled agents for `num_states` broad training states: many profiles, 200 states each."""
    return max(50, num_states // 200)
