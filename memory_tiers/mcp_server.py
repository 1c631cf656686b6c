"""`memory-tiers mcp`: an MCP server (the official `mcp` SDK) for LLM agents.

Tools: remember a state, recall similar memories, reconstruct a memory, and ask what became of
a remembered entry. Each runs one `MemoryGateway` call in a worker thread, so an MCP agent gets
what an HTTP or Python agent gets.

Transports: stdio (a local process an MCP host starts; whoever starts it may access every
agent) and streamable HTTP (at /mcp, every request needs an API key, as the HTTP API does;
an agent-limited key reaches only its agents: the tools read the key from the request headers).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Annotated, Any, Literal, TypeVar

import anyio
from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field
from starlette.responses import JSONResponse

from .auth import ApiKey, ApiKeys
from .errors import MemoryTiersError
from .gateway import MemoryGateway, RecallFilter

MCP_PATH = "/mcp"
"""Where the streamable HTTP transport listens."""

INSTRUCTIONS = (
    "Long-term memory for agents with structured state. remember stores one state of an agent "
    "(a JSON object of its fields: health, energy, position, agent_type, current_action, ...); "
    "a background daemon stores it within a second or so. recall finds the agent's stored "
    "states most similar to a given (possibly partial) state, across short-term, intermediate "
    "and long-term memory. reconstruct decodes an older memory whose raw state was not kept. "
    "entry_status tells whether a remembered state was stored or refused, and why."
)

_T = TypeVar("_T")
_Scope = MutableMapping[str, Any]
_Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
_Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
_App = Callable[[_Scope, _Receive, _Send], Awaitable[None]]


def create_server(gateway: MemoryGateway, keys: ApiKeys | None = None) -> MCPServer:
    """The MCP server over `gateway`.

    Args:
        keys: the API keys of the HTTP transport, used to limit a key to its agents; None
            (stdio): every caller may access every agent.
    """
    server = MCPServer("memory-tiers", instructions=INSTRUCTIONS)

    def caller(ctx: Context) -> ApiKey | None:
        if keys is None:
            return None
        headers = ctx.headers or {}
        return keys.find(_presented_key(headers.get("authorization"), headers.get("x-api-key")))

    @server.tool()
    async def remember(
        agent_id: Annotated[str, Field(description="Whose memory this is, e.g. 'bot-7'.")],
        state: Annotated[
            dict[str, Any],
            Field(
                description='The agent\'s current state as a JSON object, e.g. {"health": 80, '
                '"energy": 55, "agent_type": "explorer", "current_action": "move", '
                '"position": {"x": 3, "y": 4}}. Unknown fields are kept too.'
            ),
        ],
        ctx: Context,
        step: Annotated[int | None, Field(description="The agent's step counter.")] = None,
        importance: Annotated[
            float | None, Field(description="How much this memory matters, for filtering.")
        ] = None,
        kind: Annotated[
            Literal["state", "action"],
            Field(
                description="'action' when `state` is something the agent did instead: "
                '{"action_type": "gather", "action_params": {"amount": 5}, "outcome": '
                '{"gained": 5}}. recall finds actions by their kind too.'
            ),
        ] = "state",
    ) -> dict[str, Any]:
        """Remember one state of an agent (or one action, with kind 'action'). Returns its
        entry_id; the memory is searchable once the daemon stored it (usually within a second:
        entry_status says when)."""
        item: dict[str, Any] = {"agent_id": agent_id, "state": state, "kind": kind}
        options = {"step": step, "importance": importance}
        item.update({name: value for name, value in options.items() if value is not None})
        key = caller(ctx)
        entry_id = await _run(lambda: gateway.remember(key, item))
        return {"entry_id": entry_id}

    @server.tool()
    async def recall(
        agent_id: Annotated[str, Field(description="Whose memories to search.")],
        state: Annotated[
            dict[str, Any],
            Field(
                description="What to look for: a state, whole or partial, in the same shape "
                'as remembered states, e.g. {"health": 20, "agent_type": "explorer"}.'
            ),
        ],
        ctx: Context,
        k: Annotated[int, Field(ge=1, le=100, description="How many memories to return.")] = 5,
        tiers: Annotated[
            list[str] | None,
            Field(description="Search only these of 'stm', 'im', 'ltm' (default: all)."),
        ] = None,
        where: Annotated[
            dict[str, Any] | None,
            Field(
                description="Only memories whose state matches every condition: a numeric "
                "field -> [low, high] (inclusive, null for open), a categorical one -> a value "
                'or a list of values, e.g. {"health": [null, 20], "status": "idle"}. A memory '
                "whose state left the field out never matches."
            ),
        ] = None,
        kinds: Annotated[
            list[Literal["state", "action"]] | None,
            Field(description="Only memories of these kinds (default: both)."),
        ] = None,
    ) -> dict[str, Any]:
        """Find the agent's remembered states most similar to `state`, nearest first, across
        short-term (stm), intermediate (im) and long-term (ltm) memory. Each memory has its
        state: the exact one where kept (`exact_state` true), else a reconstruction, which is
        approximate. `feature_distance` is 0 for an identical state and grows with difference."""
        key = caller(ctx)
        searched = tuple(tiers) if tiers else ("stm", "im", "ltm")
        spec = RecallFilter(where=where, kinds=tuple(kinds) if kinds else None)

        def work() -> dict[str, Any]:
            found = gateway.recall(key, agent_id, state, k, searched, spec=spec, with_vectors=True)
            return {"memories": [_memory(gateway, hit) for hit in found["merged"]]}

        return await _run(work)

    @server.tool()
    async def reconstruct(
        agent_id: Annotated[str, Field(description="Whose memory it is.")],
        entry_id: Annotated[str, Field(description="The memory's entry_id, from recall.")],
        ctx: Context,
    ) -> dict[str, Any]:
        """Decode one stored memory back into an approximate readable state, from whichever
        tier holds it (older memories keep only a compressed vector)."""
        key = caller(ctx)
        return await _run(lambda: gateway.reconstruct(key, agent_id, entry_id))

    @server.tool()
    async def entry_status(
        entry_id: Annotated[str, Field(description="The entry_id that remember returned.")],
        ctx: Context,
    ) -> dict[str, Any]:
        """What became of a remembered state: 'stored' (and in which tier), 'dead_letter'
        (refused, with the reason in `error`), 'pending' (not stored yet) or 'unknown'."""
        key = caller(ctx)
        return await _run(lambda: gateway.status(key, entry_id))

    return server


async def _run(work: Callable[[], _T]) -> _T:
    """`work` in a worker thread; the caller's mistakes (a bad state, a refused agent, no such
    memory) reach the model as tool errors with their message, so it can correct itself."""
    try:
        return await anyio.to_thread.run_sync(work)
    except (MemoryTiersError, ValueError) as e:
        raise ToolError(str(e)) from e


def _memory(gateway: MemoryGateway, hit: dict[str, Any]) -> dict[str, Any]:
    """A merged hit for an LLM: its state, decoded from its own vector where the tier did not
    keep it (no second read, so a memory moving on meanwhile still gets its state)."""
    state = hit["state"]
    exact = state is not None
    if state is None:
        state = gateway.reconstruct_vector(hit["vector"])["state"]
    return {
        "entry_id": hit["entry_id"], "tier": hit["tier"], "step": hit["step"], "ts": hit["ts"],
        "feature_distance": hit["feature_distance"], "exact_state": exact, "state": state,
    }  # fmt: skip


def _presented_key(authorization: str | None, header: str | None) -> str | None:
    """The key of `Authorization: Bearer KEY`, else of `X-API-Key: KEY`."""
    if authorization:
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip()
    return header


class RequireKey:
    """ASGI wrapper: HTTP requests without a known API key get 401 before MCP sees them."""

    def __init__(self, app: _App, keys: ApiKeys) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        if scope["type"] == "http":
            headers = {
                k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]
            }
            presented = _presented_key(headers.get("authorization"), headers.get("x-api-key"))
            if self.keys.find(presented) is None:
                response = JSONResponse(
                    {"error": "missing or unknown API key", "field": "Authorization"},
                    401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def http_app(gateway: MemoryGateway, keys: ApiKeys, *, require_keys: bool = True) -> _App:
    """The streamable HTTP app at MCP_PATH, behind API keys unless require_keys is False."""
    server = create_server(gateway, keys if require_keys else None)
    app: _App = server.streamable_http_app(
        streamable_http_path=MCP_PATH,
        max_request_body_size=gateway.settings.api_max_body_bytes,
        host=gateway.settings.api_host,
    )
    return RequireKey(app, keys) if require_keys else app
