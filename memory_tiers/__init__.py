"""memory_tiers: a Redis-native memory tier server for agents."""

from .constants import TIERS, Keys
from .errors import (
    ConfigError,
    FeatureError,
    MemoryTiersError,
    ModelError,
    ServerError,
    StoreError,
)
from .server import EmbeddedRedis
from .settings import Settings, TierSettings

__all__ = [
    "TIERS",
    "ConfigError",
    "EmbeddedRedis",
    "FeatureError",
    "Keys",
    "MemoryTiersError",
    "ModelError",
    "ServerError",
    "Settings",
    "StoreError",
    "TierSettings",
]
