"""`memory-tiers` commands: the only module that prints."""

from __future__ import annotations

import dataclasses
import json
import logging
import signal
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import redis

from .constants import Keys
from .errors import MemoryTiersError
from .server import EmbeddedRedis
from .settings import Settings, env_var

if TYPE_CHECKING:  # torch loads only for the commands that use it
    from .train import Checkpoint

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def settings_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add one option per Settings field, each also read from its `MT_*` variable."""
    for f in reversed(dataclasses.fields(Settings)):
        command = click.option(
            "--" + f.name.replace("_", "-"),
            f.name,
            envvar=env_var(f.name),
            default=None,
            show_envvar=True,
            help=f"{f.metadata['help']} [default: {f.default}]",
        )(command)
    return command


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--log-level",
    envvar="MT_LOG_LEVEL",
    default="INFO",
    show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
)
@settings_options
@click.pass_context
def main(ctx: click.Context, /, log_level: str, **values: Any) -> None:
    """Redis-native memory tiers for agents: states in, KNN recall out."""
    logging.basicConfig(level=log_level.upper(), format=LOG_FORMAT)
    try:
        ctx.obj = Settings.from_mapping(values)
    except MemoryTiersError as e:
        raise click.UsageError(str(e)) from e


def _wait_for_signal(process_alive: Callable[[], bool]) -> str:
    """Block until SIGINT or SIGTERM arrives, or the watched process dies; say which."""
    stop = threading.Event()
    received: list[str] = []

    def handle(signum: int, _frame: object) -> None:
        received.append(signal.Signals(signum).name)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handle)
    while not stop.wait(0.5):
        if not process_alive():
            return "redis-server exited"
    return received[0]


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
    try:
        server.start()
    except MemoryTiersError as e:
        raise click.ClickException(str(e)) from e
    try:
        click.echo(server.url, nl=True)
        click.echo(f"export MT_REDIS_URL={server.url}   # Ctrl-C stops it", err=True)
        reason = _wait_for_signal(
            lambda: server.process is not None and server.process.poll() is None
        )
        click.echo(f"stopping ({reason})", err=True)
    finally:
        server.stop()


@main.command()
@click.pass_obj
def demo(settings: Settings) -> None:
    """Start the embedded Redis, check vector search works, and say what the demo will run."""
    try:
        with EmbeddedRedis.from_settings(settings) as server:
            client = redis.Redis.from_url(server.url)
            indexes = client.execute_command("FT._LIST")
            client.close()
            click.echo(
                f"embedded Redis with vector search up at {server.url} ({len(indexes)} indexes)"
            )
    except MemoryTiersError as e:
        raise click.ClickException(str(e)) from e
    click.echo("The full demo (50 simulated agents streaming states into STM, IM and LTM,")
    click.echo("then recalls) lands with the daemon; this run checked the server side only.")


@main.command()
@click.option(
    "--simulate", type=int, default=None, help="train on N states of the built-in simulation"
)
@click.option("--jsonl", type=click.Path(exists=True, dir_okay=False), help="train on these states")
@click.option("--from-stream", is_flag=True, help="train on the raw states in the Redis stream")
@click.option("--limit", type=int, default=None, help="with --from-stream: at most this many")
@click.option(
    "--schema",
    "schema_path",
    type=click.Path(exists=True, dir_okay=False),
    help="feature schema (.toml or .json) [default: the built-in one]",
)
@click.option("--epochs", default=50, show_default=True)
@click.option("--batch-size", "train_batch_size", default=64, show_default=True)
@click.option("--patience", default=5, show_default=True, help="epochs without improvement")
@click.option("--seed", default=0, show_default=True)
@click.option("--device", default=None, help="cpu or cuda [default: cuda when available]")
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    default=None,
    help="checkpoint path [default: MT_MODEL_PATH]",
)
@click.pass_obj
def train(
    settings: Settings,
    simulate: int | None,
    jsonl: str | None,
    from_stream: bool,
    limit: int | None,
    schema_path: str | None,
    epochs: int,
    train_batch_size: int,
    patience: int,
    seed: int,
    device: str | None,
    out: str | None,
) -> None:
    """Train the autoencoder; write the checkpoint, a metrics JSON and a loss-curve PNG."""
    from .features import FeatureSchema, default_schema
    from .plots import plot_loss_curve
    from .train import save_checkpoint, train_autoencoder_pipeline

    if sum((simulate is not None, jsonl is not None, from_stream)) != 1:
        raise click.UsageError("give exactly one of --simulate N, --jsonl FILE, --from-stream")
    try:
        states, source = _training_states(settings, simulate, jsonl, from_stream, limit, seed)
        schema = FeatureSchema.from_file(schema_path) if schema_path else default_schema()
        _, checkpoint = train_autoencoder_pipeline(
            states, schema, batch_size=train_batch_size, epochs=epochs,
            patience=patience, seed=seed, device=device,
        )  # fmt: skip
    except MemoryTiersError as e:
        raise click.ClickException(str(e)) from e
    checkpoint.metrics["source"] = source
    path = save_checkpoint(checkpoint, out or settings.model_path)
    metrics_path = path.with_suffix(".metrics.json")
    metrics_path.write_text(json.dumps(_metrics_summary(checkpoint), indent=2) + "\n")
    plot_path = plot_loss_curve(checkpoint.metrics, path.with_suffix(".loss.png"), source)
    mse = checkpoint.metrics["val_mse"]
    click.echo(
        f"model {checkpoint.version}: held-out MSE stm={mse['stm']:.5f} im={mse['im']:.5f} "
        f"ltm={mse['ltm']:.5f}\nwrote {path}, {metrics_path}, {plot_path}"
    )


def _training_states(
    settings: Settings,
    simulate: int | None,
    jsonl: str | None,
    from_stream: bool,
    limit: int | None,
    seed: int,
) -> tuple[Sequence[Mapping[str, Any]], str]:
    from .dataset import load_jsonl, read_stream_states
    from .sim import simulate_states

    if simulate is not None:
        return simulate_states(simulate, seed=seed), f"simulation: {simulate} states, seed {seed}"
    if jsonl is not None:
        return load_jsonl(jsonl), f"jsonl: {Path(jsonl).name}"
    if not settings.redis_url:
        raise click.UsageError("--from-stream needs MT_REDIS_URL (the Redis the agents write to)")
    client = redis.Redis.from_url(settings.redis_url)
    try:
        return read_stream_states(client, Keys(settings.prefix), limit), "stream"
    finally:
        client.close()


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
