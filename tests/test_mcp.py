"""The MCP server against a real Redis and a running daemon, through the mcp SDK's own Client
over streamable HTTP (with API keys) and over stdio (a `memory-tiers mcp` child process)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
import redis
from http_helpers import ADMIN_KEY, BOT_KEY, serving, write_keys_file
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from test_ingest import daemon, make_settings, running

from memory_tiers import EmbeddingEngine, Settings
from memory_tiers.api import build_gateway
from memory_tiers.auth import ApiKeys
from memory_tiers.mcp_server import MCP_PATH, http_app
from memory_tiers.server import EmbeddedRedis
from memory_tiers.sim import simulate_states

TOOLS = {"remember", "recall", "reconstruct", "entry_status"}


@pytest.fixture
def mcp_settings(redis_server: EmbeddedRedis, redis_client: redis.Redis, model_path: Path,
                 tmp_path: Path) -> Settings:  # fmt: skip
    return make_settings(redis_server.url, model_path, api_keys_file=str(write_keys_file(tmp_path)))


async def call(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, result.content
    assert isinstance(result.structured_content, dict)
    return result.structured_content


async def stored(client: Client, entry_id: str) -> dict[str, Any]:
    """The entry's status once the daemon stored it (it does within a few blocks of 100 ms)."""
    for _ in range(1500):
        status = await call(client, "entry_status", entry_id=entry_id)
        if status["state"] == "stored":
            break
        await asyncio.sleep(0.02)
    return status


async def remember_and_recall(client: Client, agent: str, state: dict[str, Any]) -> None:
    """The scenario of both transports: list, remember, wait until stored, recall, reconstruct."""
    tools = (await client.list_tools()).tools
    assert {tool.name for tool in tools} == TOOLS
    assert all(tool.description and len(tool.description) > 80 for tool in tools)
    remembered = await call(client, "remember", agent_id=agent, state=state, step=3)
    entry_id = remembered["entry_id"]
    status = await stored(client, entry_id)
    assert status == {"entry_id": entry_id, "state": "stored", "tier": "stm",
                      "key": f"mt:stm:{entry_id}", "agent_id": agent}  # fmt: skip
    partial = {"health": state["health"], "agent_type": state["agent_type"]}
    found = await call(client, "recall", agent_id=agent, state=partial, k=3)
    assert found["memories"][0]["entry_id"] == entry_id
    assert found["memories"][0]["state"] == state
    assert found["memories"][0]["exact_state"] is True and found["memories"][0]["step"] == 3
    health = state["health"]
    for where, kinds, expected in (
        ({"health": [health - 0.5, None]}, ["state"], [entry_id]),
        ({"health": [health + 0.5, None]}, None, []),
        (None, ["action"], []),
    ):
        narrowed = await call(
            client, "recall", agent_id=agent, state=partial, k=3, where=where, kinds=kinds
        )
        assert [m["entry_id"] for m in narrowed["memories"]] == expected, (where, kinds)
    action = {"action_type": "gather", "action_params": {"amount": 5}}
    done = await call(client, "remember", agent_id=agent, state=action, step=4, kind="action")
    assert (await stored(client, done["entry_id"]))["state"] == "stored"
    actions = await call(client, "recall", agent_id=agent, state=partial, k=3, kinds=["action"])
    assert [m["entry_id"] for m in actions["memories"]] == [done["entry_id"]]
    refused = await client.call_tool(
        "recall", {"agent_id": agent, "state": partial, "where": {"mood": "calm"}}
    )
    assert refused.is_error and "'mood' is not a filterable field" in str(refused.content)
    rebuilt = await call(client, "reconstruct", agent_id=agent, entry_id=entry_id)
    assert rebuilt["tier"] == "stm" and rebuilt["kept_state"] == state
    assert {"health", "energy", "agent_type"} <= set(rebuilt["state"])  # decoded: approximate


def a_state(seed: int) -> dict[str, Any]:
    return dict(simulate_states(1, seed=seed)[0])


def test_an_mcp_client_remembers_and_recalls_over_streamable_http(
    mcp_settings: Settings, engine: EmbeddingEngine
) -> None:
    keys = ApiKeys.from_settings(mcp_settings)
    app = http_app(build_gateway(mcp_settings), keys)

    async def scenario(url: str) -> None:
        admin = httpx2.AsyncClient(headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        async with admin, Client(streamable_http_client(url, http_client=admin)) as client:
            await remember_and_recall(client, "mcp-agent", a_state(31))
        bot = httpx2.AsyncClient(headers={"Authorization": f"Bearer {BOT_KEY}"})
        async with bot, Client(streamable_http_client(url, http_client=bot)) as client:
            denied = await client.call_tool("recall", {"agent_id": "mcp-agent", "state": {}})
            assert denied.is_error
            assert "may not access agent 'mcp-agent'" in str(denied.content)

    with serving(app) as base, running(daemon(mcp_settings, engine, "mcp-daemon")):
        asyncio.run(scenario(base + MCP_PATH))
        refused = httpx.post(base + MCP_PATH, json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
        assert refused.status_code == 401
        assert refused.json()["error"] == "missing or unknown API key"


def test_an_mcp_client_remembers_and_recalls_over_stdio(
    mcp_settings: Settings, engine: EmbeddingEngine, model_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MT_")}
    env.update(MT_REDIS_URL=mcp_settings.redis_url or "", MT_MODEL_PATH=str(model_path))
    server = StdioServerParameters(
        command=sys.executable, args=["-m", "memory_tiers", "mcp", "--transport", "stdio"], env=env
    )

    async def scenario() -> None:
        async with Client(server) as client:
            await remember_and_recall(client, "stdio-agent", a_state(32))

    with running(daemon(mcp_settings, engine, "mcp-stdio-daemon")):
        asyncio.run(scenario())


def test_recall_gives_a_memory_without_its_state_the_state_decoded_from_its_vector(
    mcp_settings: Settings, engine: EmbeddingEngine
) -> None:
    from memory_tiers.mcp_server import _memory

    vector = engine.encode_states([a_state(33)])["im"][0].tolist()
    hit = {"entry_id": "5-0", "tier": "im", "step": 2, "ts": 5, "feature_distance": 0.25,
           "state": None, "vector": vector, "agent_id": "a"}  # fmt: skip
    memory = _memory(build_gateway(mcp_settings), hit)
    assert memory == {"entry_id": "5-0", "tier": "im", "step": 2, "ts": 5,
                      "feature_distance": 0.25, "exact_state": False,
                      "state": engine.reconstruct_from_embedding(vector, "im").state}  # fmt: skip
