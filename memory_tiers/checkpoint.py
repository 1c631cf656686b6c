"""A trained model on disk: save, load and version it together with its feature schema.

Serving (engine, client, CLI) reads models through this module alone, so it never imports
the trainer or tqdm. A checkpoint is a plain dict of tensors and JSON-like values, so it loads
with `torch.load(weights_only=True)`: no pickled code runs when a model file is read.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import MemoryTiersError, ModelError
from .features import FeatureSchema
from .model import ModelConfig, StateAutoencoder

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
"""Version of the checkpoint dict layout; load_checkpoint refuses others."""


@dataclass
class Checkpoint:
    """A trained model with everything needed to use it safely."""

    model: StateAutoencoder
    schema: FeatureSchema
    version: str
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def config(self) -> ModelConfig:
        """The model's dimensions."""
        return self.model.config


def pick_device(requested: str | None = None) -> torch.device:
    """The requested device, else CUDA when available, else the CPU."""
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def weights_version(model: nn.Module) -> str:
    """A model version id: the first 12 hex digits of a hash of its weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


def save_checkpoint(checkpoint: Checkpoint, path: str | Path) -> Path:
    """Write a checkpoint that torch.load(weights_only=True) can read."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": checkpoint.version,
        "model_config": checkpoint.config.to_dict(),
        "schema": checkpoint.schema.to_dict(),
        "metrics": checkpoint.metrics,
        "state_dict": {k: v.detach().cpu() for k, v in checkpoint.model.state_dict().items()},
    }
    torch.save(payload, path)
    log.info("checkpoint %s saved to %s", checkpoint.version, path)
    return path


def load_checkpoint(
    path: str | Path,
    expect_schema: FeatureSchema | None = None,
    expect_dims: tuple[int, int, int] | None = None,
    device: str | torch.device = "cpu",
) -> Checkpoint:
    """Read a checkpoint with weights_only=True and check it fits what the caller expects.

    Args:
        expect_schema: refuse a checkpoint trained on another feature schema.
        expect_dims: refuse a checkpoint whose (STM, IM, LTM) dimensions differ (the indexes').

    Raises:
        ModelError: missing, unreadable, of another format, or not matching expectations.
    """
    path = Path(path)
    payload = _read_checkpoint(path, device)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ModelError(f"{path} is not a memory_tiers checkpoint (format {CHECKPOINT_FORMAT})")
    missing = [k for k in _CHECKPOINT_KEYS if k not in payload]
    if missing:
        raise ModelError(f"{path} is an incomplete checkpoint: no {', '.join(missing)}")
    try:
        schema = FeatureSchema.from_dict(payload["schema"])
        config = ModelConfig.from_dict(payload["model_config"])
    except (MemoryTiersError, TypeError, ValueError, KeyError) as e:
        raise ModelError(
            f"{path} holds a schema or model config this version cannot read: {e}"
        ) from e
    _check_expectations(path, schema, config, expect_schema, expect_dims)
    model = StateAutoencoder(config)
    try:
        model.load_state_dict(payload["state_dict"])
    except (RuntimeError, TypeError, AttributeError) as e:
        raise ModelError(
            f"{path}: its weights do not fit its own model config ({_one_line(e)})"
        ) from e
    return Checkpoint(model.to(device).eval(), schema, payload["version"], payload["metrics"])


_CHECKPOINT_KEYS = ("schema", "model_config", "state_dict", "version", "metrics")


def _read_checkpoint(path: Path, device: str | torch.device) -> Any:
    """What `path` holds, read safely (weights_only=True: no pickled code runs).

    torch's own errors are replaced by what they mean here: its advice to load with
    weights_only=False would run whatever code the file carries, and the file is not a bug
    to report to torch.

    Raises:
        ModelError: one line naming the file and what is wrong with it.
    """
    if path.is_dir():
        raise ModelError(f"model checkpoint {path} is a folder, not a file")
    if path.is_file() and path.stat().st_size == 0:
        raise ModelError(f"model checkpoint {path} is empty")
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError as e:
        raise ModelError(f"model checkpoint not found: {path}") from e
    except OSError as e:
        raise ModelError(f"cannot read model checkpoint {path}: {e.strerror or e}") from e
    except Exception as e:
        raise ModelError(f"model checkpoint {path} {_load_failure(e)}") from e
    return payload


def _load_failure(error: Exception) -> str:
    """Why torch.load failed on an existing file, in words, without torch's advice."""
    text = str(error)
    if "Weights only load failed" in text:
        return (
            "holds Python objects besides tensors and plain data, which a safe load refuses: "
            "it is not a memory_tiers checkpoint (checkpoint.save_checkpoint writes only those)"
        )
    if "zip archive" in text or "PytorchStreamReader" in text:
        return "is corrupt or truncated (not a complete PyTorch file: copy it again)"
    return "is not a PyTorch checkpoint file (neither a torch.save zip archive nor a legacy one)"


def _one_line(error: BaseException) -> str:
    """An error's message on one line, at most 160 characters."""
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    text = text or type(error).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _check_expectations(
    path: Path,
    schema: FeatureSchema,
    config: ModelConfig,
    expect_schema: FeatureSchema | None,
    expect_dims: tuple[int, int, int] | None,
) -> None:
    if expect_schema is not None and schema.to_dict() != expect_schema.to_dict():
        raise ModelError(
            f"{path} was trained on feature schema {schema.fingerprint()}, "
            f"expected {expect_schema.fingerprint()}"
        )
    dims = (config.stm_dim, config.im_dim, config.ltm_dim)
    if expect_dims is not None and dims != tuple(expect_dims):
        raise ModelError(
            f"{path} has tier dimensions STM/IM/LTM {dims}, expected {tuple(expect_dims)} "
            "(MT_STM_DIM, MT_IM_DIM, MT_LTM_DIM and the indexes must match the model)"
        )
