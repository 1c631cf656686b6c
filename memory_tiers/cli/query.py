"""`memory-tiers query`: an agent's memories nearest to a state, ranked across tiers."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import click

from ..errors import MemoryTiersError
from ..settings import Settings
from .options import require_redis, tiers_option
from .tables import QUERY_COLUMNS, QUERY_NUMERIC_COLUMNS, query_row, table

if TYPE_CHECKING:  # torch loads with the first recall, not with the CLI
    from ..client import MemoryClient, MergedHit


@click.command("query")
@click.option("--agent", "agent_id", required=True, help="whose memories to search")
@click.option("--state", "state_json", required=True, help="the query state, a JSON object")
@click.option("--k", default=10, show_default=True, type=click.IntRange(min=1), help="hits shown")
@click.option(
    "--tiers", default="stm,im,ltm", show_default=True, help="tiers to search, comma-separated"
)
@click.option(
    "--where",
    "where_json",
    default=None,
    help='conditions on state fields, a JSON object: {"health": [null, 20], "status": "idle"}',
)
@click.option(
    "--kinds",
    default=None,
    help="only memories of these kinds, comma-separated: state,action (default: both)",
)
@click.pass_obj
def query_command(
    settings: Settings,
    agent_id: str,
    state_json: str,
    k: int,
    tiers: str,
    where_json: str | None,
    kinds: str | None,
) -> None:
    """Recall an agent's memories nearest to a state; print them ranked across tiers.

    feature_dist is the mean squared feature difference to the query, comparable across tiers:
    exact where the memory keeps its raw state, else between its reconstruction and the
    query's; tier_dist is the squared L2 distance within its tier. States marked '~' are
    reconstructed from IM/LTM vectors: approximate.
    """
    from ..client import MemoryClient

    require_redis(
        settings, "query",
        "the Redis the daemon writes to. A fresh embedded Redis would be empty: nothing to recall.",
    )  # fmt: skip
    state = _json_object(state_json, "--state")
    where = None if where_json is None else _json_object(where_json, "--where")
    searched = tiers_option(tiers)
    try:
        with MemoryClient.from_settings(settings) as client:
            recall = client.recall(
                agent_id, state, k=k, tiers=searched, where=where,
                kinds=None if kinds is None else [p.strip() for p in kinds.split(",")],
            )  # fmt: skip
            rows = [
                query_row(rank, item, *_shown_state(item, client))
                for rank, item in enumerate(recall.merged, 1)
            ]
    except ValueError as e:
        raise click.BadParameter(str(e)) from e
    except MemoryTiersError as e:
        raise click.ClickException(str(e)) from e
    if not rows:
        click.echo(f"no memories of agent {agent_id!r} in {', '.join(searched)}", err=True)
        return
    click.echo(table(QUERY_COLUMNS, rows, QUERY_NUMERIC_COLUMNS))


def _json_object(text: str, option: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise click.BadParameter(f"not JSON ({e.msg} at {e.pos})", param_hint=option) from e
    if not isinstance(value, dict):
        raise click.BadParameter(
            f"must be a JSON object, got {type(value).__name__}", param_hint=option
        )
    return value


def _shown_state(item: MergedHit, client: MemoryClient) -> tuple[Mapping[str, Any], bool]:
    """What a row shows of a hit: its stored state, or (IM/LTM keep none) its reconstruction,
    and whether it is reconstructed."""
    if item.hit.state is not None:
        return item.hit.state, False
    return client.reconstruct(item.hit).state, True
