"""What several commands share: options read from MT_* variables, and checks of their values."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import click

from ..constants import TIERS
from ..settings import Settings, env_var, setting_metavar


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


def require_redis(settings: Settings, command: str, what: str = "") -> str:
    """settings.redis_url; a usage error naming the command (and `what` Redis) when unset."""
    if not settings.redis_url:
        raise click.UsageError(
            f"{command} needs MT_REDIS_URL (or memory-tiers --redis-url URL {command} ...)"
            + (f": {what}" if what else "")
        )
    return settings.redis_url


def tiers_option(text: str) -> list[str]:
    """The tiers of a --tiers option (query, reencode), in tier order, each once."""
    tiers = [t.strip().lower() for t in text.split(",") if t.strip()]
    if not tiers or any(t not in TIERS for t in tiers):
        raise click.BadParameter(
            f"{text!r}: expected some of {','.join(TIERS)}, comma-separated", param_hint="--tiers"
        )
    return [t for t in TIERS if t in tiers]
