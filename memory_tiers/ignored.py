"""State fields the model's feature schema does not use, counted so users learn which count.

A state's top-level key that the schema does not name, holding a string, a bool, a list or an
object, changes no slot of the feature vector (unknown numbers fold into the hashed slots):
`{"text": "user likes pizza"}` and `{}` encode alike. The daemon counts such values per key,
logs each new key once, and reports the counts in its heartbeat (`memory-tiers stats`) and
metrics. README, "Which state fields count", says how to add a field to the schema.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter

log = logging.getLogger(__name__)

MAX_NAMES = 1000
"""Distinct keys remembered by name; values of keys past these are counted as others, so ids
used as keys cannot grow the daemon's memory without bound."""

REPORTED_NAMES = 20
"""Keys a heartbeat reports by name (the most frequent); the rest as one sum."""

OTHERS = "(other fields)"
"""The name under which a report sums the keys it does not list."""


class IgnoredFields:
    """Running counts of ignored state values per key, each new key logged once (thread-safe)."""

    def __init__(self, max_names: int = MAX_NAMES) -> None:
        self.max_names = max_names
        self._counts: Counter[str] = Counter()
        self._others = 0
        self._lock = threading.Lock()

    @property
    def total(self) -> int:
        """Values ignored since start."""
        with self._lock:
            return self._others + sum(self._counts.values())

    def add(self, batch: Counter[str]) -> None:
        """Count one batch's ignored values ({key: values}); log the keys not seen before."""
        new = []
        with self._lock:
            for key, n in batch.items():
                if key not in self._counts and len(self._counts) >= self.max_names:
                    self._others += n
                    continue
                if key not in self._counts:
                    new.append(key)
                self._counts[key] += n
        for key in new:
            log.warning(
                "state field %r is not in the model's feature schema: its values (not numbers) "
                "change no vector, so recall cannot tell states apart by it; add it to the "
                "schema and retrain to use it (README, 'Which state fields count')",
                key,
            )

    def report(self, names: int = REPORTED_NAMES) -> dict[str, int]:
        """{key: values ignored} of the most frequent keys, the rest summed under OTHERS."""
        with self._lock:
            top = dict(self._counts.most_common(names))
            rest = self._others + sum(self._counts.values()) - sum(top.values())
        if rest:
            top[OTHERS] = rest
        return top
