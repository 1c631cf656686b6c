"""`memory-tiers api`, `mcp` and `schema`: the commands for agents outside Python.

The web stack (FastAPI, uvicorn, mcp) loads only when api or mcp runs; they need the `api`
extra (`pip install "memory_tiers[api]"`). `schema` needs only the package.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import click

from ..errors import ConfigError, MemoryTiersError, ModelError
from ..settings import Settings
from .options import EnvOption

log = logging.getLogger(__package__)
"""The CLI's one logger, memory_tiers.cli, whichever module of it logs."""

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
    log.critical("%s", error)
    raise SystemExit(EXIT_REFUSED) from error


_no_auth = click.option(
    "--no-auth",
    cls=EnvOption,
    is_flag=True,
    envvar="MT_API_NO_AUTH",
    help="serve without API keys: every caller may access every agent (trusted networks only)",
)
_torch_threads = click.option(
    "--torch-threads",
    cls=EnvOption,
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
        from ..api import openapi_document

        text = json.dumps(openapi_document(settings), indent=2, sort_keys=True) + "\n"
        with click.open_file(openapi_path, "w") as out:
            out.write(text)
        return
    import uvicorn

    from ..api import build

    _needs_redis(settings, "api")
    _set_torch_threads(torch_threads)
    try:
        app, _ = build(settings, require_keys=not no_auth)
    except (ConfigError, ModelError) as e:
        _refuse(e)
    if no_auth:
        log.warning("serving the API WITHOUT API keys (--no-auth)")
    uvicorn.run(app, host=settings.api_host, port=settings.api_port, log_config=None,
                timeout_graceful_shutdown=int(settings.api_timeout_s))  # fmt: skip


@click.command("mcp")
@click.option(
    "--transport",
    type=click.Choice(["stdio", "http"]),
    default="stdio",
    show_default=True,
    envvar="MT_MCP_TRANSPORT",
    help="stdio: started by an MCP host; http: streamable HTTP at /mcp, behind API keys",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8081,
    show_default=True,
    envvar="MT_MCP_PORT",
    help="with --transport http: the port (on MT_API_HOST)",
)
@_no_auth
@_torch_threads
@click.pass_obj
def mcp_command(
    settings: Settings, transport: str, port: int, no_auth: bool, torch_threads: int
) -> None:
    """Run the MCP server: tools remember, recall, reconstruct and entry_status for LLM
    agents, over stdio or streamable HTTP."""
    from ..api import build_gateway
    from ..auth import ApiKeys

    _needs_redis(settings, "mcp")
    _set_torch_threads(torch_threads)
    try:
        gateway = build_gateway(settings)
        keys = ApiKeys.from_settings(settings) if transport == "http" else ApiKeys([])
        if transport == "http" and not no_auth and not len(keys):
            raise ConfigError(
                "memory-tiers mcp --transport http needs API keys: MT_API_KEYS_FILE (or "
                "MT_API_KEYS); --no-auth serves without (on a trusted network only)"
            )
    except (ConfigError, ModelError) as e:
        _refuse(e)
    if transport == "stdio":
        from ..mcp_server import create_server

        create_server(gateway).run("stdio")
        return
    import uvicorn

    from ..mcp_server import http_app

    app: Any = http_app(gateway, keys, require_keys=not no_auth)
    uvicorn.run(app, host=settings.api_host, port=port, log_config=None)


@click.command("schema")
@click.argument("part", type=click.Choice(["entry", "state"]), default="entry")
@click.pass_obj
def schema_command(settings: Settings, part: str) -> None:
    """Print a JSON Schema (draft 2020-12): PART entry (the default), a stream entry's fields
    with the state schema under $defs/state; PART state, a state under the feature schema of
    the model MT_MODEL_PATH names (the packaged one when unset). Needs no Redis."""
    from ..checkpoint import load_checkpoint
    from ..json_schemas import entry_schema, state_schema

    try:
        checkpoint = load_checkpoint(settings.model_file, expect_dims=settings.dims)
    except ModelError as e:
        raise click.ClickException(str(e)) from e
    state = state_schema(checkpoint.schema, checkpoint.version)
    document = state if part == "state" else entry_schema(state)
    click.echo(json.dumps(document, indent=2, ensure_ascii=False))
