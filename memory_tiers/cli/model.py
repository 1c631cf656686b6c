"""Commands about the model: train it, and evaluate how well it recalls."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import redis

from ..errors import MemoryTiersError
from ..settings import Settings
from .options import EnvOption, require_redis
from .tables import EVALUATE_COLUMNS, evaluate_row, table

if TYPE_CHECKING:  # torch loads only when a command runs
    from ..checkpoint import Checkpoint


DEFAULT_TRAIN_OUT = "models/state_autoencoder.pt"
"""Where `train` writes without --out or MT_MODEL_PATH, from the current folder: in a clone of
the repository, over the default model that the package ships."""


@click.command()
@click.option(
    "--simulate", type=int, default=None, help="train on N states of the built-in simulation"
)
@click.option("--jsonl", type=click.Path(exists=True, dir_okay=False), help="train on these states")
@click.option("--from-stream", is_flag=True, help="train on the raw states in the Redis stream")
@click.option(
    "--worlds", default=1, show_default=True, help="with --simulate: spread over this many"
)
@click.option("--limit", type=int, default=None, help="with --from-stream: at most this many")
@click.option(
    "--broad",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="also train on N states sampled across the whole schema (serves agents unlike the data)",
)
@click.option(
    "--init",
    "init_path",
    type=click.Path(exists=True, dir_okay=False),
    help="fine-tune this checkpoint instead of training a new model",
)
@click.option(
    "--schema",
    "schema_path",
    type=click.Path(exists=True, dir_okay=False),
    help="feature schema (.toml or .json) [default: the built-in one]",
)
@click.option("--epochs", default=50, show_default=True)
@click.option("--batch-size", "train_batch_size", default=64, show_default=True)
@click.option("--learning-rate", default=1e-3, show_default=True)
@click.option("--patience", default=5, show_default=True, help="epochs without improvement")
@click.option(
    "--distance-weight",
    type=click.FloatRange(min=0),
    default=None,
    help="weight of the term that keeps feature distances in each tier, for recall; 0 = off "
    "[default: TrainConfig's, 0.1]",
)
@click.option("--seed", default=0, show_default=True)
@click.option("--device", default=None, help="cpu or cuda [default: cuda when available]")
@click.option(
    "--torch-threads",
    cls=EnvOption,
    type=click.IntRange(min=1),
    default=None,
    envvar="MT_TORCH_THREADS",
    show_envvar=True,
    help="CPU threads for training [default: torch's choice; 1 is often fastest on a busy box]",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    default=None,
    help=f"checkpoint path [default: MT_MODEL_PATH, else {DEFAULT_TRAIN_OUT} here]",
)
@click.pass_obj
def train(
    settings: Settings,
    simulate: int | None,
    jsonl: str | None,
    from_stream: bool,
    worlds: int,
    limit: int | None,
    broad: int,
    init_path: str | None,
    schema_path: str | None,
    epochs: int,
    train_batch_size: int,
    learning_rate: float,
    patience: int,
    distance_weight: float | None,
    seed: int,
    device: str | None,
    torch_threads: int | None,
    out: str | None,
) -> None:
    """Train the autoencoder; write the checkpoint, a metrics JSON and a loss-curve PNG.

    The PNG needs matplotlib, the `plots` extra: without it the rest is written and a line
    says how to install it.
    """
    import torch

    from .. import plots
    from ..checkpoint import load_checkpoint, save_checkpoint
    from ..features import FeatureSchema
    from ..train import train_autoencoder_pipeline

    if sum((simulate is not None, jsonl is not None, from_stream)) != 1:
        raise click.UsageError("give exactly one of --simulate N, --jsonl FILE, --from-stream")
    no_plot = "" if plots.available() else f"no loss-curve PNG: {plots.INSTALL_HINT} draws it"
    if no_plot:
        click.echo(f"{no_plot}; the checkpoint and its metrics are written as usual", err=True)
    if torch_threads:
        torch.set_num_threads(torch_threads)
    try:
        states, source = _training_states(
            settings, simulate, worlds, jsonl, from_stream, limit, seed, broad
        )
        schema = FeatureSchema.from_file(schema_path) if schema_path else None
        start_from = load_checkpoint(init_path) if init_path else None
        options = {} if distance_weight is None else {"distance_weight": distance_weight}
        _, checkpoint = train_autoencoder_pipeline(
            states, schema, batch_size=train_batch_size, epochs=epochs,
            learning_rate=learning_rate, patience=patience, seed=seed, device=device,
            broad_states=broad, start_from=start_from, **options,
        )  # fmt: skip
    except MemoryTiersError as e:
        raise click.ClickException(str(e)) from e
    if start_from is not None:
        source["fine_tuned_from"] = start_from.version
    checkpoint.metrics["data"] = source
    path = save_checkpoint(checkpoint, out or settings.model_path or DEFAULT_TRAIN_OUT)
    written = _write_training_reports(checkpoint, path, plot=not no_plot)
    mse = checkpoint.metrics["val_mse"]
    click.echo(
        f"model {checkpoint.version}: held-out MSE stm={mse['stm']:.5f} im={mse['im']:.5f} "
        f"ltm={mse['ltm']:.5f}\nwrote {', '.join(map(str, written))}"
    )
    if no_plot:
        click.echo(no_plot, err=True)


def _write_training_reports(checkpoint: Checkpoint, path: Path, plot: bool) -> list[Path]:
    """Beside the checkpoint: its metrics JSON and (with `plot`) its loss-curve PNG."""
    from ..plots import plot_loss_curve

    metrics_path = path.with_suffix(".metrics.json")
    metrics_path.write_text(json.dumps(_metrics_summary(checkpoint), indent=2) + "\n")
    written = [path, metrics_path]
    if plot:
        title = f"trained on {checkpoint.metrics['data']['description']}"
        written.append(plot_loss_curve(checkpoint.metrics, path.with_suffix(".loss.png"), title))
    return written


def _training_states(
    settings: Settings,
    simulate: int | None,
    worlds: int,
    jsonl: str | None,
    from_stream: bool,
    limit: int | None,
    seed: int,
    broad: int,
) -> tuple[Sequence[Mapping[str, Any]], dict[str, Any]]:
    """The training states and a description of where they came from (kept in the metrics).

    `broad` schema-wide states are sampled by the trainer; the description counts them.
    """
    from ..dataset import load_jsonl, read_stream_states
    from ..sim import simulate_states

    if simulate is not None:
        states: Sequence[Mapping[str, Any]] = simulate_states(simulate, seed=seed, worlds=worlds)
        source: dict[str, Any] = {"kind": "simulation", "seed": seed, "worlds": worlds}
    elif jsonl is not None:
        states, source = load_jsonl(jsonl), {"kind": "jsonl", "file": Path(jsonl).name}
    else:
        url = require_redis(settings, "train --from-stream", "the Redis the agents write to")
        client = redis.Redis.from_url(url)
        try:
            states = read_stream_states(client, settings.keys, limit)
        finally:
            client.close()
        source = {"kind": "stream", "stream": settings.keys.stream}
    source["states"] = len(states)
    source["broad"] = broad
    source["description"] = f"{len(states)} states: " + ", ".join(
        f"{key} {value}" for key, value in source.items() if key != "states"
    )
    return states, source


def _metrics_summary(checkpoint: Checkpoint) -> dict[str, Any]:
    """What the metrics JSON beside a checkpoint holds: the checkpoint's metrics and identity."""
    return {
        "version": checkpoint.version,
        "schema_fingerprint": checkpoint.schema.fingerprint(),
        "input_dim": checkpoint.schema.input_dim,
        "dims": {
            "stm": checkpoint.config.stm_dim,
            "im": checkpoint.config.im_dim,
            "ltm": checkpoint.config.ltm_dim,
        },
        **checkpoint.metrics,
    }


@click.command("evaluate")
@click.option("--jsonl", type=click.Path(exists=True, dir_okay=False), help="states in a file")
@click.option("--from-stream", is_flag=True, help="the states in the Redis stream")
@click.option(
    "--tier", "from_tier", type=click.Choice(["stm", "im", "ltm"]), help="a live tier's states"
)
@click.option("--limit", default=20_000, show_default=True, help="states read at most")
@click.option(
    "--queries", default=20, show_default=True, help="held-out query states per agent (at most 1/5)"
)
@click.option("--k", default=10, show_default=True, type=click.IntRange(min=1))
@click.option("--seed", default=0, show_default=True, help="which states are held out")
@click.pass_obj
def evaluate_command(
    settings: Settings,
    jsonl: str | None,
    from_stream: bool,
    from_tier: str | None,
    limit: int,
    queries: int,
    k: int,
    seed: int,
) -> None:
    """How well the model (MT_MODEL_PATH) recalls these states, per tier, against PCA.

    Each agent's states are split into memories and held-out queries; recall@k is the share
    of a query's k truly nearest memories (L2 over features) that recall returns. PCA of the
    same size is fitted on the same states (it has seen the queries: a generous rival). A
    JSONL state's agent is its "agent_id" key (one agent "-" where it has none).
    """
    from ..daemon import load_engine
    from ..evaluation import evaluate, split_agents, verdict

    if sum((jsonl is not None, from_stream, from_tier is not None)) != 1:
        raise click.UsageError("give exactly one of --jsonl FILE, --from-stream, --tier TIER")
    try:
        engine = load_engine(settings)
        memories, source = _evaluation_states(settings, jsonl, from_stream, from_tier, limit)
        features, good, errors = engine.schema.extract_valid([state for _, state in memories])
        agent_ids = [memories[i][0] for i in good]
        agents = split_agents(features, agent_ids, queries, seed=seed)
        state_tiers = ["stm"] + (["im", "ltm"] if settings.keep_state_after_stm else [])
        rows = evaluate(
            engine, agents, features, k=k, candidates=settings.candidates(k),
            state_tiers=state_tiers,
        )  # fmt: skip
    except MemoryTiersError as e:
        raise click.ClickException(str(e)) from e
    click.echo(
        f"model {engine.version} on {len(good)} states of {source} ({len(errors)} refused by "
        f"the schema); {len(agents)} agents, recall@{k} over "
        f"{sum(len(a.queries) for a in agents)} held-out queries, "
        f"{settings.candidates(k)} candidates re-sorted"
    )
    click.echo(table(EVALUATE_COLUMNS, [evaluate_row(row) for row in rows], range(1, 7)))
    click.echo(verdict(rows, engine.validation_mse))


def _evaluation_states(
    settings: Settings, jsonl: str | None, from_stream: bool, tier: str | None, limit: int
) -> tuple[list[tuple[str, dict[str, Any]]], str]:
    """(agent id, state) pairs of the chosen source, and the source in words."""
    from ..dataset import load_jsonl, read_stream_memories, read_tier_memories
    from ..store import TierStore

    if jsonl is not None:
        states = load_jsonl(jsonl)[:limit]
        ids = [s.get("agent_id") for s in states]
        return [(i if isinstance(i, str) else "-", s) for i, s in zip(ids, states, strict=True)], (
            Path(jsonl).name
        )
    url = require_redis(settings, "evaluate", "the Redis the agents write to")
    client = redis.Redis.from_url(url)
    try:
        if from_stream:
            keys = settings.keys
            return read_stream_memories(client, keys, limit), keys.stream
        assert tier is not None
        memories = read_tier_memories(TierStore(client, settings), tier, limit)
        return memories, f"the {tier.upper()} tier"
    finally:
        client.close()
