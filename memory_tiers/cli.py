"""`memory-tiers` commands: the only module that prints."""

from __future__ import annotations

import dataclasses
import json
import logging
import signal
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click
import redis

from .constants import Keys
from .errors import MemoryTiersError
from .logs import configure_logging
from .server import EmbeddedRedis
from .settings import Settings, env_var, redact_url, setting_metavar

if TYPE_CHECKING:  # torch loads only for the commands that use it
    from .checkpoint import Checkpoint
    from .tiers import PassResult


class EnvOption(click.Option):
    """An option also read from an environment variable: its errors name both."""

    def get_error_hint(self, ctx: click.Context | None) -> str:
        hint = super().get_error_hint(ctx)
        return f"{hint} (or {self.envvar})" if isinstance(self.envvar, str) else hint


def settings_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add one option per Settings field, each also read from its `MT_*` variable.

    Values stay strings here: Settings parses and checks them, so an error names the variable
    the same way whether the value came from the environment or the command line.
    """
    for f in reversed(dataclasses.fields(Settings)):
        default = "unset" if f.default is None else f.default
        command = click.option(
            "--" + f.name.replace("_", "-"),
            f.name,
            envvar=env_var(f.name),
            default=None,
            show_envvar=True,
            metavar=setting_metavar(f.name),
            help=f"{f.metadata['help']} [default: {default}]",
        )(command)
    return command


class CommandGroup(click.Group):
    """`memory-tiers`: its own options are accepted after the command name too.

    `memory-tiers query --redis-url URL --agent a ...` reads as `memory-tiers --redis-url URL
    query --agent a ...`; an option the command has itself (train --batch-size) stays the
    command's.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, self._hoist(ctx, args))

    def _hoist(self, ctx: click.Context, args: list[str]) -> list[str]:
        """`args` with this group's options that follow the command name moved before it."""
        own = _takes_value(self.get_params(ctx), skip={"--help", "-h"})
        at = _first_argument(args, own)
        command = self.commands.get(args[at]) if at < len(args) else None
        if command is None:
            return args
        theirs = _takes_value(command.get_params(ctx), skip=set())
        moved: list[str] = []
        rest: list[str] = []
        i = at + 1
        while i < len(args):
            token = args[i]
            name = token.split("=", 1)[0]
            if token == "--":
                rest += args[i:]
                break
            width = 1 if "=" in token else 1 + theirs.get(name, own.get(name, 0))
            (moved if name in own and name not in theirs else rest).extend(args[i : i + width])
            i += width
        return [*args[:at], *moved, args[at], *rest]


def _takes_value(params: Sequence[click.Parameter], skip: set[str]) -> dict[str, int]:
    """{option name: how many values follow it} of the options among `params`."""
    names: dict[str, int] = {}
    for param in params:
        if isinstance(param, click.Option):
            width = 0 if param.is_flag or param.count else param.nargs
            names.update((n, width) for n in (*param.opts, *param.secondary_opts) if n not in skip)
    return names


def _first_argument(args: list[str], options: Mapping[str, int]) -> int:
    """Where the command name is in `args`: past the leading options and their values."""
    i = 0
    while i < len(args) and args[i].startswith("-") and args[i] != "--":
        name = args[i].split("=", 1)[0]
        i += 1 if "=" in args[i] else 1 + options.get(name, 0)
    return i


@click.group(
    cls=CommandGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(package_name="memory_tiers", prog_name="memory-tiers")
@click.option(
    "--log-level",
    cls=EnvOption,
    envvar="MT_LOG_LEVEL",
    default="INFO",
    show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
)
@click.option(
    "--log-format",
    cls=EnvOption,
    envvar="MT_LOG_FORMAT",
    default="text",
    show_default=True,
    type=click.Choice(["text", "json"], case_sensitive=False),
    help="json: one JSON object per line, for a log pipeline",
)
@settings_options
@click.pass_context
def main(ctx: click.Context, /, log_level: str, log_format: str, **values: Any) -> None:
    """Redis-native memory tiers for agents: states in, KNN recall out.

    Options of memory-tiers itself go before or after the command; each reads its MT_*
    variable too. Every value is checked before a command starts.
    """
    configure_logging(log_level, "json" if log_format.lower() == "json" else "text")
    try:
        ctx.obj = Settings.from_mapping(values)
    except MemoryTiersError as e:
        _refuse_settings(ctx.invoked_subcommand, e)


def _refuse_settings(command: str | None, error: MemoryTiersError) -> NoReturn:
    """Stop on a setting that is not allowed, with one line, as each command's callers expect.

    check: an 'unhealthy:' line and exit 1 (what probes read); the services (serve, api, mcp):
    a log record (a JSON line under --log-format json) and exit 2, which systemd does not
    restart; the others: an 'Error:' line and exit 2, click's code for bad usage.
    """
    if command == "check":
        click.echo(f"unhealthy: {error}")
        raise SystemExit(1) from error
    if command in SERVICES:
        logging.getLogger(__name__).critical("memory-tiers %s stops: %s", command, error)
    else:
        click.echo(f"Error: {error}", err=True)
    raise SystemExit(2) from error


SERVICES = ("serve", "api", "mcp")
"""The commands that run as services: they report refused settings as log records."""


def _require_redis(settings: Settings, command: str, what: str = "") -> str:
    """settings.redis_url; a usage error naming the command (and `what` Redis) when unset."""
    if not settings.redis_url:
        raise click.UsageError(
            f"{command} needs MT_REDIS_URL (or memory-tiers --redis-url URL {command} ...)"
            + (f": {what}" if what else "")
        )
    return settings.redis_url


class _StopSignals:
    """SIGINT and SIGTERM handlers that only note the signal.

    Installed before the server starts, so a signal sent as soon as the URL is printed is
    never lost to the default handler.
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self._name = ""
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, _frame: object) -> None:
        self._name = signal.Signals(signum).name
        self._event.set()

    def wait(self, process_alive: Callable[[], bool]) -> str:
        """Block until a signal arrives or the watched process dies; say which."""
        while not self._event.wait(0.5):
            if not process_alive():
                return "redis-server exited"
        return self._name


@main.command("redis")
@click.option("--port", type=int, default=None, help="port to listen on [default: a free one]")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="keep data (AOF) here [default: a temporary folder, removed on stop]",
)
@click.pass_obj
def redis_command(settings: Settings, port: int | None, data_dir: str | None) -> None:
    """Run the embedded search-enabled Redis in the foreground and print its URL."""
    server = EmbeddedRedis(settings.redis_server, settings.redis_modules, data_dir, port)
    signals = _StopSignals()
    try:
        server.start()
    except MemoryTiersError as e:
        raise click.ClickException(str(e)) from e
    try:
        click.echo(server.url, nl=True)
        click.echo(f"export MT_REDIS_URL={server.url}   # Ctrl-C stops it", err=True)
        reason = signals.wait(lambda: server.process is not None and server.process.poll() is None)
        click.echo(f"stopping ({reason})", err=True)
    finally:
        server.stop()


@main.command()
@click.option("--seconds", default=40.0, show_default=True, help="how long the agents stream")
@click.pass_obj
def demo(settings: Settings, seconds: float) -> None:
    """The main job in a minute: 50 simulated agents, the daemon, tiers, recalls.

    Runs on an embedded Redis that is removed afterwards, with a fast consolidation policy
    so memories visibly reach IM and LTM.
    """
    from .demo import run_demo

    if logging.getLogger().level == logging.INFO:  # progress lines say it; keep warnings
        logging.getLogger().setLevel(logging.WARNING)
    try:
        run_demo(settings, seconds, click.echo)
    except MemoryTiersError as e:
        raise click.ClickException(str(e)) from e


DEFAULT_TRAIN_OUT = "models/state_autoencoder.pt"
"""Where `train` writes without --out or MT_MODEL_PATH, from the current folder: in a clone of
the repository, over the default model that the package ships."""


@main.command()
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

    from . import plots
    from .checkpoint import load_checkpoint, save_checkpoint
    from .features import FeatureSchema
    from .train import train_autoencoder_pipeline

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
    from .plots import plot_loss_curve

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
    from .dataset import load_jsonl, read_stream_states
    from .sim import simulate_states

    if simulate is not None:
        states: Sequence[Mapping[str, Any]] = simulate_states(simulate, seed=seed, worlds=worlds)
        source: dict[str, Any] = {"kind": "simulation", "seed": seed, "worlds": worlds}
    elif jsonl is not None:
        states, source = load_jsonl(jsonl), {"kind": "jsonl", "file": Path(jsonl).name}
    else:
        url = _require_redis(settings, "train --from-stream", "the Redis the agents write to")
        client = redis.Redis.from_url(url)
        try:
            states = read_stream_states(client, Keys(settings.prefix), limit)
        finally:
            client.close()
        source = {"kind": "stream", "stream": Keys(settings.prefix).stream}
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


# -- query -------------------------------------------------------------------------------------

if TYPE_CHECKING:
    from .client import MemoryClient, MergedHit
    from .evaluation import TierQuality
    from .status import Heartbeat

QUERY_COLUMNS = ("rank", "tier", "feature_dist", "tier_dist", "step", "ts", "key", "state")
"""Columns of the `query` table; feature_dist ranks across tiers, tier_dist is squared L2."""

_QUERY_NUMERIC_COLUMNS = frozenset({0, 2, 3, 4})
_QUERY_SUMMARY_FIELDS = ("agent_type", "status", "current_action")


@main.command("query")
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
    from .client import MemoryClient

    _require_redis(
        settings, "query",
        "the Redis the daemon writes to. A fresh embedded Redis would be empty: nothing to recall.",
    )  # fmt: skip
    state = _json_object(state_json, "--state")
    where = None if where_json is None else _json_object(where_json, "--where")
    searched = _query_tiers(tiers)
    try:
        with MemoryClient.from_settings(settings) as client:
            recall = client.recall(
                agent_id, state, k=k, tiers=searched, where=where,
                kinds=None if kinds is None else [p.strip() for p in kinds.split(",")],
            )  # fmt: skip
            rows = [_query_row(rank, item, client) for rank, item in enumerate(recall.merged, 1)]
    except ValueError as e:
        raise click.BadParameter(str(e)) from e
    except MemoryTiersError as e:
        raise click.ClickException(str(e)) from e
    if not rows:
        click.echo(f"no memories of agent {agent_id!r} in {', '.join(searched)}", err=True)
        return
    click.echo(_table(QUERY_COLUMNS, rows, _QUERY_NUMERIC_COLUMNS))


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


def _query_tiers(text: str) -> list[str]:
    """The tiers of a --tiers option, in tier order, each once."""
    from .constants import TIERS

    tiers = [t.strip().lower() for t in text.split(",") if t.strip()]
    if not tiers or any(t not in TIERS for t in tiers):
        raise click.BadParameter(
            f"{text!r}: expected some of {','.join(TIERS)}, comma-separated", param_hint="--tiers"
        )
    return [t for t in TIERS if t in tiers]


def _query_row(rank: int, item: MergedHit, client: MemoryClient) -> tuple[str, ...]:
    """One table row; IM/LTM hits keep no state, so theirs is reconstructed ('~')."""
    hit = item.hit
    if hit.state is not None:
        summary = _query_summary(hit.state)
    else:
        summary = "~" + _query_summary(client.reconstruct(hit).state)
    return (
        str(rank),
        item.tier,
        f"{item.feature_distance:.6f}",
        f"{hit.distance:.4g}",
        str(hit.step),
        _query_time(hit.ts),
        hit.key,
        summary,
    )


def _query_summary(state: Mapping[str, Any]) -> str:
    """'explorer/active/move/health=73' from whichever of those fields the state has."""
    words = [state[f] for f in _QUERY_SUMMARY_FIELDS if isinstance(state.get(f), str)]
    health = state.get("health")
    if isinstance(health, (int, float)) and not isinstance(health, bool):
        words.append(f"health={health:.0f}")
    return "/".join(words) or "-"


def _query_time(ts: int) -> str:
    """Milliseconds since the epoch as ISO 8601 UTC, or the number if out of range."""
    from datetime import datetime, timezone

    try:
        when = datetime.fromtimestamp(ts / 1000, tz=timezone.utc)
    except (OverflowError, OSError, ValueError):
        return str(ts)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], numeric: Collection[int]) -> str:
    """Aligned columns two spaces apart: the `numeric` column indexes right, the rest left."""
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.rjust(width) if i in numeric else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([line(header), *(line(row) for row in rows)])


# -- evaluate ----------------------------------------------------------------------------------

EVALUATE_COLUMNS = (
    "tier", "dim", "AE_mse", "PCA_mse", "KNN_recall", "recall", "PCA_recall", "state",
)  # fmt: skip
"""Columns of the `evaluate` table; recall is what MemoryClient.recall returns (re-sorted)."""


@main.command("evaluate")
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
    from .daemon import load_engine
    from .evaluation import evaluate, split_agents, verdict

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
    click.echo(_table(EVALUATE_COLUMNS, [_evaluate_row(row) for row in rows], range(1, 7)))
    click.echo(verdict(rows, engine.validation_mse))


def _evaluation_states(
    settings: Settings, jsonl: str | None, from_stream: bool, tier: str | None, limit: int
) -> tuple[list[tuple[str, dict[str, Any]]], str]:
    """(agent id, state) pairs of the chosen source, and the source in words."""
    from .dataset import load_jsonl, read_stream_memories, read_tier_memories
    from .store import TierStore

    if jsonl is not None:
        states = load_jsonl(jsonl)[:limit]
        ids = [s.get("agent_id") for s in states]
        return [(i if isinstance(i, str) else "-", s) for i, s in zip(ids, states, strict=True)], (
            Path(jsonl).name
        )
    url = _require_redis(settings, "evaluate", "the Redis the agents write to")
    client = redis.Redis.from_url(url)
    try:
        if from_stream:
            keys = Keys(settings.prefix)
            return read_stream_memories(client, keys, limit), keys.stream
        assert tier is not None
        memories = read_tier_memories(TierStore(client, settings), tier, limit)
        return memories, f"the {tier.upper()} tier"
    finally:
        client.close()


def _evaluate_row(row: TierQuality) -> tuple[str, ...]:
    return (
        row.tier.upper(), str(row.dim), f"{row.mse:.5f}", f"{row.pca_mse:.5f}",
        f"{row.vector_recall:.3f}", f"{row.recall:.3f}", f"{row.pca_recall:.3f}",
        "kept" if row.keeps_state else "-",
    )  # fmt: skip


@main.command()
@click.option(
    "--allow-untrained",
    cls=EnvOption,
    is_flag=True,
    envvar="MT_ALLOW_UNTRAINED",
    help="serve an untrained (or missing) model instead of refusing it",
)
@click.option(
    "--consumer",
    cls=EnvOption,
    default=None,
    envvar="MT_CONSUMER",
    help="consumer name in the group [default: host-pid]; reuse it to resume after a crash",
)
@click.option(
    "--torch-threads",
    type=click.IntRange(min=1),
    cls=EnvOption,
    default=1,
    show_default=True,
    envvar="MT_TORCH_THREADS",
    help="torch threads (Redis needs the other cores on a small box)",
)
@click.option(
    "--consolidate/--no-consolidate",
    cls=EnvOption,
    default=True,
    show_default=True,
    envvar="MT_CONSOLIDATE",
    help="run the scheduled tier moves in this daemon (one daemon at a time runs each job)",
)
@click.pass_obj
def serve(
    settings: Settings,
    allow_untrained: bool,
    consumer: str | None,
    torch_threads: int,
    consolidate: bool,
) -> None:
    """Run the daemon: stream states into STM and consolidate tiers until SIGTERM or Ctrl-C."""
    from .daemon import EXIT_REFUSED, Daemon, load_engine
    from .errors import ConfigError, ModelError
    from .server import redis_url

    try:
        engine = load_engine(settings, allow_untrained)  # refuse before starting anything
        with redis_url(settings) as url:
            if not settings.redis_url:
                click.echo(url)
                click.echo(f"export MT_REDIS_URL={url}   # embedded Redis, gone on exit", err=True)
            daemon = Daemon(
                dataclasses.replace(settings, redis_url=url),
                consumer=consumer, engine=engine, torch_threads=torch_threads,
                consolidate=consolidate,
            )  # fmt: skip
            code = daemon.run()
    except (ModelError, ConfigError) as e:
        _stop_serving(e, EXIT_REFUSED)
    except MemoryTiersError as e:
        _stop_serving(e, 1)
    raise SystemExit(code)


@main.command("init")
@click.pass_obj
def init_command(settings: Settings) -> None:
    """Create the tier indexes and the consumer group when missing, then exit.

    Daemons and clients do this themselves; run it once as an admin user when the service's
    ACL user may not FT.CREATE (README, Security). Safe to repeat.
    """
    from .checkpoint import load_checkpoint
    from .constants import TIERS
    from .ingest import ensure_group
    from .store import TierStore

    keys = Keys(settings.prefix)
    client = redis.Redis.from_url(_require_redis(settings, "init"))
    try:
        schema = load_checkpoint(settings.model_file, expect_dims=settings.dims).schema
        TierStore(client, settings, schema).ensure_indexes()  # with the state attributes
        created = ensure_group(client, keys)
    except MemoryTiersError as e:
        raise click.ClickException(str(e)) from e
    finally:
        client.close()
    click.echo(
        f"indexes {', '.join(keys.index(t) for t in TIERS)} ready; consumer group {keys.group} "
        f"on {keys.stream} {'created' if created else 'already there'}"
    )


def _stop_serving(error: MemoryTiersError, code: int) -> NoReturn:
    """Log why the daemon stops, as a log record (a JSON line with --log-format json, which a
    log pipeline keeps where it would drop click's plain 'Error:' line), and exit."""
    logging.getLogger(__name__).critical("memory-tiers serve stops: %s", error)
    raise SystemExit(code) from error


# -- consolidate -------------------------------------------------------------------------------

CONSOLIDATE_COLUMNS = ("job", "moved", "deleted", "skipped", "seconds")
"""Columns of the `consolidate --now` table, one row per job."""


@main.command("consolidate")
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
    from .engine import EmbeddingEngine
    from .scheduler import JOB_NAMES, ConsolidationScheduler

    url = _require_redis(settings, "consolidate", "the Redis whose tiers to consolidate")
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
    _print_pass_results(settings, results)
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
    from .settings import POLICY_FIELDS

    return {k: v for k, v in (policy or {}).items() if k in POLICY_FIELDS}


def _live_heartbeats(settings: Settings, url: str) -> list[Heartbeat]:
    """The heartbeats of the daemons alive now."""
    from .status import heartbeats

    client = _status_client(url)
    try:
        return heartbeats(client, Keys(settings.prefix))
    finally:
        client.close()


def _policy_key(policy: Mapping[str, float | int | None] | None) -> tuple[float | None, ...]:
    """A policy's values in POLICY_FIELDS order, comparable across JSON (a heartbeat's 3600 may
    read back as 3600.0)."""
    from .settings import POLICY_FIELDS

    values = policy or {}
    return tuple(None if (v := values.get(k)) is None else float(v) for k in POLICY_FIELDS)


def _policy_words(settings: Settings) -> str:
    """'stm->im older than 3600 s or past 1000 per agent; ...; ltm retention off'."""
    from .constants import TIERS
    from .tiers import TierPolicy

    policies = [TierPolicy.from_settings(settings, tier) for tier in TIERS]
    return "; ".join(f"{p.describe()} {p.rules()}" for p in policies)


def _print_pass_results(settings: Settings, results: Mapping[str, PassResult]) -> None:
    """One table row per job that ran: what it moved, deleted and skipped."""
    from .tiers import TierPolicy

    rows = [
        (
            TierPolicy.from_settings(settings, tier).describe(),
            str(result.moved),
            str(result.deleted),
            str(result.skipped),
            f"{result.seconds:.3f}",
        )
        for tier, result in results.items()
    ]
    if rows:
        click.echo(_table(CONSOLIDATE_COLUMNS, rows, numeric=range(1, 5)))


# -- reencode ---------------------------------------------------------------------------------

REENCODE_COLUMNS = ("tier", "re-encoded", "without state", "skipped", "seconds")
"""Columns of the `reencode` table, one row per tier."""


@main.command("reencode")
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
    a raw state stay as they are ("without state"). Safe while daemons run.

    Restart the daemons on the new model first: while live daemons serve another one, they
    keep encoding new states with it and their consolidation encodes moved memories back, so
    reencode refuses (--force overrides).
    """
    from .engine import EmbeddingEngine
    from .store import TierStore
    from .tiers import reencode

    url = _require_redis(settings, "reencode", "the Redis whose memories to re-encode")
    chosen = _query_tiers(tiers)
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
    rows = [
        (tier, str(r.reencoded), str(r.without_state), str(r.skipped), f"{r.seconds:.3f}")
        for tier, r in results.items()
    ]
    click.echo(f"model {engine.version}")
    click.echo(_table(REENCODE_COLUMNS, rows, numeric=range(1, 5)))


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


# -- check and stats ---------------------------------------------------------------------------

CHECK_TIMEOUT_S = 5.0
"""How long `check` and `stats` wait for Redis."""


def _status_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(
        url, socket_timeout=CHECK_TIMEOUT_S, socket_connect_timeout=CHECK_TIMEOUT_S
    )


@main.command("check")
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

    from .status import health, snapshot

    if not settings.redis_url:
        click.echo("unhealthy: no Redis to check: set MT_REDIS_URL (or --redis-url)")
        raise SystemExit(1)
    keys = Keys(settings.prefix)
    client = _status_client(settings.redis_url)
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


if TYPE_CHECKING:
    from .status import Snapshot

TIER_COLUMNS = ("tier", "memories", "agents", "indexed", "indexing failures")
STREAM_COLUMNS = ("stream", "length", "lag", "pending", "dead letters", "consumers")
DAEMON_COLUMNS = ("daemon", "host", "pid", "model", "up", "stored", "dead letters", "heartbeat")
AGENT_COLUMNS = ("agent", "stm", "im", "ltm", "total")
MODEL_COLUMNS = ("model", "stm", "im", "ltm", "served")


DRIFT_COLUMNS = ("daemon", "tier", "live_mse", "held_out_mse", "ratio")
"""Columns of the `stats` drift table: sampled error on live states vs the model's held-out."""


def _drift_rows(heartbeats: Sequence[Heartbeat]) -> list[tuple[str, ...]]:
    """Per daemon and tier: the sampled live reconstruction error beside the held-out one."""
    rows: list[tuple[str, ...]] = []
    for beat in heartbeats:
        live, held_out = beat.reconstruction_mse, beat.validation_mse or {}
        for tier, mse in (live or {}).items():
            base = held_out.get(tier)
            ratio = f"{mse / base:.1f}x" if base else "-"
            rows.append(
                (beat.consumer, tier, f"{mse:.5f}", "-" if base is None else f"{base:.5f}", ratio)
            )
    return rows


def _drift_warnings(heartbeats: Sequence[Heartbeat]) -> list[str]:
    """A line per daemon whose live states reconstruct DRIFT_FACTOR times worse than held-out."""
    from .evaluation import DRIFT_FACTOR

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


@main.command("stats")
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
    from .constants import TIERS
    from .status import agent_counts, model_versions, series, snapshot, top_agents

    url = _require_redis(settings, "stats", "the Redis the daemons use")
    if plot_path:
        _require_plots("stats --plot")
    keys = Keys(settings.prefix)
    client = _status_client(url)
    try:
        status = snapshot(client, keys)
        counts = agent_counts(client, keys) if top else {}
        versions = model_versions(client, keys)
        samples = series(client, keys) if plot_path else []
    except redis.RedisError as e:
        raise click.ClickException(f"cannot read Redis at {redact_url(url)}: {e}") from e
    finally:
        client.close()
    agents_per_tier = {tier: sum(1 for n in counts.values() if n[tier]) for tier in TIERS}
    tier_rows = [
        (tier, str(size), str(agents_per_tier[tier]) if top else "-", *_index_cells(status, tier))
        for tier, size in status.tiers.items()
    ]
    stream = status.stream
    stream_rows = [
        (
            keys.stream,
            str(stream.length),
            "-" if stream.lag is None else str(stream.lag),
            str(stream.pending),
            str(stream.dead_letters),
            str(stream.consumers),
        )
    ]
    daemon_rows = [
        (
            beat.consumer,
            beat.host,
            str(beat.pid),
            beat.model_version,
            _duration(status.at - beat.started_at),
            str(beat.stored),
            str(beat.dead_letters),
            f"{max(0.0, status.at - beat.at):.1f} s ago",
        )
        for beat in status.heartbeats
    ]
    sections = [
        _table(TIER_COLUMNS, tier_rows, numeric={1, 2, 3, 4}),
        _table(STREAM_COLUMNS, stream_rows, numeric=range(1, 6)),
        _table(DAEMON_COLUMNS, daemon_rows, numeric={2, 5, 6})
        if daemon_rows
        else "no live daemon (no heartbeat key)",
    ]
    ignored = _ignored_fields_line(status.heartbeats)
    if ignored:
        sections.append(ignored)
    drift = _drift_rows(status.heartbeats)
    if drift:
        table = _table(DRIFT_COLUMNS, drift, numeric={2, 3, 4})
        sections.append("\n".join([table, *_drift_warnings(status.heartbeats)]))
    served = {beat.model_version for beat in status.heartbeats}
    models = sorted(
        {version for tier in TIERS for version in versions[tier]},
        key=lambda v: (-sum(versions[t].get(v, 0) for t in TIERS), v),
    )
    model_rows = [
        (v, *(str(versions[t].get(v, 0)) for t in TIERS), "yes" if v in served else "")
        for v in models
    ]
    if model_rows:
        sections.append(_table(MODEL_COLUMNS, model_rows, numeric=range(1, 4)))
    agents = top_agents(counts, top)
    if agents:
        agent_rows = [
            (agent, *(str(n[tier]) for tier in TIERS), str(sum(n.values()))) for agent, n in agents
        ]
        sections.append(_table(AGENT_COLUMNS, agent_rows, numeric=range(1, 5)))
    click.echo("\n\n".join(sections))
    if plot_path:
        _plot_series(samples, plot_path, keys)


def _require_plots(command: str) -> None:
    """A usage error naming `command` when matplotlib (the `plots` extra) is missing."""
    from . import plots

    if not plots.available():
        raise click.UsageError(f"{command} needs matplotlib: {plots.INSTALL_HINT}")


def _ignored_fields_line(heartbeats: Sequence[Heartbeat]) -> str:
    """What the live daemons' models ignore of the states they got, summed per field."""
    from collections import Counter

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


def _index_cells(status: Snapshot, tier: str) -> tuple[str, str]:
    """A tier's FT.INFO num_docs and hash_indexing_failures; 'missing' without an index."""
    state = status.indexes.get(tier)
    return ("missing", "-") if state is None else (str(state.num_docs), str(state.failures))


def _plot_series(samples: Sequence[Any], path: str, keys: Keys) -> None:
    from .plots import plot_service_series

    if not samples:
        raise click.ClickException(
            f"no samples in {keys.stats_series} yet: a running daemon adds one every "
            "MT_STATS_INTERVAL_S"
        )
    plot_service_series(samples, path, f"memory tiers ({len(samples)} samples)")
    click.echo(f"\nwrote {path} ({len(samples)} samples)")


def _duration(seconds: float) -> str:
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


# -- network front ends (memory_tiers[api]) and schema; imported after main exists ------------

from .cli_frontends import api_command, mcp_command, schema_command  # noqa: E402

main.add_command(api_command)
main.add_command(mcp_command)
main.add_command(schema_command)
