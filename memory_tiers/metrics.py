"""The daemon's Prometheus endpoint (prometheus-client), on settings.metrics_port.

Two kinds of series:

- this daemon's own, counted as it works: states ingested, dead letters, batch latency,
  consolidation moves, deletions and pass durations (counters reset when the process restarts,
  as Prometheus expects), and the sampled reconstruction error of the states it encodes beside
  its model's held-out error (drift.py);
- the service's, read from Redis at each scrape through `status.py`, the same numbers
  `memory-tiers stats` prints: stream lag and pending (XINFO GROUPS), stream and dead-letter
  lengths, tier sizes, live daemons. When Redis cannot be reached, `memory_tiers_redis_up` is 0
  and those series are left out of the scrape.

Each `DaemonMetrics` has its own registry, so several daemons in one process never collide.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterator, Mapping
from wsgiref.simple_server import WSGIServer

import redis
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .constants import TIERS, Keys
from .drift import ReconstructionDrift
from .ingest import Batch, Outcome
from .scheduler import JobRun
from .status import snapshot

log = logging.getLogger(__name__)

BATCH_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
"""Batch latency buckets (prepare + commit): ~1 ms for a few states to seconds for big ones."""

PASS_SECONDS_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0)
"""Consolidation pass duration buckets."""

SCRAPE_TIMEOUT_S = 2.0
"""How long a scrape waits for Redis before it reports memory_tiers_redis_up 0."""


class DaemonMetrics:
    """One daemon's metrics: feed it batches and job runs; `serve` exposes them over HTTP.

    Args:
        redis_url: the Redis whose stream and tiers each scrape reads (its own connection).
        keys: the deployment's key names.
    """

    def __init__(self, redis_url: str, keys: Keys) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.ingested = Counter(
            "memory_tiers_states_ingested",
            "States this daemon stored in STM.",
            registry=self.registry,
        )
        self.dead_letters = Counter(
            "memory_tiers_dead_letters",
            "Stream entries this daemon moved to the dead letters, with a reason.",
            registry=self.registry,
        )
        self.ignored_fields = Counter(
            "memory_tiers_state_fields_ignored",
            "Values of state fields the model's feature schema does not use (they change no "
            "vector); the daemon's log and memory-tiers stats name the fields.",
            registry=self.registry,
        )
        self.batch_seconds = Histogram(
            "memory_tiers_batch_seconds",
            "Time to prepare (decode, featurize, encode) and commit one batch.",
            buckets=BATCH_SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.moved = Counter(
            "memory_tiers_consolidation_moved",
            "Memories this daemon's consolidation jobs moved to the next tier.",
            ["job"],
            registry=self.registry,
        )
        self.deleted = Counter(
            "memory_tiers_consolidation_deleted",
            "Memories this daemon's retention job deleted from LTM.",
            ["job"],
            registry=self.registry,
        )
        self.reencoded = Counter(
            "memory_tiers_consolidation_reencoded",
            "Moved memories of another model version, encoded again from their raw state.",
            ["job"],
            registry=self.registry,
        )
        self.pass_seconds = Histogram(
            "memory_tiers_consolidation_seconds",
            "Duration of one consolidation pass that held its lock.",
            ["job", "outcome"],
            buckets=PASS_SECONDS_BUCKETS,
            registry=self.registry,
        )
        self._client = redis.Redis.from_url(
            redis_url, socket_timeout=SCRAPE_TIMEOUT_S, socket_connect_timeout=SCRAPE_TIMEOUT_S
        )
        self.registry.register(_ServiceCollector(self._client, keys))
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def watch_drift(
        self, drift: ReconstructionDrift | None, validation_mse: Mapping[str, float] | None
    ) -> None:
        """Export the sampled reconstruction error beside the model's held-out error, per tier.

        The sampled error is read at each scrape: NaN until the first state was sampled.
        """
        sampled = Gauge(
            "memory_tiers_reconstruction_mse",
            "Recent reconstruction MSE of a sample of the states this daemon encodes.",
            ["tier"],
            registry=self.registry,
        )
        held_out = Gauge(
            "memory_tiers_model_validation_mse",
            "Reconstruction MSE of the served model on its training run's held-out states.",
            ["tier"],
            registry=self.registry,
        )
        for tier in TIERS:
            if drift is not None:
                sampled.labels(tier).set_function(_tier_reading(drift, tier))
            if validation_mse:
                held_out.labels(tier).set(validation_mse[tier])

    def observe_batch(self, batch: Batch, outcome: Outcome) -> None:
        """Count one committed batch (called on the commit thread)."""
        self.ingested.inc(outcome.stored)
        self.dead_letters.inc(outcome.dead_letters)
        self.ignored_fields.inc(batch.ignored_fields)
        self.batch_seconds.observe(batch.prepare_s + outcome.commit_s)

    def observe_job(self, run: JobRun) -> None:
        """Count one consolidation pass (called on a scheduler thread)."""
        outcome = "ok" if run.result is not None else "failed"
        self.pass_seconds.labels(run.job, outcome).observe(run.finished - run.started)
        if run.result is not None:
            self.moved.labels(run.job).inc(run.result.moved)
            self.deleted.labels(run.job).inc(run.result.deleted)
            self.reencoded.labels(run.job).inc(run.result.reencoded)

    def serve(self, host: str, port: int) -> int:
        """Start the HTTP endpoint (/metrics) in a background thread; the port it listens on."""
        self._server, self._thread = start_http_server(port, host, registry=self.registry)
        bound = int(self._server.server_port)
        log.info("Prometheus metrics on http://%s:%d/metrics", host or "0.0.0.0", bound)
        return bound

    def close(self) -> None:
        """Stop the endpoint, if it runs, and close the scrape connection."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._client.close()


def _tier_reading(drift: ReconstructionDrift, tier: str) -> Callable[[], float]:
    """A gauge callback: the drift's current error at `tier`, NaN before the first sample."""
    return lambda: (drift.mse() or {}).get(tier, math.nan)


class _ServiceCollector(Collector):
    """The service's gauges, read from Redis at each scrape."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self._client = client
        self._keys = keys

    def describe(self) -> list[GaugeMetricFamily]:
        return []  # the families depend on whether Redis answers: none declared up front

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily(
            "memory_tiers_redis_up", "Whether the last scrape could read Redis (1) or not (0)."
        )
        try:
            status = snapshot(self._client, self._keys)
        except redis.RedisError as e:
            log.warning("metrics scrape could not read Redis: %s", e)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        stream = status.stream
        for name, help_text, value in (
            ("stream_lag", "Stream entries not yet delivered to the consumer group.", stream.lag),
            ("stream_pending", "Entries delivered to a daemon and not yet acked.", stream.pending),
            ("stream_length", "Entries in the state stream.", stream.length),
            ("dead_letter_length", "Entries in the dead-letter stream.", stream.dead_letters),
            ("live_daemons", "Daemons whose heartbeat key exists.", len(status.heartbeats)),
        ):
            if value is not None:
                yield GaugeMetricFamily(f"memory_tiers_{name}", help_text, value=value)
        tiers = GaugeMetricFamily(
            "memory_tiers_tier_memories", "Memories stored in each tier.", labels=["tier"]
        )
        for tier, size in status.tiers.items():
            tiers.add_metric([tier], size)
        yield tiers
