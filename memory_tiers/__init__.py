"""memory_tiers: a Redis-native memory tier server for agents."""

from .client import AgentMemory, MemoryClient, MergedHit, Recall
from .constants import TIERS, Keys
from .daemon import Daemon
from .engine import EmbeddingEngine, Reconstruction, action_to_state
from .errors import (
    ConfigError,
    EntryError,
    FeatureError,
    MemoryTiersError,
    ModelError,
    ServerError,
    StoreError,
)
from .features import (
    DEFAULT_SCHEMA,
    CategoricalField,
    FeatureSchema,
    GridField,
    NumericField,
    default_schema,
)
from .model import ModelConfig, StateAutoencoder
from .protocol import StreamEntry, decode_entry, encode_entry
from .scheduler import ConsolidationScheduler
from .server import EmbeddedRedis
from .settings import Settings, TierSettings
from .sim import Simulation, collect_training_data, simulate_states
from .store import Hit, MemoryRecord, TierStore
from .train import (
    AutoencoderTrainer,
    Checkpoint,
    TrainConfig,
    load_checkpoint,
    save_checkpoint,
    train_autoencoder_pipeline,
)

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
