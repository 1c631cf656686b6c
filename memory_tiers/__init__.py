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

if TYPE_CHECKING:  # what type checkers see (`X as X`: an explicit re-export for mypy)
    from .async_client import (
        AsyncMemoryClient as AsyncMemoryClient,
    )
    from .client import (
        AgentMemory as AgentMemory,
    )
    from .client import (
        MemoryClient as MemoryClient,
    )
    from .client import (
        MergedHit as MergedHit,
    )
    from .client import (
        Recall as Recall,
    )
    from .constants import (
        TIERS as TIERS,
    )
    from .constants import (
        Keys as Keys,
    )
    from .engine import (
        EmbeddingEngine as EmbeddingEngine,
    )
    from .engine import (
        Reconstruction as Reconstruction,
    )
    from .errors import (
        ConfigError as ConfigError,
    )
    from .errors import (
        EntryError as EntryError,
    )
    from .errors import (
        FeatureError as FeatureError,
    )
    from .errors import (
        MemoryTiersError as MemoryTiersError,
    )
    from .errors import (
        ModelError as ModelError,
    )
    from .errors import (
        ServerError as ServerError,
    )
    from .errors import (
        StoreError as StoreError,
    )
    from .features import (
        FeatureSchema as FeatureSchema,
    )
    from .features import (
        default_schema as default_schema,
    )
    from .settings import (
        Settings as Settings,
    )
    from .store import (
        Hit as Hit,
    )

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
