"""memory_tiers: a Redis-native memory tier server for agents.

The public API is what an agent's code needs: the clients and what recall returns, the
settings and key names, the errors, the feature schema and the engine. Everything else is
imported from its module (`memory_tiers.sim`, `memory_tiers.train`, `memory_tiers.server`, ...).

The exports load on first use (PEP 562), so a command such as `memory-tiers check` does not
import torch; `from memory_tiers import MemoryClient` works as usual.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what type checkers see; _EXPORTS says the same for the interpreter
    from .async_client import AsyncMemoryClient
    from .client import AgentMemory, MemoryClient, MergedHit, Recall
    from .constants import TIERS, Keys
    from .engine import EmbeddingEngine, Reconstruction
    from .errors import (
        ConfigError,
        EntryError,
        FeatureError,
        MemoryTiersError,
        ModelError,
        ServerError,
        StoreError,
    )
    from .features import FeatureSchema, default_schema
    from .settings import Settings
    from .store import Hit

_EXPORTS = {
    "async_client": ("AsyncMemoryClient",),
    "client": ("AgentMemory", "MemoryClient", "MergedHit", "Recall"),
    "constants": ("TIERS", "Keys"),
    "engine": ("EmbeddingEngine", "Reconstruction"),
    "errors": (
        "ConfigError", "EntryError", "FeatureError", "MemoryTiersError", "ModelError",
        "ServerError", "StoreError",
    ),
    "features": ("FeatureSchema", "default_schema"),
    "settings": ("Settings",),
    "store": ("Hit",),
}  # fmt: skip
"""Each module of the public API and the names it exports."""

_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
