"""The ingest daemon's lifecycle: load the model, set up Redis, consume until told to stop.

Start: the model is loaded and checked before Redis is touched (an untrained or missing model
is refused unless allowed), then the tier indexes and the consumer group are made sure of.
Run: first this consumer's own pending entries (id 0: what a previous run of the same name, or
this one before a lost connection, read but did not ack), then new ones (id '>'); every
claim_idle_ms/2 the entries other consumers left pending too long are claimed (XAUTOCLAIM).
Batches overlap: a batch's MULTI/EXEC runs on a commit thread while the loop prepares the next
one, which it read before sending that commit (Redis answers a read at once, but only after a
commit already queued). Each commit waits for the one before; after a failure the loop waits
for the one in flight before it re-reads.
Redis going away is an outage: retried with exponential backoff, logged once when it starts
and once when it ends, and followed by a re-read of the own pending entries.
Stop: SIGTERM, SIGINT or `request_stop()` lets the batches in hand (the one committing, the
one read ahead) finish and be acked, then `run()` returns 0. A second signal exits at once
(128 + the signal number); what was read and not acked is delivered again later.
Between batches the loop rewrites the daemon's heartbeat key, appends (once per
stats_interval_s across all daemons) a sample to the stats series (status.py), recreates a
tier index that went missing (checked every INDEX_CHECK_INTERVAL_S), removes the group's
consumers idle past consumer_max_idle_s with nothing pending, and trims the state stream's
entries older than stream_max_age_s that every group acked; with metrics_port
set, a Prometheus endpoint serves its counters and the service's gauges (metrics.py).
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from types import FrameType

import redis
import torch
from redis.backoff import EqualJitterBackoff

from .drift import ReconstructionDrift
from .engine import EmbeddingEngine
from .errors import (
    CONNECTION_ERRORS,
    ConfigError,
    ModelError,
    PartialCommitError,
    StoreError,
    is_connection_error,
)
from .ingest import (
    STAGES,
    Batch,
    Ingestor,
    IngestStats,
    Outcome,
    consumer_client,
    default_consumer_name,
)
from .metrics import DaemonMetrics
from .scheduler import ConsolidationScheduler, JobRun
from .settings import Settings, env_var
from .status import (
    HEARTBEATS_PER_TTL,
    Heartbeat,
    Sample,
    add_sample,
    beat,
    clear_heartbeat,
    sample_due,
    stream_status,
    tier_sizes,
)
from .stream import ReadPosition
from .upkeep import INDEX_CHECK_INTERVAL_S as INDEX_CHECK_INTERVAL_S  # named in the doc above
from .upkeep import Upkeep, attempt, stream_chores

log = logging.getLogger(__name__)

DEFAULT_TORCH_THREADS = 1
"""torch threads of the daemon: Redis needs the other cores on a small box."""

BACKOFF_INITIAL_S = 0.1
"""First delay after Redis fails; it doubles with every failed attempt (each delay is then drawn
between half and all of that)."""

BACKOFF_MAX_S = 10.0
"""Longest delay between two attempts to reach Redis (drawn between 5 and 10 s)."""

DEFAULT_SUMMARY_INTERVAL_S = 30.0
"""How often the daemon logs an INFO summary of what it stored."""


MIN_CLAIM_INTERVAL_S = 0.05
"""Shortest pause between two XAUTOCLAIM sweeps, however small claim_idle_ms is."""

EXIT_OK = 0
"""`run()` finished after a stop request."""

EXIT_REFUSED = 2
"""What `memory-tiers serve` exits with when the model, the indexes or the metrics port do not
fit: a restart cannot help (systemd: RestartPreventExitStatus=2)."""


def load_engine(settings: Settings, allow_untrained: bool = False) -> EmbeddingEngine:
    """The embedding engine of settings.model_file, checked against the tier dimensions.

    Raises:
        ModelError: the checkpoint is missing or untrained (unless `allow_untrained`; then a
            missing one is replaced by random weights), unreadable, or of other dimensions.
    """
    path = settings.model_file
    variable = env_var("model_path")
    fix = (
        f"point {variable} at a trained checkpoint (unset, the default model shipped in the "
        f"package serves), or train one: memory-tiers train --simulate 20000 --out {path} "
        "(memory-tiers serve --allow-untrained would store vectors of random weights)"
    )
    if not path.is_file():
        if not allow_untrained:
            if settings.model_path:
                raise ModelError(f"no model checkpoint at {path} ({variable}): {fix}")
            raise ModelError(
                f"the default model is missing from the installed package ({path}): "
                f"reinstall memory_tiers, or point {variable} at a trained checkpoint"
            )
        log.warning("no model at %s: serving an UNTRAINED model (--allow-untrained)", path)
        return EmbeddingEngine.untrained(dims=settings.dims)
    engine = EmbeddingEngine.from_checkpoint(path, expect_dims=settings.dims)
    if not engine.trained:
        if not allow_untrained:
            raise ModelError(f"{path} holds an untrained model: {fix}")
        log.warning("%s is UNTRAINED: serving it anyway (--allow-untrained)", path)
    return engine


def client_name(consumer: str) -> str:
    """The CLIENT SETNAME of a consumer's connections (no spaces allowed), for CLIENT LIST."""
    return "mt-ingest:" + "".join(
        c if c.isprintable() and not c.isspace() else "_" for c in consumer
    )


def commit_failure(error: BaseException) -> str:
    """What became of a failed step's entries, for a log line: a partly applied commit says
    so itself; after any other failure nothing of the batch was acked."""
    if isinstance(error, PartialCommitError):
        return str(error)
    return f"{error}; its entries stay pending and are read again"


def root_cause(error: BaseException) -> BaseException:
    """The connection error in `error`'s `raise ... from` chain, else the chain's last error."""
    while error.__cause__ is not None and not isinstance(error, CONNECTION_ERRORS):
        error = error.__cause__
    return error


class Backoff:
    """Delays for one outage, `initial` doubling up to `cap`, with jitter; logs its start and its
    end once.

    The delays are redis-py's EqualJitterBackoff: each is random between half and all of the
    doubled one, so daemons that lost Redis together do not all retry in the same instant.
    """

    def __init__(self, initial: float = BACKOFF_INITIAL_S, cap: float = BACKOFF_MAX_S) -> None:
        self.initial = initial
        self.cap = cap
        self.attempts = 0
        self._since = 0.0
        self._delays = EqualJitterBackoff(cap=cap, base=initial)

    def failed(self, error: BaseException) -> float:
        """Count a failed attempt; the delay before the next one."""
        self.attempts += 1
        if self.attempts == 1:
            self._since = time.monotonic()
            cause = root_cause(error)
            log.warning(
                "ingest interrupted (%s: %s); retrying with jittered backoff from %.1f s up to "
                "%.0f s",
                type(cause).__name__, cause, self.initial, self.cap,
            )  # fmt: skip
        return self._delays.compute(self.attempts - 1)

    def succeeded(self) -> None:
        """End the outage, if there was one."""
        if self.attempts:
            log.info(
                "ingest resumed after %d failed attempts in %.1f s",
                self.attempts, time.monotonic() - self._since,
            )  # fmt: skip
            self.attempts = 0


class Daemon:
    """The ingest daemon: one consumer of the state stream, until told to stop.

    Use it as a process (`memory-tiers serve`) or in a thread: `run()` blocks, `request_stop()`
    ends it from anywhere. Signal handlers are installed only when `run()` is called in the
    main thread and `handle_signals` is true.

    Args:
        settings: must name a Redis (settings.redis_url).
        consumer: the consumer's name in the group [default: host-pid]; a restarted daemon of
            the same name resumes its own pending entries at once.
        allow_untrained: serve an untrained or missing model instead of refusing it.
        engine: use this engine instead of loading settings.model_file.
        torch_threads: torch.set_num_threads at start; None leaves it alone.
        handle_signals: install SIGTERM/SIGINT handlers (main thread only).
        summary_interval_s: how often an INFO summary is logged.
        consolidate: run the consolidation jobs (scheduler.py) beside the consumer; each job
            holds a Redis lock, so with many daemons it runs in one of them at a time.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        consumer: str | None = None,
        allow_untrained: bool = False,
        engine: EmbeddingEngine | None = None,
        torch_threads: int | None = DEFAULT_TORCH_THREADS,
        handle_signals: bool = True,
        summary_interval_s: float = DEFAULT_SUMMARY_INTERVAL_S,
        consolidate: bool = True,
    ) -> None:
        if not settings.redis_url:
            raise ConfigError(
                f"the daemon needs a Redis: set {env_var('redis_url')} "
                "(memory-tiers serve starts an embedded one when it is unset)"
            )
        self.settings = settings
        self.redis_url: str = settings.redis_url
        """The Redis it consumes from: settings.redis_url, known to be set."""
        self.consumer = consumer
        self.allow_untrained = allow_untrained
        self.engine = engine
        self.torch_threads = torch_threads
        self.handle_signals = handle_signals
        self.summary_interval_s = summary_interval_s
        self.consolidate = consolidate
        self.ingestor: Ingestor | None = None
        self.metrics: DaemonMetrics | None = None
        self.metrics_port: int | None = None
        """The port the Prometheus endpoint listens on, once `run()` started it."""
        self._stop = threading.Event()
        self._started = threading.Event()
        self._claim_interval_s = max(MIN_CLAIM_INTERVAL_S, settings.claim_idle_ms / 2000)

    @property
    def stats(self) -> IngestStats:
        """Running totals (zeros before `run()` starts)."""
        return self.ingestor.stats if self.ingestor else IngestStats()

    @property
    def stopping(self) -> bool:
        """Whether a stop was requested."""
        return self._stop.is_set()

    def request_stop(self) -> None:
        """Finish the batch in hand, ack it, and return from `run()`; safe from any thread."""
        self._stop.set()

    def wait_started(self, timeout: float | None = None) -> bool:
        """Block until the indexes and the group are set up and consuming began."""
        return self._started.wait(timeout)

    def run(self) -> int:
        """Load the model, set up Redis, consume until stopped; EXIT_OK.

        Raises:
            ModelError: the model is refused (see `load_engine`).
            ConfigError: an index does not fit the settings.
        """
        engine = self.engine or load_engine(self.settings, self.allow_untrained)
        if self.torch_threads:
            torch.set_num_threads(self.torch_threads)
        consumer = self.consumer or default_consumer_name()
        log_settings(self.settings, f"daemon {consumer} starting, model {engine.version}:")
        if self.settings.buckets > 1:
            return self._run_on_cluster(engine, consumer)
        every = self.settings.drift_sample_every
        drift = ReconstructionDrift(engine, every) if every else None
        metrics = self._start_metrics()
        if metrics is not None:
            metrics.watch_drift(drift, engine.validation_mse)
        client = consumer_client(self.redis_url, self.settings, client_name(consumer))
        on_commit = metrics.observe_batch if metrics else None
        ingestor = Ingestor(
            client, engine, self.settings, consumer, on_commit=on_commit, drift=drift
        )
        self.ingestor = ingestor
        chores = _Chores(client, self.settings, ingestor, engine, self.consolidate)
        started = time.monotonic()
        try:
            with self._signals():
                if self._set_up(ingestor):
                    self._started.set()
                    with self._consolidation(engine), frozen_heap():
                        self._consume(ingestor, chores)
        finally:
            chores.stop()
            client.close()
            if metrics is not None:
                metrics.close()
            self._summary(ingestor.stats, IngestStats(), time.monotonic() - started, "stopped")
        return EXIT_OK

    def _run_on_cluster(self, engine: EmbeddingEngine, consumer: str) -> int:
        """With buckets: lease a share of them and consume those (cluster_daemon.py; no
        metrics yet)."""
        from .cluster_daemon import ClusterDaemon

        cluster = redis.RedisCluster.from_url(self.redis_url)
        daemon = ClusterDaemon(
            cluster, engine, self.settings, consumer, self.consolidate, self._stop
        )
        try:
            with self._signals():
                self._started.set()
                daemon.run()
        finally:
            cluster.close()
        return EXIT_OK

    def _start_metrics(self) -> DaemonMetrics | None:
        """The Prometheus endpoint, listening, if settings.metrics_port is set.

        Raises:
            ConfigError: the port cannot be bound (in use, or not allowed).
        """
        port = self.settings.metrics_port
        if port is None:
            return None
        metrics = DaemonMetrics(self.redis_url, self.settings.keys)
        try:
            self.metrics_port = metrics.serve(self.settings.metrics_host, port)
        except OSError as e:
            metrics.close()
            raise ConfigError(
                f"cannot serve metrics on {self.settings.metrics_host}:{port} ({e}): "
                f"choose a free port with {env_var('metrics_port')}"
            ) from e
        self.metrics = metrics
        return metrics

    @contextmanager
    def _consolidation(self, engine: EmbeddingEngine) -> Iterator[None]:
        """The scheduled tier moves, on their own connection, while the daemon consumes."""
        if not self.consolidate:
            yield
            return
        client = redis.Redis.from_url(self.redis_url)
        on_run: Callable[[JobRun], None] | None = self.metrics.observe_job if self.metrics else None
        scheduler = ConsolidationScheduler(client, self.settings, engine, on_run=on_run)
        scheduler.start()
        try:
            yield
        finally:
            scheduler.shutdown(wait=True)
            client.close()

    # -- start ---------------------------------------------------------------------------------

    def _set_up(self, ingestor: Ingestor) -> bool:
        """Indexes and group, retried while Redis is unreachable; False if stopped meanwhile."""
        backoff = Backoff()
        while not self._stop.is_set():
            try:
                ingestor.store.ensure_indexes()
                ingestor.ensure_group()
            except StoreError as e:
                if not is_connection_error(e):
                    raise
                self._stop.wait(backoff.failed(e))
            else:
                backoff.succeeded()
                return True
        return False

    # -- run -----------------------------------------------------------------------------------

    def _consume(self, ingestor: Ingestor, chores: _Chores) -> None:
        """The loop: claim idle entries now and then, read own pending ones, then new ones."""
        backoff = Backoff()
        position = ReadPosition(ingestor.reader)
        next_claim = 0.0
        last_summary, last_stats = time.monotonic(), _copy(ingestor.stats)
        lane = _CommitLane(ingestor)
        try:
            while not self._stop.is_set():
                try:
                    chores.tick()
                    if time.monotonic() >= next_claim:
                        self._claim(ingestor, lane, chores)
                        next_claim = time.monotonic() + self._claim_interval_s
                    self._step(ingestor, lane, position)
                except Exception as e:
                    position.restart()  # re-read whatever was read and not acked
                    for error in (e, *lane.drain()):
                        self._diagnose(ingestor, error)
                    self._stop.wait(backoff.failed(e))
                    continue
                backoff.succeeded()
                if time.monotonic() - last_summary >= self.summary_interval_s:
                    self._summary(ingestor.stats, last_stats, time.monotonic() - last_summary, "")
                    last_summary, last_stats = time.monotonic(), _copy(ingestor.stats)
            self._finish(ingestor, lane, position)
        finally:
            for error in lane.close():
                log.warning("the last commit failed: %s", commit_failure(error))

    def _step(self, ingestor: Ingestor, lane: _CommitLane, position: ReadPosition) -> None:
        """Handle one batch: prepare it, read the next one, then hand this one to the lane.

        The next batch is read before this one's commit is sent, so Redis answers the read at
        once instead of after the commit; and it is prepared while that commit runs.
        """
        messages = position.next_batch(wait=True)
        if not messages:
            lane.wait()  # idle: a failed commit is noticed now, not with the next batch
            return
        batch = ingestor.prepare(messages)
        position.read_ahead = position.next_batch(wait=False)
        lane.commit(batch)

    def _finish(self, ingestor: Ingestor, lane: _CommitLane, position: ReadPosition) -> None:
        """On a stop: commit what was read ahead too, so this run leaves nothing pending."""
        if not position.read_ahead:
            return
        try:
            lane.commit(ingestor.prepare(position.read_ahead))
        except Exception as e:
            log.warning("the last batches were not stored: %s", commit_failure(e))

    def _claim(self, ingestor: Ingestor, lane: _CommitLane, chores: _Chores) -> None:
        """Take over and handle every entry other consumers left pending past claim_idle_ms.

        A dead daemon may have left a long backlog: the heartbeat goes on between its pages.
        """
        lane.wait()
        cursor = "0-0"
        while not self._stop.is_set():
            chores.tick()
            cursor, messages = ingestor.claim_idle(cursor)
            if messages:
                log.info(
                    "claimed %d entries idle over %d ms",
                    len(messages), ingestor.settings.claim_idle_ms,
                )  # fmt: skip
                ingestor.process(messages)
            if cursor == "0-0":
                return

    def _diagnose(self, ingestor: Ingestor, error: Exception) -> None:
        """After a failed step: set the group up again if it vanished; log what is no outage."""
        if is_connection_error(error):
            return
        if "NOGROUP" in str(error):
            # The stream or group vanished (FLUSHALL, DEL): make them again, and the indexes.
            log.warning("consumer group gone (%s); setting it up again", error)
            self._set_up(ingestor)
            return
        if isinstance(error, PartialCommitError):
            log.error("ingest step failed: %s", commit_failure(error))
            return
        log.error("ingest step failed: %s", commit_failure(error), exc_info=error)

    # -- signals and logs ----------------------------------------------------------------------

    @contextmanager
    def _signals(self) -> Iterator[None]:
        """SIGTERM/SIGINT request a stop while `run()` lasts (main thread only)."""
        if not self.handle_signals or threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
        for sig in previous:
            signal.signal(sig, self._on_signal)
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self._stop.is_set():
            os.write(
                2, f"{name} again: exiting now, unacked entries are delivered later\n".encode()
            )
            os._exit(128 + signum)
        log.info("%s: finishing the batch in hand, then stopping (again: exit at once)", name)
        self._stop.set()

    def _summary(self, now: IngestStats, before: IngestStats, seconds: float, what: str) -> None:
        """One INFO line of what was stored since `before`; its numbers are JSON fields too."""
        stored, entries = now.stored - before.stored, now.entries - before.entries
        per_entry = 1e6 / entries if entries else 0.0
        stages = {
            stage: round((now.stage_s[stage] - before.stage_s[stage]) * per_entry, 1)
            for stage in STAGES
        }
        fields = {
            "consumer": self.ingestor.consumer if self.ingestor else "-",
            "stored": stored,
            "dead_letters": now.dead_letters - before.dead_letters,
            "claimed": now.claimed - before.claimed,
            "seconds": round(seconds, 3),
            "states_per_s": round(stored / seconds, 1) if seconds > 0 else 0.0,
            "prepare_s": round(now.prepare_s - before.prepare_s, 3),
            "commit_s": round(now.commit_s - before.commit_s, 3),
            "total_stored": now.stored,
            "total_dead_letters": now.dead_letters,
            "stage_us_per_entry": stages,
        }
        shown = ", ".join(f"{stage} {us:.0f}" for stage, us in stages.items())
        log.info(
            "ingest %(consumer)s%(what)s: %(stored)d stored, %(dead_letters)d dead letters, "
            "%(claimed)d claimed in %(seconds).1f s (%(states_per_s).0f states/s; prepare "
            "%(prepare_s).1f s, commit %(commit_s).1f s; µs per entry: %(stages)s, the last "
            "waiting on Redis, the others CPU); totals %(total_stored)d stored, "
            "%(total_dead_letters)d dead letters",
            {**fields, "what": f" {what}" if what else "", "stages": shown},
            extra=fields,
        )


def log_settings(settings: Settings, what: str) -> None:
    """Log the effective settings, the Redis password masked, as one INFO line.

    In JSON logs they are a `settings` object too (logs.py).
    """
    values = settings.redacted()
    log.info(
        "%s %s",
        what,
        " ".join(f"{name}={value}" for name, value in values.items()),
        extra={"settings": values},
    )


class _Chores:
    """What the consumer loop does between batches besides consuming: rewrite the heartbeat,
    add this interval's stats sample, and the stream's upkeep (upkeep.py).

    Done between batches, so the heartbeat means the loop turns; like every chore, one that
    fails is logged and tried again when next due.
    """

    def __init__(
        self,
        client: redis.Redis,
        settings: Settings,
        ingestor: Ingestor,
        engine: EmbeddingEngine,
        consolidating: bool,
    ) -> None:
        self._client = client
        self._policy = settings.policy() if consolidating else None
        self._settings = settings
        self._ingestor = ingestor
        self._keys = ingestor.keys
        self._engine = engine
        self._started_at = time.time()
        self._beating = False
        self._upkeep = Upkeep([
            ("heartbeat", settings.heartbeat_ttl_s / HEARTBEATS_PER_TTL, self._beat),
            ("stats sample", settings.stats_interval_s, self._sample),
            *stream_chores(client, settings, ingestor),
        ])  # fmt: skip

    def tick(self) -> None:
        """Do each chore that is due."""
        self._upkeep.tick()

    def stop(self) -> None:
        """Delete the heartbeat: this daemon stopped on purpose (best effort)."""
        if self._beating:
            attempt(
                lambda: clear_heartbeat(self._client, self._keys, self._ingestor.consumer),
                "heartbeat removal",
            )

    def _beat(self) -> None:
        stats = self._ingestor.stats
        heartbeat = Heartbeat.here(
            consumer=self._ingestor.consumer,
            model_version=self._engine.version,
            started_at=self._started_at,
            stored=stats.stored,
            dead_letters=stats.dead_letters,
            ttl_s=self._settings.heartbeat_ttl_s,
            reconstruction_mse=drift.mse() if (drift := self._ingestor.drift) else None,
            validation_mse=self._engine.validation_mse,
            ignored_fields=self._ingestor.ignored.report() or None,
            policy=self._policy,
        )
        beat(self._client, self._keys, heartbeat)
        self._beating = True

    def _sample(self) -> None:
        interval = self._settings.stats_interval_s
        if sample_due(self._client, self._keys, interval):
            sample = Sample.of(
                time.time(),
                tier_sizes(self._client, self._keys),
                stream_status(self._client, self._keys),
            )
            add_sample(self._client, self._keys, sample, self._settings.stats_samples)


class _CommitLane:
    """Commits one batch at a time on a worker thread, so the next batch is read and prepared
    meanwhile (the commit mostly waits on Redis, and a socket wait releases the GIL).

    At most one commit is in flight: `commit` waits for the previous one first. Its error is
    raised by the next `commit` or `wait`, or returned by `drain` and `close`; its entries stay
    pending either way, and the loop re-reads them after a failure.
    """

    def __init__(self, ingestor: Ingestor) -> None:
        self._ingestor = ingestor
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mt-commit")
        self._in_flight: Future[Outcome] | None = None

    def commit(self, batch: Batch) -> None:
        """Wait for the commit in flight (raising its error), then start this batch's."""
        self.wait()
        self._in_flight = self._worker.submit(self._ingestor.commit, batch)

    def wait(self) -> None:
        """Wait for the commit in flight, if any; raise its error."""
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is not None:
            in_flight.result()

    def drain(self) -> list[Exception]:
        """Wait for the commit in flight; its error, if it failed, instead of raising it."""
        try:
            self.wait()
        except Exception as e:
            return [e]
        return []

    def close(self) -> list[Exception]:
        """Drain, then stop the worker thread."""
        try:
            return self.drain()
        finally:
            self._worker.shutdown(wait=True)


@contextmanager
def frozen_heap() -> Iterator[None]:
    """What is alive now kept out of the garbage collections while the block runs.

    The daemon freezes its startup objects (torch, the model, the clients: ~200k objects): it
    makes ~100 short-lived objects per state, and each full collection would walk all of those
    startup objects again. The benches freeze their prepared inputs the same way.
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _copy(stats: IngestStats) -> IngestStats:
    return IngestStats(**vars(stats))
