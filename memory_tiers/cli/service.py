"""Commands that run or set up the service: redis, demo, serve and init."""

from __future__ import annotations

import dataclasses
import logging
import signal
import threading
from collections.abc import Callable
from typing import NoReturn

import click
import redis

from ..errors import MemoryTiersError
from ..server import EmbeddedRedis
from ..settings import Settings
from .options import EnvOption, require_redis

log = logging.getLogger(__package__)
"""The CLI's one logger, memory_tiers.cli, whichever module of it logs."""


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


@click.command("redis")
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


@click.command()
@click.option("--seconds", default=40.0, show_default=True, help="how long the agents stream")
@click.pass_obj
def demo(settings: Settings, seconds: float) -> None:
    """The main job in a minute: 50 simulated agents, the daemon, tiers, recalls.

    Runs on an embedded Redis that is removed afterwards, with a fast consolidation policy
    so memories visibly reach IM and LTM.
    """
    from ..demo import run_demo

    if logging.getLogger().level == logging.INFO:  # progress lines say it; keep warnings
        logging.getLogger().setLevel(logging.WARNING)
    try:
        run_demo(settings, seconds, click.echo)
    except MemoryTiersError as e:
        raise click.ClickException(str(e)) from e


@click.command()
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
    from ..daemon import EXIT_REFUSED, Daemon, load_engine
    from ..errors import ConfigError, ModelError
    from ..server import redis_url

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


@click.command("init")
@click.pass_obj
def init_command(settings: Settings) -> None:
    """Create the tier indexes and the consumer group when missing, then exit.

    Daemons and clients do this themselves; run it once as an admin user when the service's
    ACL user may not FT.CREATE (README, Security). Safe to repeat.
    """
    from ..checkpoint import load_checkpoint
    from ..constants import TIERS
    from ..store import TierStore
    from ..stream import ensure_group

    keys = settings.keys
    client = redis.Redis.from_url(require_redis(settings, "init"))
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
    log.critical("memory-tiers serve stops: %s", error)
    raise SystemExit(code) from error
