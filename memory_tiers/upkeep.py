"""Chores a daemon does between batches besides consuming, each when due: for the stream it
consumes, recreate a dropped tier index, remove idle consumers, trim the acked old part.

A chore that fails is logged and tried again when next due: chores never stop the ingest (an
outage of Redis stops it anyway, and the loop backs off). Each runs at once on the first turn.
The daemon on one Redis runs them for its one stream, beside its heartbeat and stats samples
(daemon.py); the daemon on a cluster runs them for each bucket it holds, on the bucket's node
(cluster_daemon.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import redis

from .errors import MemoryTiersError
from .ingest import Ingestor
from .settings import Settings
from .store import index_states
from .stream import remove_idle_consumers, trim_acked

log = logging.getLogger(__name__)

MAX_TRIM_INTERVAL_S = 30.0
"""Longest pause between two trims of the state stream (shorter for a short stream_max_age_s),
and between two removals of idle consumers (shorter for a short consumer_max_idle_s)."""

INDEX_CHECK_INTERVAL_S = 2.0
"""How often the consumer loop checks that the tier indexes exist (one pipelined FT.INFO of
each): a dropped one is recreated, over the existing records, within about this long."""

Chore = tuple[str, float, Callable[[], None]]
"""(what, every how many seconds, do it)."""


class Upkeep:
    """`chores` run by `tick`, each when due."""

    def __init__(self, chores: Sequence[Chore]) -> None:
        self._chores = list(chores)
        self._due = [0.0] * len(self._chores)

    def tick(self) -> None:
        """Do each chore that is due."""
        now = time.monotonic()
        for i, (what, every_s, chore) in enumerate(self._chores):
            if now >= self._due[i]:
                self._due[i] = now + every_s
                attempt(chore, what)


def attempt(chore: Callable[[], None], what: str) -> None:
    """Run `chore`; a Redis or service error is logged as `what` failing, not raised."""
    try:
        chore()
    except (redis.RedisError, MemoryTiersError) as e:
        log.warning("%s failed: %s", what, e)


def stream_chores(client: redis.Redis, settings: Settings, ingestor: Ingestor) -> list[Chore]:
    """The chores of the stream `ingestor` consumes, on `client`, the node that holds it."""
    keys = ingestor.keys

    def check_indexes() -> None:
        """Recreate a missing tier index (dropped, or Redis restored without it): RediSearch
        then indexes the records already there, in the background."""
        missing = [t for t, state in index_states(client, keys).items() if not state]
        if missing:
            log.warning("tier index(es) %s missing: recreating them", ", ".join(missing))
            ingestor.store.ensure_indexes()

    def remove_idle() -> None:
        max_idle_ms = round(settings.consumer_max_idle_s * 1000)
        removed = remove_idle_consumers(client, keys, max_idle_ms, ingestor.consumer)
        if removed:
            log.info(
                "removed %d idle consumers from %s: %s", len(removed), keys.stream, removed[:10]
            )

    chores: list[Chore] = [
        ("index check", INDEX_CHECK_INTERVAL_S, check_indexes),
        (
            "consumer cleanup",
            min(MAX_TRIM_INTERVAL_S, settings.consumer_max_idle_s / 4),
            remove_idle,
        ),
    ]
    max_age_s = settings.stream_max_age_s
    if max_age_s is not None:

        def trim() -> None:
            trimmed = trim_acked(client, keys, max_age_s, round(time.time() * 1000))
            if trimmed:
                log.debug("trimmed %d acked entries from %s", trimmed, keys.stream)

        chores.append(("stream trim", min(MAX_TRIM_INTERVAL_S, max_age_s / 4), trim))
    return chores
