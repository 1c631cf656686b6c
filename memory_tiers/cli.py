"""`memory-tiers` commands: the only module that prints."""

from __future__ import annotations

import dataclasses
import logging
import signal
import threading
from collections.abc import Callable
from typing import Any

import click
import redis

from .errors import MemoryTiersError
from .server import EmbeddedRedis
from .settings import Settings, env_var

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
