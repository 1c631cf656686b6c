"""Shared by the consolidation and scheduler tests: an engine whose compress runs a hook first."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import numpy as np

from memory_tiers import EmbeddingEngine


class HookedEngine:
    """An engine whose compress calls `hook(call number)` first (to fail, sleep, or race);
    everything else is the engine's own."""

    def __init__(self, engine: EmbeddingEngine, hook: Callable[[int], None]) -> None:
        self.engine = engine
        self.hook = hook
        self.calls = 0

    def compress(self, vectors: np.ndarray, from_tier: str) -> np.ndarray:
        self.calls += 1
        self.hook(self.calls)
        return self.engine.compress(vectors, from_tier)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)


def hooked(engine: EmbeddingEngine, hook: Callable[[int], None]) -> EmbeddingEngine:
    return cast(EmbeddingEngine, HookedEngine(engine, hook))
