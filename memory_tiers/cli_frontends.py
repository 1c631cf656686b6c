"""`memory-tiers api`: the network front end's command.

Kept apart from cli.py, which registers them, so the web stack (FastAPI, uvicorn, mcp) loads
only for this command; they need the `api` extra (`pip install "memory_tiers[api]"`).
"""

from __future__ import annotations

import json
import logging

import click

from .errors import ConfigError, MemoryTiersError, ModelError
from .settings import Settings

EXIT_REFUSED = 2
"""Exit code for settings or a model that a restart cannot fix (as `serve`)."""


def _needs_redis(settings: Settings, command: str) -> str:
    if not settings.redis_url:
        raise click.UsageError(
            f"{command} needs MT_REDIS_URL (or memory-tiers --redis-url URL {command}): the "
            "Redis the daemons write to"
        )
    return settings.redis_url


def _set_torch_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _refuse(error: MemoryTiersError) -> None:
    logging.getLogger(__name__).critical("%s", error)
    raise SystemExit(EXIT_REFUSED) from error


_no_auth = click.option(
    "--no-auth",
    is_flag=True,
    envvar="MT_API_NO_AUTH",
    help="serve without API keys: every caller may access every agent (trusted networks only)",
)
_torch_threads = click.option(
    "--torch-threads",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    envvar="MT_TORCH_THREADS",
    help="torch threads for encoding queries (Redis and the daemons need the other cores)",
)


@click.command("api")
@_no_auth
@_torch_threads
@click.option(
    "--openapi",
    "openapi_path",
    type=click.Path(dir_okay=False, allow_dash=True),
    default=None,
    help="write the OpenAPI document to this file ('-': stdout) and exit; needs no Redis",
)
@click.pass_obj
def api_command(
    settings: Settings, no_auth: bool, torch_threads: int, openapi_path: str | None
) -> None:
    """Run the HTTP API (remember, entry status, recall, reconstruct, stats) on
    MT_API_HOST:MT_API_PORT until SIGTERM or Ctrl-C.

    Every /v1 route needs an API key (MT_API_KEYS_FILE or MT_API_KEYS); /healthz and /metrics
    do not. Exit 2: no keys, unreadable keys, or a model it cannot serve.
    """
    if openapi_path is not None:
        from .api import openapi_document

        text = json.dumps(openapi_document(settings), indent=2, sort_keys=True) + "\n"
        with click.open_file(openapi_path, "w") as out:
            out.write(text)
        return
    import uvicorn

    from .api import build

    _needs_redis(settings, "api")
    _set_torch_threads(torch_threads)
    try:
        app, _ = build(settings, require_keys=not no_auth)
    except (ConfigError, ModelError) as e:
        _refuse(e)
    if no_auth:
        logging.getLogger(__name__).warning("serving the API WITHOUT API keys (--no-auth)")
    uvicorn.run(app, host=settings.api_host, port=settings.api_port, log_config=None,
                timeout_graceful_shutdown=int(settings.api_timeout_s))  # fmt: skip
