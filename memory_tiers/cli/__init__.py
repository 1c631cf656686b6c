"""`memory-tiers`: the command group, its options, and the commands it runs.

The commands live in the modules beside this one, grouped by what they act on; what they print
is built in tables.py. This is the only package that prints. Importing it loads no torch: each
command imports what it needs when it runs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

import click

from ..errors import MemoryTiersError
from ..logs import configure_logging
from ..settings import Settings
from .cluster import bucket_command, cluster_group
from .frontends import api_command, mcp_command, schema_command
from .maintenance import consolidate_command, reencode_command
from .model import evaluate_command, train
from .options import EnvOption, settings_options
from .query import query_command
from .service import demo, init_command, redis_command, serve
from .status import check_command, stats_command

__all__ = ["main"]

log = logging.getLogger(__name__)


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
        log.critical("memory-tiers %s stops: %s", command, error)
    else:
        click.echo(f"Error: {error}", err=True)
    raise SystemExit(2) from error


SERVICES = ("serve", "api", "mcp")
"""The commands that run as services: they report refused settings as log records."""


for _command in (
    redis_command, demo, train, query_command, evaluate_command, serve, init_command,
    consolidate_command, reencode_command, check_command, stats_command,
    api_command, mcp_command, schema_command, bucket_command,
    cluster_group,
):  # fmt: skip
    main.add_command(_command)
