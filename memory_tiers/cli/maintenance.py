"""Commands that rewrite stored memories: consolidate (move down the tiers) and reencode."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import click
import redis

from ..errors import MemoryTiersError
from ..settings import Settings, env_var
from .options import require_redis, tiers_option
from .status import status_client
from .tables import CONSOLIDATE_COLUMNS, REENCODE_COLUMNS, consolidate_row, reencode_row, table

if TYPE_CHECKING:
    from ..status import Heartbeat


@click.command("consolidate")
@click.option(
    "--now", "now", is_flag=True, help="run one full pass of each job now (what it always does)"
)
@click.option(
    "--daemon-policy",
    is_flag=True,
    help="move by the policy of the live daemons (their heartbeats), not this command's MT_* "
    "settings",
)
@click.option(
    "--wait",
    "wait_s",
    type=click.FloatRange(min=0),
    default=None,
    help="seconds to wait for a job lock another daemon holds [default: the lock TTL, 30]",
)
@click.pass_obj
def consolidate_command(
    settings: Settings, now: bool, daemon_policy: bool, wait_s: float | None
) -> None:
    """Move memories down the tiers by policy, once, now: STM->IM, IM->LTM, LTM retention.

    The policy is this command's MT_*_MAX_AGE_S / MT_*_MAX_PER_AGENT settings (printed first),
    or with --daemon-policy that of the live daemons; a note says when the two differ. Each
    job runs under the same Redis lock as the daemons' scheduled jobs, so this is safe while
    they run. Memories move through the model's bottleneck layers (MT_MODEL_PATH).
    """
    from ..engine import EmbeddingEngine
    from ..scheduler import JOB_NAMES, ConsolidationScheduler
    from ..tiers import TierPolicy

    url = require_redis(settings, "consolidate", "the Redis whose tiers to consolidate")
    try:
        settings = _consolidation_policy(settings, url, daemon_policy)
        engine = EmbeddingEngine.from_checkpoint(settings.model_file, expect_dims=settings.dims)
        client = redis.Redis.from_url(url)
        try:
            scheduler = ConsolidationScheduler(client, settings, engine)
            scheduler.store.ensure_indexes()
            results = scheduler.run_now(wait_s)
        finally:
            client.close()
    except (MemoryTiersError, redis.RedisError) as e:
        raise click.ClickException(str(e)) from e
    if not scheduler.tiers:
        click.echo("every tier policy is off: nothing to consolidate", err=True)
        return
    rows = [
        consolidate_row(TierPolicy.from_settings(settings, tier).describe(), result)
        for tier, result in results.items()
    ]
    if rows:
        click.echo(table(CONSOLIDATE_COLUMNS, rows, numeric=range(1, 5)))
    busy = [JOB_NAMES[tier] for tier in scheduler.tiers if tier not in results]
    if busy:
        raise click.ClickException(
            f"not run, their lock stayed held by another process: {', '.join(busy)}"
        )


def _consolidation_policy(settings: Settings, url: str, daemon_policy: bool) -> Settings:
    """`settings` with the policy consolidate runs by, said on stderr with where it came from.

    Raises:
        click.UsageError: --daemon-policy, and no live daemon consolidates or they disagree.
    """
    groups: dict[tuple[float | None, ...], list[Heartbeat]] = {}
    for beat in _live_heartbeats(settings, url):
        if beat.policy:
            groups.setdefault(_policy_key(beat.policy), []).append(beat)
    source = "this command's MT_* settings"
    if daemon_policy:
        if len(groups) != 1:
            found = "no live daemon consolidates" if not groups else "live daemons disagree"
            raise click.UsageError(f"--daemon-policy: {found}; give the MT_* policy settings")
        [group] = groups.values()
        policy: dict[str, Any] = _known_policy(group[0].policy)  # checked again by Settings
        settings = dataclasses.replace(settings, **policy)
        source = f"the live daemons' ({', '.join(b.consumer for b in group)})"
    click.echo(f"policy ({source}): {_policy_words(settings)}", err=True)
    for key, group in groups.items():
        if key == _policy_key(settings.policy()):
            continue
        theirs = _known_policy(group[0].policy)
        changed = {k: v for k, v in theirs.items() if getattr(settings, k) != v}
        one = len(group) == 1
        click.echo(
            f"note: live daemon{'' if one else 's'} {', '.join(b.consumer for b in group)} "
            f"consolidate{'s' if one else ''} with another policy: "
            + ", ".join(f"{env_var(k)}={'off' if v is None else v}" for k, v in changed.items())
            + " (this pass does not; --daemon-policy moves by theirs)",
            err=True,
        )
    return settings


def _known_policy(policy: Mapping[str, float | int | None] | None) -> dict[str, Any]:
    """The POLICY_FIELDS of a heartbeat's policy (a daemon of another version may add more)."""
    from ..settings import POLICY_FIELDS

    return {k: v for k, v in (policy or {}).items() if k in POLICY_FIELDS}


def _live_heartbeats(settings: Settings, url: str) -> list[Heartbeat]:
    """The heartbeats of the daemons alive now."""
    from ..status import heartbeats

    with status_client(url) as client:
        return heartbeats(client, settings.keys)


def _policy_key(policy: Mapping[str, float | int | None] | None) -> tuple[float | None, ...]:
    """A policy's values in POLICY_FIELDS order, comparable across JSON (a heartbeat's 3600 may
    read back as 3600.0)."""
    from ..settings import POLICY_FIELDS

    values = policy or {}
    return tuple(None if (v := values.get(k)) is None else float(v) for k in POLICY_FIELDS)


def _policy_words(settings: Settings) -> str:
    """'stm->im older than 3600 s or past 1000 per agent; ...; ltm retention off'."""
    from ..constants import TIERS
    from ..tiers import TierPolicy

    policies = [TierPolicy.from_settings(settings, tier) for tier in TIERS]
    return "; ".join(f"{p.describe()} {p.rules()}" for p in policies)


@click.command("reencode")
@click.option(
    "--tiers", default="stm,im,ltm", show_default=True, help="tiers to re-encode, comma-separated"
)
@click.option(
    "--force",
    is_flag=True,
    help="re-encode even though the live daemons serve another model",
)
@click.pass_obj
def reencode_command(settings: Settings, tiers: str, force: bool) -> None:
    """After a retrain: encode memories of other model versions again with MT_MODEL_PATH.

    Each memory whose raw state is stored (STM always; IM and LTM with
    MT_KEEP_STATE_AFTER_STM) gets the vector the current model gives its state. Those without
    a raw state stay as they are ("without state"). IM and LTM memories stored without a
    reconstruction (by versions before records kept one) get theirs ("reconstructed"), so
    recall stops decoding them. Safe while daemons run.

    Restart the daemons on the new model first: while live daemons serve another one, they
    keep encoding new states with it and their consolidation encodes moved memories back, so
    reencode refuses (--force overrides).
    """
    from ..engine import EmbeddingEngine
    from ..store import TierStore
    from ..tiers import reencode

    url = require_redis(settings, "reencode", "the Redis whose memories to re-encode")
    chosen = tiers_option(tiers)
    try:
        engine = EmbeddingEngine.from_checkpoint(settings.model_file, expect_dims=settings.dims)
        _check_served(settings, url, engine.version, force)
        client = redis.Redis.from_url(url)
        try:
            store = TierStore(client, settings, engine.schema)
            results = {tier: reencode(client, store, engine, settings, tier) for tier in chosen}
        finally:
            client.close()
    except (MemoryTiersError, redis.RedisError) as e:
        raise click.ClickException(str(e)) from e
    rows = [reencode_row(tier, result) for tier, result in results.items()]
    click.echo(f"model {engine.version}")
    click.echo(table(REENCODE_COLUMNS, rows, numeric=range(1, 6)))


def _check_served(settings: Settings, url: str, version: str, force: bool) -> None:
    """Refuse (or with `force`, warn) when live daemons serve models other than `version`."""
    beats = _live_heartbeats(settings, url)
    others = sorted(
        {f"{b.consumer} ({b.model_version})" for b in beats if b.model_version != version}
    )
    if not others:
        return
    served = any(b.model_version == version for b in beats)
    problem = (
        f"model {version} ({settings.model_file}) is "
        + ("not served by every live daemon" if served else "served by no live daemon")
        + f": {', '.join(others)} serve another. They encode new states with theirs and their "
        "consolidation encodes moved memories back; restart them with "
        f"{env_var('model_path')}={settings.model_file} first (README, 'When to retrain')"
    )
    if not force and not served:
        raise click.ClickException(problem + ", or give --force")
    click.echo(f"warning: {problem}", err=True)
