"""Commands for a deployment on a Redis Cluster (MT_BUCKETS > 1): which bucket an agent's
memories live in, and the steps before and after `redis-cli --cluster reshard`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import click
import redis

from ..constants import MAX_BUCKETS
from ..errors import EntryError, MemoryTiersError
from ..settings import Settings, env_var
from .options import require_redis
from .status import cluster_client
from .tables import BUCKET_COLUMNS, bucket_row, table


@click.command("bucket")
@click.argument("agent_id", required=False)
@click.pass_obj
def bucket_command(settings: Settings, agent_id: str | None) -> None:
    """Print AGENT_ID's bucket among MT_BUCKETS, its hash tag and the stream its states go to
    (without AGENT_ID: every bucket's), for producers that XADD in another language.

    The bucket is zlib's CRC-32 of the agent id in UTF-8, modulo MT_BUCKETS; the tag and the
    stream depend on MT_BUCKETS (and MT_PREFIX) only. No Redis is needed.
    """
    from ..buckets import bucket_keys, bucket_of
    from ..protocol import check_agent_id

    buckets = settings.buckets
    if agent_id is None:
        rows = [bucket_row(b, bucket_keys(settings.keys, b, buckets)) for b in range(buckets)]
        click.echo(table(BUCKET_COLUMNS, rows, numeric={0}))
        return
    try:
        bucket = bucket_of(check_agent_id(agent_id), buckets)
    except EntryError as e:
        raise click.BadParameter(str(e), param_hint="AGENT_ID") from e
    row = bucket_row(bucket, bucket_keys(settings.keys, bucket, buckets))
    click.echo(table(("agent", *BUCKET_COLUMNS), [(agent_id, *row)], numeric={1}))


@click.group("cluster")
def cluster_group() -> None:
    """Keep every bucket searchable across a reshard of a Redis Cluster (MT_BUCKETS > 1).

    Without a coordinator a node indexes only the keys it holds, so a reshard alone moves
    records to a node with no index for them. Run `prepare` before `redis-cli --cluster
    reshard`, and `finish` after it.
    """


@cluster_group.command("prepare")
@click.option("--to", "to", required=True, metavar="HOST:PORT", help="the master the slots go to")
@click.option(
    "--slots", required=True, metavar="A-B[,C...]", help="the slots the reshard moves there"
)
@click.pass_obj
def prepare_command(settings: Settings, to: str, slots: str) -> None:
    """Before a reshard: create on the destination the tier indexes of the buckets whose slot
    is among --slots, so that it indexes their records as they arrive. Already there: left
    alone, so running it again (say, for slots the reshard moved besides) is safe."""
    from ..checkpoint import load_checkpoint
    from ..cluster import prepare

    moving = parse_slots(slots)
    with cluster_masters(settings, "prepare") as masters:
        destination = _master(masters, to)
        schema = load_checkpoint(settings.model_file, expect_dims=settings.dims).schema
        created = prepare(destination, moving, settings, schema, settings.buckets)
    click.echo(f"created {len(created)} indexes on {to}" + "".join(f"\n  {n}" for n in created))


@cluster_group.command("finish")
@click.option(
    "--node",
    "nodes",
    multiple=True,
    metavar="HOST:PORT",
    help="a master that slots left (repeatable) [default: every master]",
)
@click.pass_obj
def finish_command(settings: Settings, nodes: tuple[str, ...]) -> None:
    """After a reshard: drop from each node the tier indexes of the buckets it no longer owns
    (their records left with the slots). Records are never touched."""
    from ..cluster import finish

    with cluster_masters(settings, "finish") as masters:
        for name in nodes or sorted(masters):
            dropped = finish(_master(masters, name), settings, settings.buckets)
            click.echo(
                f"dropped {len(dropped)} indexes on {name}" + "".join(f"\n  {n}" for n in dropped)
            )


def parse_slots(text: str) -> set[int]:
    """The slots of `A-B[,C[-D]...]`, each from 0 to 16383.

    Raises:
        click.BadParameter: anything else.
    """
    slots: set[int] = set()
    for part in text.split(","):
        first, _, last = part.strip().partition("-")
        try:
            low, high = int(first), int(last or first)
        except ValueError:
            low, high = -1, -1
        if not 0 <= low <= high < MAX_BUCKETS:
            raise click.BadParameter(
                f"{part.strip()!r}: expected slots A-B or A, 0 <= A <= B <= {MAX_BUCKETS - 1}, "
                "comma-separated",
                param_hint="--slots",
            )
        slots.update(range(low, high + 1))
    return slots


@contextmanager
def cluster_masters(settings: Settings, command: str) -> Iterator[dict[str, redis.Redis]]:
    """The cluster's masters by host:port, as clients with MT_REDIS_URL's credentials; what
    fails in the block (Redis, a refused step, the model) becomes one line naming `command`."""
    url = _cluster_url(settings, command)
    try:
        with cluster_client(url) as cluster:
            yield {node.name: node.redis_connection for node in cluster.get_primaries()}
    except (redis.RedisError, MemoryTiersError, ValueError) as e:
        raise click.ClickException(f"cluster {command}: {e}") from e


def _master(masters: dict[str, redis.Redis], name: str) -> redis.Redis:
    """The master `name`; a usage error listing the masters if it is none of them."""
    if name not in masters:
        raise click.UsageError(
            f"{name} is not a master of the cluster (masters: {', '.join(sorted(masters))})"
        )
    return masters[name]


def _cluster_url(settings: Settings, command: str) -> str:
    """MT_REDIS_URL, a node of the cluster; a usage error without it or without buckets."""
    url = require_redis(settings, f"cluster {command}", "a node of the Redis Cluster")
    if settings.buckets == 1:
        raise click.UsageError(
            f"cluster {command} works on the buckets of a Redis Cluster: set "
            f"{env_var('buckets')} (the deployment's bucket count, above 1)"
        )
    return url
