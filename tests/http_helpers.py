"""Shared by the HTTP API and MCP tests: API key files, and an ASGI app served by uvicorn in a
thread on a free loopback port."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn
from test_ingest import wait_for

ADMIN_KEY = "admin-key-0123456789abcdef"
"""A key for every agent."""

BOT_KEY = "bot-key-0123456789abcdef01"
"""A key limited to BOT_AGENTS."""

BOT_AGENTS = ("bot-1", "bot 2,with|odd:chars")


def write_keys_file(tmp_path: Path) -> Path:
    """A keys file: a comment, ADMIN_KEY for every agent, BOT_KEY for BOT_AGENTS only."""
    path = tmp_path / "api-keys"
    path.write_text(f"# test keys\n{ADMIN_KEY}\n\n{BOT_KEY}\t" + "\t".join(BOT_AGENTS) + "\n")
    path.chmod(0o600)
    return path


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """`app` on uvicorn in a thread at a free loopback port; its base URL until the block ends."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="test-uvicorn", daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started or not thread.is_alive(), 30, "uvicorn start")
        assert server.started, "uvicorn did not start"
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
    assert not thread.is_alive(), "uvicorn did not stop"
