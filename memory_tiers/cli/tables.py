"""What the commands print, built from data: rows, tables and lines, with no I/O.

Each function takes what a command read (a recall, a status snapshot, pass results) and returns
strings, so the layout is tested without Redis and a command only reads, calls and echoes.
Nothing here imports torch.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from ..constants import TIERS

if TYPE_CHECKING:
    from ..client import MergedHit
    from ..cluster_status import NodeStatus
    from ..constants import Keys
    from ..evaluation import TierQuality
    from ..status import Heartbeat, Snapshot
    from ..tiers import PassResult

Row = tuple[str, ...]
"""One table row, a cell per column."""

QUERY_COLUMNS = ("rank", "tier", "feature_dist", "tier_dist", "step", "ts", "key", "state")
"""Columns of the `query` table; feature_dist ranks across tiers, tier_dist is squared L2."""

QUERY_NUMERIC_COLUMNS = frozenset({0, 2, 3, 4})
"""The `query` columns aligned right."""

SUMMARY_FIELDS = ("agent_type", "status", "current_action")
"""The state fields a `query` row shows, with health, to tell one memory from another."""

EVALUATE_COLUMNS = (
    "tier", "dim", "AE_mse", "PCA_mse", "KNN_recall", "recall", "PCA_recall", "state",
)  # fmt: skip
"""Columns of the `evaluate` table; recall is what MemoryClient.recall returns (re-sorted)."""

CONSOLIDATE_COLUMNS = ("job", "moved", "deleted", "skipped", "seconds")
"""Columns of the `consolidate --now` table, one row per job."""

REENCODE_COLUMNS = ("tier", "re-encoded", "without state", "reconstructed", "skipped", "seconds")
"""Columns of the `reencode` table, one row per tier."""

TIER_COLUMNS = ("tier", "memories", "agents", "indexed", "indexing failures")
STREAM_COLUMNS = ("stream", "length", "lag", "pending", "dead letters", "consumers")
DAEMON_COLUMNS = ("daemon", "host", "pid", "model", "up", "stored", "dead letters", "heartbeat")
NODE_COLUMNS = (
    "node", "buckets", "stm", "im", "ltm", "indexed", "indexing failures", "stream", "pending",
    "dead letters",
)  # fmt: skip
"""Columns of the `stats` table of a cluster's masters, each one's buckets summed."""

LEASE_COLUMNS = ("daemon", "leases", "buckets")
"""Columns of the `stats` lease map of a cluster: the buckets each daemon consumes."""

BUCKET_COLUMNS = ("bucket", "tag", "stream")
"""Columns of the `bucket` table: where an agent's states go on a Redis Cluster."""

AGENT_COLUMNS = ("agent", "stm", "im", "ltm", "total")
MODEL_COLUMNS = ("model", "stm", "im", "ltm", "served")

DRIFT_COLUMNS = ("daemon", "tier", "live_mse", "held_out_mse", "ratio")
"""Columns of the `stats` drift table: sampled error on live states vs the model's held-out."""


def table(header: Sequence[str], rows: Sequence[Sequence[str]], numeric: Collection[int]) -> str:
    """Aligned columns two spaces apart: the `numeric` column indexes right, the rest left."""
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.rjust(width) if i in numeric else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([line(header), *(line(row) for row in rows)])


# -- query -------------------------------------------------------------------------------------


def query_row(rank: int, item: MergedHit, state: Mapping[str, Any], reconstructed: bool) -> Row:
    """One `query` row; a state reconstructed from an IM/LTM vector is marked '~'."""
    hit = item.hit
    return (
        str(rank),
        item.tier,
        f"{item.feature_distance:.6f}",
        f"{hit.distance:.4g}",
        str(hit.step),
        iso_time(hit.ts),
        hit.key,
        ("~" if reconstructed else "") + state_summary(state),
    )


def state_summary(state: Mapping[str, Any]) -> str:
    """'explorer/active/move/health=73' from whichever of those fields the state has."""
    words = [state[f] for f in SUMMARY_FIELDS if isinstance(state.get(f), str)]
    health = state.get("health")
    if isinstance(health, (int, float)) and not isinstance(health, bool):
        words.append(f"health={health:.0f}")
    return "/".join(words) or "-"


def iso_time(ts: int) -> str:
    """Milliseconds since the epoch as ISO 8601 UTC, or the number if out of range."""
    try:
        when = datetime.fromtimestamp(ts / 1000, tz=timezone.utc)
    except (OverflowError, OSError, ValueError):
        return str(ts)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- evaluate, consolidate, reencode -----------------------------------------------------------


def evaluate_row(row: TierQuality) -> Row:
    """One `evaluate` row: the model's error and recall in a tier beside PCA's."""
    return (
        row.tier.upper(), str(row.dim), f"{row.mse:.5f}", f"{row.pca_mse:.5f}",
        f"{row.vector_recall:.3f}", f"{row.recall:.3f}", f"{row.pca_recall:.3f}",
        "kept" if row.keeps_state else "-",
    )  # fmt: skip


def consolidate_row(job: str, result: PassResult) -> Row:
    """One `consolidate` row: what the job named `job` moved, deleted and skipped."""
    return _pass_row(job, (result.moved, result.deleted, result.skipped), result.seconds)


def reencode_row(tier: str, result: PassResult) -> Row:
    """One `reencode` row: what a tier's pass encoded again, what it could not, and the
    reconstructions it wrote."""
    counts = (result.reencoded, result.without_state, result.reconstructed, result.skipped)
    return _pass_row(tier, counts, result.seconds)


def _pass_row(label: str, counts: Sequence[int], seconds: float) -> Row:
    return (label, *(str(n) for n in counts), f"{seconds:.3f}")


# -- stats -------------------------------------------------------------------------------------


def stats_sections(
    status: Snapshot,
    stream_name: str,
    counts: Mapping[str, Mapping[str, int]] | None,
    versions: Mapping[str, Mapping[str, int]],
    agents: Sequence[tuple[str, Mapping[str, int]]],
) -> list[str]:
    """The `stats` report, a string per section: tiers, stream, daemons, then what there is.

    Args:
        counts: memories per agent and tier; None when not counted (`--top 0`).
        versions: memories per tier and model version.
        agents: the agents to list, with their counts, largest first.
    """
    sections = [
        table(TIER_COLUMNS, tier_rows(status, counts), numeric={1, 2, 3, 4}),
        table(STREAM_COLUMNS, [stream_row(status, stream_name)], numeric=range(1, 6)),
        *(cluster_sections(status) if status.buckets else []),
        table(DAEMON_COLUMNS, daemon_rows(status), numeric={2, 5, 6})
        if status.heartbeats
        else "no live daemon (no heartbeat key)",
    ]
    ignored = ignored_fields_line(status.heartbeats)
    if ignored:
        sections.append(ignored)
    drift = drift_rows(status.heartbeats)
    if drift:
        drift_table = table(DRIFT_COLUMNS, drift, numeric={2, 3, 4})
        sections.append("\n".join([drift_table, *drift_warnings(status.heartbeats)]))
    models = model_rows(versions, {beat.model_version for beat in status.heartbeats})
    if models:
        sections.append(table(MODEL_COLUMNS, models, numeric=range(1, 4)))
    if agents:
        sections.append(table(AGENT_COLUMNS, agent_rows(agents), numeric=range(1, 5)))
    return sections


def tier_rows(status: Snapshot, counts: Mapping[str, Mapping[str, int]] | None) -> list[Row]:
    """Per tier: memories, agents with any ('-' when not counted), index size and failures."""
    agents = {tier: sum(1 for n in (counts or {}).values() if n[tier]) for tier in TIERS}
    return [
        (tier, str(size), "-" if counts is None else str(agents[tier]), *index_cells(status, tier))
        for tier, size in status.tiers.items()
    ]


def index_cells(status: Snapshot, tier: str) -> tuple[str, str]:
    """A tier's FT.INFO num_docs and hash_indexing_failures; 'missing' without an index."""
    state = status.indexes.get(tier)
    return ("missing", "-") if state is None else (str(state.num_docs), str(state.failures))


def cluster_sections(status: Snapshot) -> list[str]:
    """On a cluster: the masters, each one's buckets summed; the lease map and unheld buckets."""
    from ..cluster_status import lease_map, per_node

    held, unheld = lease_map(status)
    leases = [
        (daemon, str(len(buckets)), bucket_ranges(buckets)) for daemon, buckets in held.items()
    ]
    lines = [table(LEASE_COLUMNS, leases, numeric={1})] if leases else []
    lines.append(f"unleased buckets: {bucket_ranges(unheld)}" if unheld else "every bucket leased")
    nodes = [node_row(node) for node in per_node(status)]
    return [table(NODE_COLUMNS, nodes, numeric=range(1, 10)), "\n".join(lines)]


def node_row(node: NodeStatus) -> Row:
    """One master's buckets: memories per tier, what their indexes hold and failed, the
    streams' length, pending entries and dead letters."""
    indexed = str(node.indexed)
    if node.missing_indexes:
        indexed += f" ({node.missing_indexes} missing)"
    return (
        node.node, str(node.buckets), *(str(node.tiers[tier]) for tier in TIERS), indexed,
        str(node.failures), str(node.stream.length), str(node.stream.pending),
        str(node.stream.dead_letters),
    )  # fmt: skip


def bucket_row(bucket: int, keys: Keys) -> Row:
    """A bucket's number, hash tag ('-' on one Redis) and stream."""
    return (str(bucket), keys.tag or "-", keys.stream)


def bucket_ranges(buckets: Sequence[int]) -> str:
    """Ascending bucket numbers as ranges: '0-2,5'."""
    ranges: list[list[int]] = []
    for bucket in buckets:
        if ranges and bucket == ranges[-1][-1] + 1:
            ranges[-1][-1] = bucket
        else:
            ranges.append([bucket, bucket])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)


def stream_row(status: Snapshot, stream_name: str) -> Row:
    """The state stream's length, undelivered lag, pending entries and dead letters."""
    stream = status.stream
    return (
        stream_name,
        str(stream.length),
        "-" if stream.lag is None else str(stream.lag),
        str(stream.pending),
        str(stream.dead_letters),
        str(stream.consumers),
    )


def daemon_rows(status: Snapshot) -> list[Row]:
    """A row per live daemon, its uptime and heartbeat age taken at the snapshot's time."""
    return [
        (
            beat.consumer,
            beat.host,
            str(beat.pid),
            beat.model_version,
            duration(status.at - beat.started_at),
            str(beat.stored),
            str(beat.dead_letters),
            f"{max(0.0, status.at - beat.at):.1f} s ago",
        )
        for beat in status.heartbeats
    ]


def model_rows(versions: Mapping[str, Mapping[str, int]], served: Collection[str]) -> list[Row]:
    """Per model version, most memories first: its memories in each tier and whether served."""
    models = sorted(
        {version for tier in TIERS for version in versions[tier]},
        key=lambda v: (-sum(versions[t].get(v, 0) for t in TIERS), v),
    )
    return [
        (v, *(str(versions[t].get(v, 0)) for t in TIERS), "yes" if v in served else "")
        for v in models
    ]


def agent_rows(agents: Sequence[tuple[str, Mapping[str, int]]]) -> list[Row]:
    """Per agent: its memories in each tier and in all."""
    return [(agent, *(str(n[tier]) for tier in TIERS), str(sum(n.values()))) for agent, n in agents]


def drift_rows(heartbeats: Sequence[Heartbeat]) -> list[Row]:
    """Per daemon and tier: the sampled live reconstruction error beside the held-out one."""
    rows: list[Row] = []
    for beat in heartbeats:
        live, held_out = beat.reconstruction_mse, beat.validation_mse or {}
        for tier, mse in (live or {}).items():
            base = held_out.get(tier)
            ratio = f"{mse / base:.1f}x" if base else "-"
            rows.append(
                (beat.consumer, tier, f"{mse:.5f}", "-" if base is None else f"{base:.5f}", ratio)
            )
    return rows


def drift_warnings(heartbeats: Sequence[Heartbeat]) -> list[str]:
    """A line per daemon whose live states reconstruct DRIFT_FACTOR times worse than held-out."""
    from ..evaluation import DRIFT_FACTOR

    lines = []
    for beat in heartbeats:
        live, held_out = beat.reconstruction_mse or {}, beat.validation_mse or {}
        far = [t for t in live if held_out.get(t) and live[t] > DRIFT_FACTOR * held_out[t]]
        if far:
            lines.append(
                f"far off: the states {beat.consumer} encodes reconstruct over {DRIFT_FACTOR:g}x "
                f"worse than its model's held-out states ({', '.join(t.upper() for t in far)}). "
                "Recall suffers: run `memory-tiers evaluate --tier stm`, then retrain "
                "(README, 'When to retrain')"
            )
    return lines


def ignored_fields_line(heartbeats: Sequence[Heartbeat]) -> str:
    """What the live daemons' models ignore of the states they got, summed per field."""
    counts: Counter[str] = Counter()
    for beat in heartbeats:
        counts.update(beat.ignored_fields or {})
    if not counts:
        return ""
    fields = ", ".join(f"{name} ({n:,})" for name, n in counts.most_common())
    return (
        f"ignored state fields (values): {fields}\n"
        "  not in the model's feature schema and not numbers, they change no vector; README, "
        "'Which state fields count', says how to add them"
    )


def duration(seconds: float) -> str:
    """'3d04h', '2h05m', '4m10s' or '12s'."""
    total = max(0, int(seconds))
    days, rest = divmod(total, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
