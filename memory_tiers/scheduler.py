"""Scheduled consolidation: one APScheduler job per source tier, each under a Redis lock.

Jobs: `consolidate-stm` (STM -> IM), `consolidate-im` (IM -> LTM) and, when LTM has a retention
policy, `retain-ltm`; a tier whose policy is off gets no job. Each runs every
settings.consolidate_interval_s with max_instances=1 (a pass still running makes APScheduler
skip the next run) and coalesce=True (runs missed while the process was busy or asleep become
one); misfire_grace_time=None lets that one run however late it is.

Several daemons may each run a scheduler: a job runs only in the daemon that holds its lock
(`Keys.lock(job)`), redis-py's `Lock`: SET NX PX with a random token, the rq scheduler's habit.
The holder renews it between batches (`reacquire`, a compare-and-pexpire script) and stops the
pass if renewal fails; only the holder's token releases it (compare-and-delete). A crashed
holder's lock expires after LOCK_TTL_S. The lock keeps passes from competing; correctness does
not depend on it: every batch of a pass is a WATCHed MULTI/EXEC (see tiers.py), so even two
passes at once leave each memory in exactly one tier.

Use in a daemon:

    scheduler = ConsolidationScheduler(client, settings, engine)
    scheduler.start()                # background threads; returns at once
    ...
    scheduler.shutdown(wait=True)    # passes stop after their current batch
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
from apscheduler.schedulers.background import BackgroundScheduler
from redis.exceptions import LockError, LockNotOwnedError
from redis.lock import Lock

from .engine import EmbeddingEngine
from .errors import MemoryTiersError, is_connection_error
from .settings import Settings
from .store import TierStore
from .tiers import PassResult, TierPolicy, consolidate, scheduled_tiers

log = logging.getLogger(__name__)

LOCK_TTL_S = 30.0
"""How long a job lock lives without renewal: a crashed holder blocks the job this long."""

LOCK_POLL_S = 0.05
"""Pause between two tries of a blocking lock acquire."""

HISTORY_SIZE = 100
"""Recent job runs a scheduler remembers (`ConsolidationScheduler.history`)."""

JOB_NAMES = {"stm": "consolidate-stm", "im": "consolidate-im", "ltm": "retain-ltm"}
"""The scheduled job (and lock) name of each source tier."""


class _Outage:
    """Redis unreachable for the jobs: one warning when it starts, one line when it ends,
    however many runs fail in between (every job, every interval)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._since: float | None = None
        self._failures = 0

    def failed(self, job: str, error: BaseException) -> None:
        """Count a run that could not reach Redis; warn if it is the outage's first."""
        with self._lock:
            first = self._since is None
            if first:
                self._since = time.monotonic()
            self._failures += 1
        if first:
            log.warning(
                "consolidation paused: %s cannot reach Redis (%s: %s); runs retry on schedule",
                job, type(error).__name__, error,
            )  # fmt: skip

    def ended(self) -> None:
        """Redis answered: end the outage, if there was one."""
        if self._since is None:
            return
        with self._lock:
            since, failures, self._since, self._failures = self._since, self._failures, None, 0
        if since is not None:
            log.info(
                "consolidation resumed: Redis answered again after %.1f s (%d runs skipped)",
                time.monotonic() - since, failures,
            )  # fmt: skip


@dataclass(frozen=True)
class JobRun:
    """One run of a job that held its lock."""

    job: str
    tier: str
    started_at: float
    """Wall clock (time.time()) when the lock was taken."""
    started: float
    """time.monotonic() when the lock was taken: comparable within one process."""
    finished: float
    """time.monotonic() just before the lock was released."""
    result: PassResult | None
    """None when the pass failed."""
    error: str | None = None


class ConsolidationScheduler:
    """The consolidation jobs of one daemon: scheduled in the background, or run at once.

    Args:
        client: Redis client for locks, selection and moves (thread-safe pool; jobs run in
            scheduler threads). Any protocol `TierStore` accepts.
        settings: tier policies, consolidate_interval_s and consolidate_batch.
        engine: compresses vectors one tier down; its dims must match the settings.
        lock_ttl_s: job lock time to live (renewed between batches).
        on_run: called with each run that held its lock, on the thread that ran it (the
            daemon's metrics count them there).
    """

    def __init__(
        self,
        client: redis.Redis,
        settings: Settings,
        engine: EmbeddingEngine,
        *,
        lock_ttl_s: float = LOCK_TTL_S,
        on_run: Callable[[JobRun], None] | None = None,
    ) -> None:
        self.client = client
        self.settings = settings
        self.engine = engine
        self.store = TierStore(client, settings, engine.schema)
        self.keys = settings.keys
        self.lock_ttl_s = lock_ttl_s
        self.on_run = on_run
        self.tiers = scheduled_tiers(settings)
        """Source tiers that get a job (their policy is on), in tier order."""
        self.lock_busy: Counter[str] = Counter()
        """Per job: runs skipped because another process held the lock."""
        self._history: deque[JobRun] = deque(maxlen=HISTORY_SIZE)
        self._history_lock = threading.Lock()
        self._stop = threading.Event()
        self._scheduler: Any = None
        self._outage = _Outage()

    @property
    def running(self) -> bool:
        """Whether `start()` was called and `shutdown()` not yet."""
        return self._scheduler is not None

    @property
    def history(self) -> list[JobRun]:
        """The last HISTORY_SIZE runs that held their lock, oldest first."""
        with self._history_lock:
            return list(self._history)

    def start(self) -> None:
        """Schedule one job per tier in tiers, every consolidate_interval_s, in the background."""
        if self._scheduler is not None:
            raise RuntimeError("consolidation scheduler already started")
        self._stop.clear()
        # Each pass logs one line of its own; APScheduler's two per run would only repeat it,
        # and its "Adding job tentatively" per job at start says what the line below says.
        for name in ("apscheduler.executors.default", "apscheduler.scheduler"):
            logging.getLogger(name).setLevel(logging.WARNING)
        scheduler = BackgroundScheduler(daemon=True)
        for tier in self.tiers:
            scheduler.add_job(
                self._scheduled,
                "interval",
                args=[tier],
                seconds=self.settings.consolidate_interval_s,
                id=JOB_NAMES[tier],
                name=JOB_NAMES[tier],
                max_instances=1,
                coalesce=True,
                misfire_grace_time=None,
            )
        scheduler.start()
        self._scheduler = scheduler
        log.info(
            "consolidation scheduled every %.1f s: %s",
            self.settings.consolidate_interval_s,
            ", ".join(TierPolicy.from_settings(self.settings, t).describe() for t in self.tiers)
            or "nothing (every policy off)",
        )

    def shutdown(self, wait: bool = True) -> None:
        """Stop scheduling; running passes stop after their batch in hand (waited for if `wait`)."""
        self._stop.set()
        scheduler, self._scheduler = self._scheduler, None
        if scheduler is not None:
            scheduler.shutdown(wait=wait)

    def run_now(self, wait_s: float | None = None) -> dict[str, PassResult]:
        """Run each job once, now, in this thread, each under its lock; {source tier: result}.

        Args:
            wait_s: how long to wait for a lock another process holds [default: lock_ttl_s];
                a job whose lock stays busy is left out of the result (and logged).

        Raises:
            MemoryTiersError: a pass failed (Redis, model dims); earlier results are lost.
        """
        wait = self.lock_ttl_s if wait_s is None else wait_s
        results = {}
        for tier in self.tiers:
            result = self.run_job(tier, blocking=True, timeout_s=wait, raise_errors=True)
            if result is not None:
                results[tier] = result
        return results

    def run_job(
        self,
        tier: str,
        *,
        blocking: bool = False,
        timeout_s: float | None = None,
        raise_errors: bool = False,
    ) -> PassResult | None:
        """One pass over `tier` under its job lock; None if the lock is busy (or it failed)."""
        job = JOB_NAMES[tier]
        lock = self.job_lock(job)
        try:
            acquired = lock.acquire(blocking=blocking, blocking_timeout=timeout_s)
        except redis.RedisError as e:
            if raise_errors or not is_connection_error(e):
                raise
            self._outage.failed(job, e)
            return None
        self._outage.ended()
        if not acquired:
            self.lock_busy[job] += 1
            log.debug("%s: lock held by another process, skipped", job)
            return None
        started_at, started = time.time(), time.monotonic()
        result: PassResult | None = None
        error: str | None = None
        try:
            result = consolidate(
                self.client, self.store, self.engine, self.settings, tier,
                keep_going=lambda: self._keep_going(job, lock),
            )  # fmt: skip
        except Exception as e:
            error = f"{type(e).__name__}: {e}"
            if raise_errors:
                raise
            if is_connection_error(e):
                self._outage.failed(job, e)
            elif isinstance(e, MemoryTiersError | redis.RedisError):
                log.error("%s failed: %s", job, error)
            else:
                log.exception("%s failed", job)
        finally:
            run = JobRun(job, tier, started_at, started, time.monotonic(), result, error)
            with self._history_lock:
                self._history.append(run)
            if self.on_run is not None:
                self.on_run(run)
            self._release(job, lock)
        return result

    def job_lock(self, job: str) -> Lock:
        """The Redis lock of one job: only its holder renews or releases it."""
        # thread_local=False: the token is the Lock object's own, whichever thread runs it.
        return Lock(
            self.client, self.keys.lock(job), timeout=self.lock_ttl_s, sleep=LOCK_POLL_S,
            thread_local=False,
        )  # fmt: skip

    def _release(self, job: str, lock: Lock) -> None:
        """Release a job's lock; if Redis is gone meanwhile, its TTL releases it."""
        try:
            if lock.local.token is not None:
                lock.release()
        except LockNotOwnedError:
            log.warning("%s: lock had expired before release", job)
        except redis.RedisError as e:
            if not is_connection_error(e):
                raise
            self._outage.failed(job, e)

    def _scheduled(self, tier: str) -> None:
        if not self._stop.is_set():
            self.run_job(tier)

    def _keep_going(self, job: str, lock: Lock) -> bool:
        if self._stop.is_set():
            return False
        try:
            lock.reacquire()  # the full TTL again, only while the key holds our token
        except LockError:
            log.warning("%s: lost its lock mid-pass; stopping (another process may go on)", job)
            return False
        return True
