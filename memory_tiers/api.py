"""`memory-tiers api`: the HTTP service, for agents in any language (FastAPI on uvicorn).

Routes, versioned under /v1 (the OpenAPI document is served at /openapi.json and committed as
docs/openapi.json):

    POST /v1/memories              remember one state               -> {entry_id}
    POST /v1/memories/batch        remember many, all or none       -> {entry_ids}
    GET  /v1/entries/{entry_id}    what became of an entry          -> stored/dead_letter/...
    POST /v1/recall                recall by state or by vector     -> by_tier + merged hits
    POST /v1/reconstruct           approximate state of a memory or a vector
    GET  /v1/agents                agents with the most memories
    GET  /v1/agents/{agent_id}     one agent's memories per tier
    GET  /healthz                  `memory-tiers check`'s verdict (200 or 503), no key needed
    GET  /livez                    200 while this process answers (a container's liveness)
    GET  /metrics                  this API's request counts and latencies (Prometheus)

Why FastAPI: the request models are the validation (a 422 names the field: `body.k`), and the
same models write the OpenAPI document other languages generate clients from. Handlers are
thin: `MemoryGateway` does the work, synchronously, in a worker thread under a deadline
(`api_timeout_s`, then 504); the thread itself is bounded by the Redis socket timeout.

Auth: every /v1 route needs an API key (`Authorization: Bearer KEY` or `X-API-Key: KEY`);
missing or unknown: 401. A key limited to agents gets 403 for any other agent's memories.
Limits: request bodies over `api_max_body_bytes` get 413 (read before parsing), batches
over `api_max_batch` items 422, k over MAX_K 422.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Annotated, Any, Literal, Protocol, TypeVar, get_args

import anyio
import orjson
import redis
from fastapi import Depends, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from .auth import ApiKey, ApiKeys
from .client import MemoryClient, connect
from .constants import TIERS
from .entries import ENTRY_ID_PATTERN
from .errors import (
    ConfigError,
    EntryError,
    FeatureError,
    MemoryTiersError,
    ModelError,
    StoreError,
)
from .gateway import MAX_K, AccessDenied, MemoryGateway, NotFound, RecallFilter
from .protocol import KINDS, MAX_AGENT_ID_LENGTH, tag_problem
from .settings import Settings

log = logging.getLogger(__name__)

API_VERSION = "v1"
"""Path prefix of every route that reads or writes memories."""

MAX_TOP_AGENTS = 1000
"""Most agents GET /v1/agents lists."""

_T = TypeVar("_T")
_Scope = MutableMapping[str, Any]
_Message = MutableMapping[str, Any]
_Receive = Callable[[], Awaitable[_Message]]
_Send = Callable[[_Message], Awaitable[None]]
_App = Callable[[_Scope, _Receive, _Send], Awaitable[None]]


class ApiError(MemoryTiersError):
    """An error answered with `status`, naming the `field` at fault where there is one."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.field = field


# -- request and response models ---------------------------------------------------------------


def _agent_id(value: str) -> str:
    problem = tag_problem(value)
    if problem:
        raise ValueError(f"agent_id {problem}")
    if len(value) > MAX_AGENT_ID_LENGTH:
        raise ValueError(f"agent_id is {len(value)} characters, over {MAX_AGENT_ID_LENGTH}")
    return value


AgentId = Annotated[
    str,
    AfterValidator(_agent_id),
    Field(description="Whose memory: 1 to 256 characters, no control characters, no "
          "leading or trailing space.", examples=["bot-7"]),
]  # fmt: skip
Tier = Literal["stm", "im", "ltm"]
assert get_args(Tier) == TIERS, "the API's tier names follow constants.TIERS"
Kind = Literal["state", "action"]
assert get_args(Kind) == KINDS, "the API's kinds follow protocol.KINDS"


def _all_tiers() -> list[Tier]:
    return list(get_args(Tier))


class Memory(BaseModel):
    """One memory to remember: the stream protocol's fields (README, "The stream protocol")."""

    model_config = ConfigDict(extra="forbid")
    agent_id: AgentId
    state: dict[str, Any] = Field(
        description="The agent's state (or, with kind=action, an action): a JSON object.",
        examples=[{"health": 80, "energy": 55, "agent_type": "explorer"}],
    )
    step: int | None = Field(None, description="The agent's step counter, |step| < 2^53.")
    ts: int | None = Field(
        None, description="Milliseconds since the epoch; default: when Redis took the entry."
    )
    kind: Kind = Field("state", description="What `state` holds.")
    importance: float | None = Field(None, description="A finite number, kept for filters.")


class MemoryBatch(BaseModel):
    """Memories to remember together: all are checked before any is written."""

    model_config = ConfigDict(extra="forbid")
    items: list[Memory] = Field(min_length=1, description="At most MT_API_MAX_BATCH memories.")


class Remembered(BaseModel):
    """The stream entry id of a remembered memory: ask GET /v1/entries/{entry_id} about it."""

    entry_id: str


class RememberedBatch(BaseModel):
    """The stream entry ids of a batch, in the order of its items."""

    entry_ids: list[str]


class Range(BaseModel):
    """An inclusive range; a missing bound is open."""

    model_config = ConfigDict(extra="forbid")
    min: float | None = None
    max: float | None = None


class Filters(BaseModel):
    """Narrow a recall further: every given filter must hold."""

    model_config = ConfigDict(extra="forbid")
    agent_type: list[str] | None = Field(None, description="One of these agent types.")
    importance: Range | None = None
    ts: Range | None = Field(None, description="Epoch milliseconds.")
    kind: list[Kind] | None = Field(
        None,
        min_length=1,
        description='Only memories of these kinds: ["state"] keeps actions out. Memories '
        "stored before kinds were recorded match neither.",
    )
    where: dict[str, list[float | None] | list[str] | str] | None = Field(
        None,
        description=(
            "Conditions on the state's fields: a numeric field -> [low, high] (inclusive, "
            'null for open), a categorical one -> a value or a list of values; e.g. {"health": '
            '[null, 20], "status": "idle"}. A memory whose state left a field out never matches.'
        ),
    )

    def spec(self) -> RecallFilter:
        """The gateway's filter of these fields."""
        return RecallFilter(
            agent_types=tuple(self.agent_type) if self.agent_type else None,
            importance=None if self.importance is None else (self.importance.min,
                                                               self.importance.max),
            ts=None if self.ts is None else (_int(self.ts.min), _int(self.ts.max)),
            where=self.where,
            kinds=tuple(self.kind) if self.kind else None,
        )  # fmt: skip


class RecallQuery(BaseModel):
    """Recall an agent's memories nearest to a state (or to a tier vector)."""

    model_config = ConfigDict(extra="forbid")
    agent_id: AgentId
    state: dict[str, Any] | None = Field(
        None, description="A state to search for; give this or `vector`."
    )
    vector: list[float] | None = Field(
        None, description="A tier vector (384, 128 or 32 values: STM, IM or LTM) instead."
    )
    k: int = Field(10, ge=1, le=MAX_K, description="Hits per tier, and in the merged list.")
    tiers: list[Tier] = Field(default_factory=_all_tiers, min_length=1)
    step_range: tuple[int, int] | None = Field(None, description="[low, high], inclusive.")
    filters: Filters | None = None
    with_vectors: bool = Field(False, description="Also return each hit's tier vector.")

    @model_validator(mode="after")
    def _one_query(self) -> RecallQuery:
        if (self.state is None) == (self.vector is None):
            raise ValueError("give exactly one of state and vector")
        if self.step_range is not None and self.step_range[0] > self.step_range[1]:
            raise ValueError(f"step_range {list(self.step_range)}: low is over high")
        return self


class HitOut(BaseModel):
    """One recalled memory."""

    tier: Tier
    key: str
    entry_id: str
    agent_id: str
    agent_type: str
    step: int
    ts: int
    importance: float
    model_version: str
    distance: float | None = Field(description="Squared L2 distance in the tier's space.")
    state: dict[str, Any] | None = Field(description="The raw state, where the tier kept it.")
    vector: list[float] | None = Field(None, description="With with_vectors only.")


class MergedHitOut(HitOut):
    """A hit of the merged ranking, which compares tiers by feature distance."""

    feature_distance: float | None = Field(
        description="Mean squared feature difference to the query; null: not measurable."
    )
    exact: bool = Field(description="Measured on the kept state (true) or a reconstruction.")


class RecallOut(BaseModel):
    """Each searched tier's hits, nearest first, and all of them ranked together (at most k)."""

    agent_id: str
    query_tier: Tier | None = Field(description="The tier of a vector query; null: a state.")
    by_tier: dict[Tier, list[HitOut]]
    merged: list[MergedHitOut]


class EntryOut(BaseModel):
    """What became of a stream entry."""

    entry_id: str
    state: Literal["stored", "dead_letter", "pending", "unknown"] = Field(
        description="stored: in `tier`; dead_letter: refused, see `error`; pending: not yet "
        "stored (`delivered`: a daemon is on it); unknown: never added, deleted by retention, "
        "or its dead letter was trimmed."
    )
    tier: Tier | None = None
    key: str | None = None
    agent_id: str | None = None
    error: str | None = None
    delivered: bool | None = None


class ReconstructQuery(BaseModel):
    """Decode a stored memory (agent_id + entry_id) or a tier vector into a readable state."""

    model_config = ConfigDict(extra="forbid")
    agent_id: AgentId | None = None
    entry_id: str | None = Field(None, pattern=ENTRY_ID_PATTERN.pattern)
    vector: list[float] | None = None

    @model_validator(mode="after")
    def _one_target(self) -> ReconstructQuery:
        by_entry = self.agent_id is not None and self.entry_id is not None
        if by_entry == (self.vector is not None):
            raise ValueError("give agent_id and entry_id, or vector")
        return self


class ReconstructOut(BaseModel):
    """An approximate state, decoded from a tier vector."""

    tier: Tier
    state: dict[str, Any]
    entry_id: str | None = None
    agent_id: str | None = None
    key: str | None = None
    step: int | None = None
    ts: int | None = None
    kept_state: dict[str, Any] | None = Field(None, description="The raw state, where kept.")


class AgentOut(BaseModel):
    """One agent's memories per tier."""

    agent_id: str
    memories: dict[Tier, int]
    total: int


class HealthOut(BaseModel):
    """`memory-tiers check`'s verdict."""

    healthy: bool
    detail: str


class ErrorOut(BaseModel):
    """What went wrong, and in which field when one is to blame."""

    error: str
    field: str | None = None


# -- the app -----------------------------------------------------------------------------------

_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <API key>")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="X-API-Key: <API key>")


async def _caller(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    header: Annotated[str | None, Depends(_header)],
) -> ApiKey | None:
    """The API key of the request (app.state.keys); None when the app requires none."""
    if not request.app.state.require_keys:
        return None
    keys: ApiKeys = request.app.state.keys
    found = keys.find(bearer.credentials if bearer else header)
    if found is None:
        raise ApiError(401, "missing or unknown API key", "Authorization")
    return found


Caller = Annotated[ApiKey | None, Depends(_caller)]
"""A route's caller: its API key, checked (401 without a known one)."""

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut}
    for code in (400, 401, 403, 404, 413, 422, 503, 504)
}  # fmt: skip


class _Run(Protocol):
    """Runs a route's blocking gateway call off the event loop (`_in_worker_thread`)."""

    def __call__(self, work: Callable[[], _T]) -> Awaitable[_T]: ...


def create_app(gateway: MemoryGateway, keys: ApiKeys, *, require_keys: bool = True) -> FastAPI:
    """The HTTP API over `gateway`.

    Args:
        keys: the accepted API keys.
        require_keys: False serves /v1 without keys (every caller may access every agent).

    Raises:
        ValueError: keys are required but none was given.
    """
    if require_keys and not len(keys):
        raise ValueError("no API key: set MT_API_KEYS or MT_API_KEYS_FILE")
    settings = gateway.settings
    app = FastAPI(
        title="memory-tiers",
        version="1",
        description="Remember agent states and recall similar memories across the STM, IM "
        "and LTM tiers. Every /v1 route needs an API key.",
        responses=_ERRORS,
    )
    metrics = _ApiMetrics()

    app.state.keys = keys
    app.state.require_keys = require_keys

    run = _in_worker_thread(settings.api_timeout_s)
    # In this order: it is the OpenAPI document's (docs/openapi.json).
    _add_memory_routes(app, gateway, run)
    _add_recall_routes(app, gateway, run)
    _add_stats_routes(app, gateway, run)
    _add_service_routes(app, gateway, run, metrics)
    _add_error_handlers(app)
    app.add_middleware(_BodyLimit, max_bytes=settings.api_max_body_bytes, metrics=metrics)
    return app


_V1 = f"/{API_VERSION}"


def _in_worker_thread(timeout_s: float) -> _Run:
    """Runs work in a worker thread, so the event loop keeps answering while the gateway
    waits on Redis; 504 once `timeout_s` passed (the thread finishes)."""

    async def run(work: Callable[[], _T]) -> _T:
        try:
            with anyio.fail_after(timeout_s):
                return await anyio.to_thread.run_sync(work, abandon_on_cancel=True)
        except TimeoutError as e:
            raise ApiError(504, f"no answer within {timeout_s:g} s") from e

    return run


def _add_memory_routes(app: FastAPI, gateway: MemoryGateway, run: _Run) -> None:
    """The routes tagged "memories": remember one or many states, and what became of one."""
    settings = gateway.settings

    @app.post(f"{_V1}/memories", response_model=Remembered, status_code=201, tags=["memories"])
    async def remember(memory: Memory, key: Caller) -> Any:
        """Remember one state: XADD to the stream the daemons read; returns its entry id."""
        item = memory.model_dump(exclude_none=True)
        return {"entry_id": await run(lambda: gateway.remember(key, item))}

    @app.post(
        f"{_V1}/memories/batch", response_model=RememberedBatch, status_code=201,
        tags=["memories"],
    )  # fmt: skip
    async def remember_batch(batch: MemoryBatch, key: Caller) -> Any:
        """Remember many states in one round trip: all are checked first, then all written."""
        if len(batch.items) > settings.api_max_batch:
            raise ApiError(
                422, f"{len(batch.items)} items, over the limit of {settings.api_max_batch} "
                "(MT_API_MAX_BATCH): split the batch", "items",
            )  # fmt: skip
        items = [m.model_dump(exclude_none=True) for m in batch.items]
        return {"entry_ids": await run(lambda: gateway.remember_many(key, items))}

    @app.get(
        f"{_V1}/entries/{{entry_id}}", response_model=EntryOut, response_model_exclude_none=True,
        tags=["memories"],
    )  # fmt: skip
    async def entry(
        entry_id: Annotated[str, Path(pattern=ENTRY_ID_PATTERN.pattern)], key: Caller
    ) -> Any:
        """What became of a remembered entry: stored (in which tier), dead-lettered (why),
        pending (not yet stored) or unknown."""
        return await run(lambda: gateway.status(key, entry_id))


def _add_recall_routes(app: FastAPI, gateway: MemoryGateway, run: _Run) -> None:
    """The routes tagged "recall": nearest memories, and readable states."""

    @app.post(f"{_V1}/recall", response_model=RecallOut, tags=["recall"])
    async def recall(query: RecallQuery, key: Caller) -> Response:
        """An agent's memories nearest to a state or vector: each tier's k hits, re-sorted by
        feature distance, and the k nearest of all tiers merged (MemoryClient.recall)."""
        step_range = None if query.step_range is None else tuple(query.step_range)
        target: Any = query.state if query.state is not None else query.vector
        found = await run(
            lambda: gateway.recall(
                key, query.agent_id, target, query.k, query.tiers, step_range,  # type: ignore[arg-type]
                None if query.filters is None else query.filters.spec(), query.with_vectors,
            )
        )  # fmt: skip
        return _json(found)

    @app.post(f"{_V1}/reconstruct", response_model=ReconstructOut, tags=["recall"])
    async def reconstruct(query: ReconstructQuery, key: Caller) -> Any:
        """A readable approximate state of a stored memory (any tier) or of a tier vector."""
        if query.vector is not None:
            vector = query.vector
            if key is not None and key.agents is not None:
                raise ApiError(403, "an agent-limited API key reconstructs stored memories only")
            return await run(lambda: gateway.reconstruct_vector(vector))
        agent, entry_id = query.agent_id, query.entry_id
        assert agent is not None and entry_id is not None
        return await run(lambda: gateway.reconstruct(key, agent, entry_id))


def _add_stats_routes(app: FastAPI, gateway: MemoryGateway, run: _Run) -> None:
    """The routes tagged "stats": who has memories, and how many per tier."""

    @app.get(f"{_V1}/agents", response_model=list[AgentOut], tags=["stats"])
    async def agents(key: Caller, top: Annotated[int, Query(ge=0, le=MAX_TOP_AGENTS)] = 100) -> Any:
        """The agents with the most memories (a limited key: its own), most first."""
        return await run(lambda: gateway.agents(key, top))

    @app.get(f"{_V1}/agents/{{agent_id:path}}", response_model=AgentOut, tags=["stats"])
    async def agent(agent_id: str, key: Caller) -> Any:
        """One agent's memories per tier."""
        return await run(lambda: gateway.agent_stats(key, agent_id))


def _add_service_routes(
    app: FastAPI, gateway: MemoryGateway, run: _Run, metrics: _ApiMetrics
) -> None:
    """The routes tagged "service", outside /v1 and without keys: health and metrics."""

    @app.get("/healthz", response_model=HealthOut, tags=["service"])
    async def healthz() -> JSONResponse:
        """Healthy (200) when a daemon is alive, the indexes are whole and the lag is at most
        MT_MAX_LAG, else 503; the detail is `memory-tiers check`'s line. No key needed."""
        healthy, line = await run(gateway.health)
        return JSONResponse({"healthy": healthy, "detail": line}, 200 if healthy else 503)

    @app.get("/livez", tags=["service"])
    async def livez() -> dict[str, bool]:
        """200 while this process answers, whatever Redis and the daemons do: a container's
        liveness check (/healthz is the service's)."""
        return {"alive": True}

    @app.get("/metrics", tags=["service"], response_class=Response)
    async def prometheus() -> Response:
        """This API's requests and latencies, Prometheus text (the daemons serve the rest)."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


def _json(value: Any) -> Response:
    """A JSON response serialised by orjson: no second pass through the response model."""
    body = orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(body, media_type="application/json")


def _error(status: int, message: str, field: str | None = None) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": message, "field": field}, status, headers=headers)


def _add_error_handlers(app: FastAPI) -> None:
    """Every error as {"error", "field"}: 4xx for the caller's mistakes, 503 for outages."""

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
        if first.get("type") == "json_invalid":
            return _error(400, f"the body is not valid JSON: {first.get('msg')}", "body")
        return _error(422, f"{where or 'body'}: {first.get('msg')}", where or "body")

    @app.exception_handler(MemoryTiersError)
    async def refused(_: Request, exc: MemoryTiersError) -> JSONResponse:
        return _refusal(exc)

    @app.exception_handler(ValueError)
    async def bad_value(_: Request, exc: ValueError) -> JSONResponse:
        return _error(422, str(exc), _blamed_field(str(exc)))


def _refusal(exc: MemoryTiersError) -> JSONResponse:
    """The answer to one of the package's errors: its status by what went wrong, and the
    request field at fault where one is known."""
    if isinstance(exc, ApiError):
        return _error(exc.status, str(exc), exc.field)
    if isinstance(exc, AccessDenied):
        return _error(403, str(exc), "agent_id")
    if isinstance(exc, NotFound):
        return _error(404, str(exc))
    if isinstance(exc, FeatureError):
        return _error(422, f"state: {exc}", "state")
    if isinstance(exc, EntryError):
        return _error(422, str(exc), _blamed_field(str(exc)))
    if isinstance(exc, (StoreError, ModelError)):
        log.warning("API request failed: %s", exc)
        return _error(503, str(exc))
    return _error(500, str(exc))


def _blamed_field(message: str) -> str | None:
    """The request field an error message starts with ('item 3: state ...' -> items.3)."""
    words = message.replace(":", " ").replace("=", " ").split()
    if len(words) >= 2 and words[0] == "item" and words[1].isdigit():
        inner = _blamed_field(" ".join(words[2:]))
        return f"items.{words[1]}" + (f".{inner}" if inner else "")
    if words and words[0] == "where":  # "where: 'health' range ..." -> filters.where.health
        named = len(words) > 1 and words[1].startswith("'")
        return "filters.where" + (f".{words[1].strip(chr(39))}" if named else "")
    known = ("agent_id", "state", "step", "ts", "kind", "importance", "vector", "k", "tiers")
    return next((word for word in words[:2] if word in known), None)


def _int(value: float | None) -> int | None:
    return None if value is None else int(value)


# -- limits and metrics ------------------------------------------------------------------------


class _ApiMetrics:
    """Requests by route and status, and their latency; a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "memory_tiers_api_requests", "HTTP API requests answered.",
            ["method", "route", "status"], registry=self.registry,
        )  # fmt: skip
        self.seconds = Histogram(
            "memory_tiers_api_request_seconds", "HTTP API request latency.",
            ["method", "route"], registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
        )  # fmt: skip

    def observe(self, scope: _Scope, status: int, seconds: float) -> None:
        route = scope.get("route")
        path = getattr(route, "path", None) or "unmatched"
        self.requests.labels(scope.get("method", ""), path, str(status)).inc()
        self.seconds.labels(scope.get("method", ""), path).observe(seconds)


class _BodyLimit:
    """Refuses bodies over `max_bytes` with 413, from Content-Length or as they stream in,
    before anything parses them; counts every request in the metrics."""

    def __init__(self, app: _App, max_bytes: int, metrics: _ApiMetrics) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.metrics = metrics

    async def __call__(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def sent(message: _Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        try:
            await self._limited(scope, receive, sent)
        finally:
            self.metrics.observe(scope, status[0], time.perf_counter() - started)

    async def _limited(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large(scope, receive, send)
            return
        seen = 0
        refused = False

        async def counted() -> _Message:
            # Past the limit: answer 413 now, and tell the app the client left, so it stops
            # reading (whatever it answers then is dropped).
            nonlocal seen, refused
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes and not refused:
                refused = True
                await self._too_large(scope, receive, send)
            return {"type": "http.disconnect"} if refused else message

        async def unless_refused(message: _Message) -> None:
            if not refused:
                await send(message)

        await self.app(scope, counted, unless_refused)

    async def _too_large(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        response = _error(
            413, f"request body over {self.max_bytes} bytes (MT_API_MAX_BODY_BYTES)", "body"
        )
        await response(scope, receive, send)


# -- running it --------------------------------------------------------------------------------


def build_gateway(settings: Settings) -> MemoryGateway:
    """A gateway on its own Redis connection (socket timeout api_timeout_s), model loaded now.

    Raises:
        ModelError: the model cannot be loaded.
    """
    connection = connect(
        settings, timeout_s=settings.api_timeout_s, connect_timeout_s=settings.api_timeout_s
    )
    client = MemoryClient(connection, settings)
    client.engine  # noqa: B018 -- load (or refuse) the model before taking requests
    return MemoryGateway(client, settings)


def build(settings: Settings, *, require_keys: bool = True) -> tuple[FastAPI, MemoryGateway]:
    """The app over `build_gateway(settings)`, with the keys of the settings.

    Raises:
        ConfigError: unreadable or malformed API keys, or none while keys are required.
        ModelError: the model cannot be loaded.
    """
    keys = ApiKeys.from_settings(settings)
    if require_keys and not len(keys):
        raise ConfigError(
            "memory-tiers api needs API keys: MT_API_KEYS_FILE (or MT_API_KEYS); --no-auth "
            "serves without (on a trusted network only)"
        )
    gateway = build_gateway(settings)
    return create_app(gateway, keys, require_keys=require_keys), gateway


def openapi_document(settings: Settings) -> dict[str, Any]:
    """The OpenAPI document of the API, made without Redis or a model (docs/openapi.json)."""
    client = MemoryClient(redis.Redis(), settings)  # never connects: no command is sent
    app = create_app(MemoryGateway(client, settings), ApiKeys([]), require_keys=False)
    return app.openapi()
