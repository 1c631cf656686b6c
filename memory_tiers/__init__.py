"""memory_tiers: a Redis-native memory tier server for agents.

The exports load on first use (PEP 562), so a command such as `memory-tiers check` does not
import torch; `from memory_tiers import MemoryClient` works as usual.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .constants import TIERS, Keys
from .errors import (
    ConfigError,
    EntryError,
    FeatureError,
    MemoryTiersError,
    ModelError,
    ServerError,
    StoreError,
)
from .settings import Settings, TierSettings

if TYPE_CHECKING:
    from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
    from .client import AgentMemory, MemoryClient, MergedHit, Recall
    from .daemon import Daemon
    from .engine import EmbeddingEngine, Reconstruction
    from .features import (
        DEFAULT_SCHEMA,
        CategoricalField,
        FeatureSchema,
        GridField,
        NumericField,
        default_schema,
    )
    from .model import ModelConfig, StateAutoencoder
    from .protocol import StreamEntry, action_to_state, decode_entry, encode_entry
    from .scheduler import ConsolidationScheduler
    from .server import EmbeddedRedis
    from .sim import Simulation, collect_training_data, simulate_states
    from .store import Hit, MemoryRecord, TierStore
    from .train import AutoencoderTrainer, TrainConfig, train_autoencoder_pipeline

_LAZY = {
    "AgentMemory": "client",
    "MemoryClient": "client",
    "MergedHit": "client",
    "Recall": "client",
    "Daemon": "daemon",
    "EmbeddingEngine": "engine",
    "Reconstruction": "engine",
    "action_to_state": "protocol",
    "DEFAULT_SCHEMA": "features",
    "CategoricalField": "features",
    "FeatureSchema": "features",
    "GridField": "features",
    "NumericField": "features",
    "default_schema": "features",
    "ModelConfig": "model",
    "StateAutoencoder": "model",
    "StreamEntry": "protocol",
    "decode_entry": "protocol",
    "encode_entry": "protocol",
    "ConsolidationScheduler": "scheduler",
    "EmbeddedRedis": "server",
    "Simulation": "sim",
    "collect_training_data": "sim",
    "simulate_states": "sim",
    "Hit": "store",
    "MemoryRecord": "store",
    "TierStore": "store",
    "AutoencoderTrainer": "train",
    "Checkpoint": "checkpoint",
    "TrainConfig": "train",
    "load_checkpoint": "checkpoint",
    "save_checkpoint": "checkpoint",
    "train_autoencoder_pipeline": "train",
}
"""Each lazy export and the module that defines it."""


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "DEFAULT_SCHEMA",
    "TIERS",
    "AgentMemory",
    "AutoencoderTrainer",
    "CategoricalField",
    "Checkpoint",
    "ConfigError",
    "ConsolidationScheduler",
    "Daemon",
    "EmbeddedRedis",
    "EmbeddingEngine",
    "EntryError",
    "FeatureError",
    "FeatureSchema",
    "GridField",
    "Hit",
    "Keys",
    "MemoryClient",
    "MemoryRecord",
    "MemoryTiersError",
    "MergedHit",
    "ModelConfig",
    "ModelError",
    "NumericField",
    "Recall",
    "Reconstruction",
    "ServerError",
    "Settings",
    "Simulation",
    "StateAutoencoder",
    "StoreError",
    "StreamEntry",
    "TierSettings",
    "TierStore",
    "TrainConfig",
    "action_to_state",
    "collect_training_data",
    "decode_entry",
    "default_schema",
    "encode_entry",
    "load_checkpoint",
    "save_checkpoint",
    "simulate_states",
    "train_autoencoder_pipeline",
]
