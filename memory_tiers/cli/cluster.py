"""Commands for a deployment on a Redis Cluster (MT_BUCKETS > 1): which bucket an agent's
memories live in, and the steps around a reshard."""

from __future__ import annotations

import click

from ..errors import EntryError
from ..settings import Settings
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
