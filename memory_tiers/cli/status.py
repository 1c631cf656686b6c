"""Commands that read the service's state: check (health, for probes) and stats."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import click
import redis

from ..constants import Keys
from ..settings import Settings, redact_url
from .options import require_redis
from .tables import stats_sections

CHECK_TIMEOUT_S = 5.0
"""How long `check` and `stats` wait for Redis."""


def status_client(url: str) -> redis.Redis:
    """A client of `url` that gives up after CHECK_TIMEOUT_S, for commands that only read."""
    return redis.Redis.from_url(
        url, socket_timeout=CHECK_TIMEOUT_S, socket_connect_timeout=CHECK_TIMEOUT_S
    )


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

    from ..status import health, snapshot

    if not settings.redis_url:
        click.echo("unhealthy: no Redis to check: set MT_REDIS_URL (or --redis-url)")
        raise SystemExit(1)
    keys = settings.keys
    client = status_client(settings.redis_url)
    try:
        status = snapshot(client, keys, count_lag_up_to=settings.max_lag + 1)
    except redis.RedisError as e:
        click.echo(f"unhealthy: cannot read Redis at {redact_url(settings.redis_url)}: {e}")
        raise SystemExit(1) from e
    finally:
        client.close()
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
    from ..status import agent_counts, model_versions, series, snapshot, top_agents

    url = require_redis(settings, "stats", "the Redis the daemons use")
    if plot_path:
        _require_plots("stats --plot")
    keys = settings.keys
    client = status_client(url)
    try:
        status = snapshot(client, keys)
        counts = agent_counts(client, keys) if top else {}
        versions = model_versions(client, keys)
        samples = series(client, keys) if plot_path else []
    except redis.RedisError as e:
        raise click.ClickException(f"cannot read Redis at {redact_url(url)}: {e}") from e
    finally:
        client.close()
    sections = stats_sections(
        status, keys.stream, counts if top else None, versions, top_agents(counts, top)
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
