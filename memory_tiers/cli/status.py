"""Commands that read the service's state: check (health, for probes) and stats."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click
import redis
from redis.exceptions import RedisClusterException

from ..constants import Keys
from ..settings import Settings, redact_url
from .options import require_redis
from .tables import stats_sections

if TYPE_CHECKING:
    from ..status import Snapshot

CHECK_TIMEOUT_S = 5.0
"""How long `check` and `stats` wait for Redis."""


def status_client(url: str, buckets: int = 1) -> redis.Redis | redis.RedisCluster:
    """A client of `url` that gives up after CHECK_TIMEOUT_S, for the operators' commands: of
    a Redis Cluster when there are buckets. Use it in a `with` block, which closes it.

    Raises:
        redis.ConnectionError: no node of the cluster answers (one Redis: raised on first use).
    """
    options = {"socket_timeout": CHECK_TIMEOUT_S, "socket_connect_timeout": CHECK_TIMEOUT_S}
    if buckets == 1:
        return redis.Redis.from_url(url, **options)
    return cluster_client(url, **options)


def cluster_client(url: str, **options: Any) -> redis.RedisCluster:
    """A client of the Redis Cluster that `url` names a node of, with redis-py's `options`.

    Raises:
        redis.ConnectionError: no node answers (RedisCluster connects at once).
    """
    try:
        return redis.RedisCluster.from_url(url, **options)
    except RedisClusterException as e:  # not a RedisError: the commands catch those
        raise redis.ConnectionError(f"{redact_url(url)}: {e}") from e


def read_snapshot(
    client: redis.Redis | redis.RedisCluster, settings: Settings, count_lag_up_to: int = 0
) -> Snapshot:
    """What `check` and `stats` show: of one Redis, or summed over a cluster's buckets."""
    from ..cluster_status import cluster_snapshot
    from ..status import snapshot

    if isinstance(client, redis.RedisCluster):
        return cluster_snapshot(client, settings.keys, settings.buckets, count_lag_up_to)
    return snapshot(client, settings.keys, count_lag_up_to)


@click.command("check")
@click.option(
    "--local",
    is_flag=True,
    help="only a daemon on this host counts as alive (a container's own healthcheck)",
)
@click.pass_obj
def check_command(settings: Settings, local: bool) -> None:
    """Health check: exit 0 if a daemon is alive and the lag is at most MT_MAX_LAG, else 1.

    Alive: its heartbeat key exists (the consumer loop rewrites it every MT_HEARTBEAT_TTL_S/3).
    Lag: stream entries not yet delivered to the daemons' group. Prints one line: why not, or
    what is healthy. For Docker HEALTHCHECK, compose healthchecks and monitoring probes.
    """
    import socket

    from ..status import health

    if not settings.redis_url:
        click.echo("unhealthy: no Redis to check: set MT_REDIS_URL (or --redis-url)")
        raise SystemExit(1)
    keys = settings.keys
    try:
        with status_client(settings.redis_url, settings.buckets) as client:
            status = read_snapshot(client, settings, count_lag_up_to=settings.max_lag + 1)
    except redis.RedisError as e:
        click.echo(f"unhealthy: cannot read Redis at {redact_url(settings.redis_url)}: {e}")
        raise SystemExit(1) from e
    if local:
        host = socket.gethostname()
        beats = [beat for beat in status.heartbeats if beat.host == host]
        status = dataclasses.replace(status, heartbeats=beats)
    healthy, line = health(status, keys, settings.max_lag)
    if not healthy and local:
        line = line.replace("unhealthy:", f"unhealthy on this host ({host}):", 1)
    click.echo(line)
    if not healthy:
        raise SystemExit(1)


@click.command("stats")
@click.option(
    "--top", default=10, show_default=True, type=click.IntRange(min=0), help="agents listed"
)
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="also draw tier sizes and ingest rate over time (the daemons' series) to this PNG",
)
@click.pass_obj
def stats_command(settings: Settings, top: int, plot_path: str | None) -> None:
    """Print tier sizes, the stream's lag and dead letters, live daemons, the memories of each
    model version (after a retrain: what `reencode` has left) and the top agents.

    Per-agent counts read every agent's time index: linear in the number of agents.
    """
    from ..cluster_status import all_agent_counts, all_model_versions
    from ..status import series, top_agents

    url = require_redis(settings, "stats", "the Redis the daemons use")
    if plot_path:
        _require_plots("stats --plot")
    keys, buckets = settings.keys, settings.buckets
    try:
        with status_client(url, buckets) as client:
            status = read_snapshot(client, settings)
            counts = all_agent_counts(client, keys, buckets) if top else {}
            versions = all_model_versions(client, keys, buckets)
            samples = series(client, keys) if plot_path else []
    except redis.RedisError as e:
        raise click.ClickException(f"cannot read Redis at {redact_url(url)}: {e}") from e
    stream = keys.stream if buckets == 1 else keys.bucket("{*}").stream
    sections = stats_sections(
        status, stream, counts if top else None, versions, top_agents(counts, top)
    )
    click.echo("\n\n".join(sections))
    if plot_path:
        _plot_series(samples, plot_path, keys)


def _require_plots(command: str) -> None:
    """A usage error naming `command` when matplotlib (the `plots` extra) is missing."""
    from .. import plots

    if not plots.available():
        raise click.UsageError(f"{command} needs matplotlib: {plots.INSTALL_HINT}")


def _plot_series(samples: Sequence[Any], path: str, keys: Keys) -> None:
    from ..plots import plot_service_series

    if not samples:
        raise click.ClickException(
            f"no samples in {keys.stats_series} yet: a running daemon adds one every "
            "MT_STATS_INTERVAL_S"
        )
    plot_service_series(samples, path, f"memory tiers ({len(samples)} samples)")
    click.echo(f"\nwrote {path} ({len(samples)} samples)")
