"""The HTTP API against a real Redis, a running daemon and uvicorn, through httpx.

Memories go in over HTTP, their entry status is polled until stored, and recall over HTTP is
compared, value for value, with `MemoryClient.recall` on the same data.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from click.testing import CliRunner
from http_helpers import ADMIN_KEY, BOT_AGENTS, BOT_KEY, serving, write_keys_file
from test_ingest import daemon, make_settings, running, wait_for, xadd_raw

from memory_tiers import EmbeddingEngine, Settings
from memory_tiers.api import build, openapi_document
from memory_tiers.cli import main
from memory_tiers.client import MemoryClient
from memory_tiers.server import EmbeddedRedis
from memory_tiers.sim import simulate_states

ROOT = Path(__file__).resolve().parent.parent
OPENAPI_PATH = ROOT / "docs" / "openapi.json"


@pytest.fixture
def api_settings(redis_server: EmbeddedRedis, redis_client: redis.Redis, model_path: Path,
                 tmp_path: Path) -> Settings:  # fmt: skip
    return make_settings(
        redis_server.url, model_path, api_keys_file=str(write_keys_file(tmp_path)),
        api_max_batch=50, api_max_body_bytes=200_000,
    )  # fmt: skip


@pytest.fixture
def api(api_settings: Settings) -> Iterator[httpx.Client]:
    """An httpx client on the running API, sending the admin key."""
    app, _ = build(api_settings)
    with serving(app) as url, httpx.Client(base_url=url, timeout=30) as http:
        http.headers["Authorization"] = f"Bearer {ADMIN_KEY}"
        yield http


@pytest.fixture
def with_daemon(api_settings: Settings, engine: EmbeddingEngine) -> Iterator[None]:
    with running(daemon(api_settings, engine, "api-test-daemon")):
        yield


def states_of(agent: str, n: int, seed: int) -> list[dict[str, Any]]:
    return [dict(s, agent_id=agent) for s in simulate_states(n, num_agents=1, seed=seed)]


def stored(http: httpx.Client, entry_id: str) -> bool:
    reply = http.get(f"/v1/entries/{entry_id}")
    assert reply.status_code == 200, reply.text
    return bool(reply.json()["state"] == "stored")


def remember_all(http: httpx.Client, agent: str, states: list[dict[str, Any]]) -> list[str]:
    """Remember `states` over HTTP (the first alone, the rest as a batch); wait until stored."""
    first = http.post("/v1/memories", json={"agent_id": agent, "state": states[0], "step": 0})
    assert first.status_code == 201, first.text
    items = [{"agent_id": agent, "state": s, "step": i} for i, s in enumerate(states[1:], 1)]
    batch = http.post("/v1/memories/batch", json={"items": items})
    assert batch.status_code == 201, batch.text
    ids = [first.json()["entry_id"], *batch.json()["entry_ids"]]
    wait_for(lambda: all(stored(http, i) for i in ids), 30, f"{len(ids)} entries stored")
    return ids


# -- remember, status, recall ------------------------------------------------------------------


def test_remembered_states_are_stored_and_recalled_as_memory_client_recalls_them(
    api: httpx.Client,
    with_daemon: None,
    api_settings: Settings,
    redis_client: redis.Redis,
    engine: EmbeddingEngine,
) -> None:
    states = states_of("bot-1", 25, seed=3)
    ids = remember_all(api, "bot-1", states)
    statuses = [api.get(f"/v1/entries/{i}").json() for i in ids]
    assert statuses[0] == {"entry_id": ids[0], "state": "stored", "tier": "stm",
                           "key": f"mt:stm:{ids[0]}", "agent_id": "bot-1"}  # fmt: skip
    assert {s["tier"] for s in statuses} == {"stm"}

    query = dict(states[7], health=float(states[7].get("health", 50)) + 1.0)
    reply = api.post("/v1/recall", json={"agent_id": "bot-1", "state": query, "k": 5})
    assert reply.status_code == 200, reply.text
    over_http = reply.json()

    client = MemoryClient(redis.Redis.from_url(api_settings.redis_url or ""), api_settings, engine)
    in_process = client.recall("bot-1", query, k=5)
    assert over_http["agent_id"] == "bot-1" and over_http["query_tier"] is None
    assert [h["key"] for h in over_http["merged"]] == [m.hit.key for m in in_process.merged]
    assert [h["feature_distance"] for h in over_http["merged"]] == pytest.approx(
        [m.feature_distance for m in in_process.merged], rel=1e-6
    )
    assert [h["state"] for h in over_http["merged"]] == [m.hit.state for m in in_process.merged]
    assert [h["exact"] for h in over_http["merged"]] == [True] * 5
    assert {t: [h["key"] for h in hits] for t, hits in over_http["by_tier"].items()} == {
        t: [h.key for h in hits] for t, hits in in_process.by_tier.items()
    }
    nearest = over_http["merged"][0]
    assert nearest["entry_id"] == ids[7] and nearest["step"] == 7
    assert nearest["state"] == states[7]


def test_recall_by_vector_with_filters_and_vectors(
    api: httpx.Client, with_daemon: None, api_settings: Settings, engine: EmbeddingEngine
) -> None:
    states = states_of("bot-1", 12, seed=4)
    ids = remember_all(api, "bot-1", states)
    vector = engine.encode_states([states[3]])["stm"][0].tolist()
    body = {"agent_id": "bot-1", "vector": vector, "k": 3, "tiers": ["stm"],
            "step_range": [2, 9], "with_vectors": True}  # fmt: skip
    found = api.post("/v1/recall", json=body).json()
    assert found["query_tier"] == "stm"
    assert found["merged"][0]["entry_id"] == ids[3]
    assert found["merged"][0]["distance"] == pytest.approx(0.0, abs=1e-4)
    assert found["merged"][0]["vector"] == pytest.approx(vector, abs=1e-6)
    assert all(2 <= h["step"] <= 9 for h in found["merged"]) and len(found["merged"]) == 3
    later = api.post(
        "/v1/recall", json={**body, "filters": {"ts": {"min": 0}}, "step_range": [8, 9]}
    )
    assert sorted(h["step"] for h in later.json()["merged"]) == [8, 9]
    status = states[5]["status"]
    same = [i for i, s in enumerate(states) if s.get("status") == status]
    where = {"where": {"status": status, "health": [None, 1000]}}
    filtered = api.post("/v1/recall", json={**body, "k": 12, "step_range": [0, 11],
                                            "filters": where})  # fmt: skip
    assert filtered.status_code == 200, filtered.text
    assert sorted(h["step"] for h in filtered.json()["by_tier"]["stm"]) == [
        i for i in same if "health" in states[i]
    ]


def test_recall_keeps_to_the_kinds_asked_for(api: httpx.Client, with_daemon: None) -> None:
    states = states_of("bot-2", 4, seed=6)
    state_ids = remember_all(api, "bot-2", states)
    action = {"action_type": "gather", "action_params": {"amount": 5}}
    reply = api.post(
        "/v1/memories", json={"agent_id": "bot-2", "state": action, "kind": "action", "step": 9}
    )
    assert reply.status_code == 201, reply.text
    action_id = reply.json()["entry_id"]
    wait_for(lambda: stored(api, action_id), 30, "the action stored")

    def recalled(filters: dict[str, Any]) -> list[str]:
        body = {"agent_id": "bot-2", "state": states[0], "k": 10, "tiers": ["stm"]}
        reply = api.post("/v1/recall", json={**body, "filters": filters})
        assert reply.status_code == 200, reply.text
        return sorted(hit["entry_id"] for hit in reply.json()["merged"])

    assert recalled({"kind": ["action"]}) == [action_id]
    assert recalled({"kind": ["state"]}) == sorted(state_ids)
    everything = sorted([*state_ids, action_id])
    assert recalled({"kind": ["state", "action"]}) == recalled({}) == everything


def test_entry_status_tells_pending_dead_lettered_and_unknown(
    api: httpx.Client, api_settings: Settings, engine: EmbeddingEngine, redis_client: redis.Redis
) -> None:
    waiting = api.post("/v1/memories", json={"agent_id": "bot-1", "state": {"health": 3}})
    entry_id = waiting.json()["entry_id"]
    assert api.get(f"/v1/entries/{entry_id}").json() == {
        "entry_id": entry_id,
        "state": "pending",
        "agent_id": "bot-1",
        "delivered": False,
    }
    bad = xadd_raw(redis_client, {"agent_id": "bot-1", "state": "[1, 2]"})
    with running(daemon(api_settings, engine, "status-daemon")):
        wait_for(lambda: stored(api, entry_id), 30, "the good entry stored")
        wait_for(lambda: api.get(f"/v1/entries/{bad}").json()["state"] != "pending", 30,
                 "the bad entry handled")  # fmt: skip
    letter = api.get(f"/v1/entries/{bad}").json()
    assert letter == {"entry_id": bad, "state": "dead_letter", "agent_id": "bot-1",
                      "error": "state must be a JSON object, got list"}  # fmt: skip
    assert api.get("/v1/entries/1-0").json() == {"entry_id": "1-0", "state": "unknown"}
    malformed = api.get("/v1/entries/not-an-id")
    assert malformed.status_code == 422 and malformed.json()["field"] == "path.entry_id"


def test_reconstruct_a_stored_memory_and_a_vector(
    api: httpx.Client, with_daemon: None, engine: EmbeddingEngine
) -> None:
    states = states_of("bot-1", 3, seed=5)
    ids = remember_all(api, "bot-1", states)
    rebuilt = api.post("/v1/reconstruct", json={"agent_id": "bot-1", "entry_id": ids[1]})
    assert rebuilt.status_code == 200, rebuilt.text
    body = rebuilt.json()
    expected = engine.reconstruct_from_embedding(engine.encode_states([states[1]])["stm"][0])
    assert body["tier"] == "stm" and body["kept_state"] == states[1] and body["step"] == 1
    assert body["state"].keys() == expected.state.keys()
    assert body["state"]["agent_type"] == expected.state["agent_type"]
    vector = engine.encode_states([states[1]])["ltm"][0].tolist()
    decoded = api.post("/v1/reconstruct", json={"vector": vector}).json()
    assert decoded["tier"] == "ltm"
    assert decoded["state"] == engine.reconstruct_from_embedding(vector, "ltm").state
    other = api.post("/v1/reconstruct", json={"agent_id": "bot-9", "entry_id": ids[1]})
    assert other.status_code == 404


def test_agent_stats_and_health(api: httpx.Client, api_settings: Settings,
                                engine: EmbeddingEngine) -> None:  # fmt: skip
    assert api.get("/livez", headers={"Authorization": ""}).json() == {"alive": True}
    unhealthy = api.get("/healthz")
    assert unhealthy.status_code == 503 and unhealthy.json()["healthy"] is False
    assert unhealthy.json()["detail"].startswith("unhealthy: no live daemon")
    with running(daemon(api_settings, engine, "stats-daemon")):
        remember_all(api, "bot-1", states_of("bot-1", 4, seed=6))
        remember_all(api, "bot-3", states_of("bot-3", 2, seed=7))
        healthy = api.get("/healthz", headers={"Authorization": ""})
        assert healthy.status_code == 200
        assert healthy.json()["detail"].startswith("ok: 1 live daemon(s) (stats-daemon)")
    assert api.get("/v1/agents/bot-1").json() == {
        "agent_id": "bot-1",
        "memories": {"stm": 4, "im": 0, "ltm": 0},
        "total": 4,
    }
    assert [a["agent_id"] for a in api.get("/v1/agents", params={"top": 5}).json()] == [
        "bot-1",
        "bot-3",
    ]
    metrics = api.get("/metrics").text
    assert 'memory_tiers_api_requests_total{method="GET",route="/v1/agents",status="200"} 1.0' in (
        metrics
    )


# -- auth --------------------------------------------------------------------------------------


def test_requests_without_a_valid_key_get_401(api: httpx.Client) -> None:
    body = {"agent_id": "bot-1", "state": {"health": 1}}
    for headers in ({"Authorization": ""}, {"Authorization": "Bearer wrong-key-0123456789"},
                    {"Authorization": "", "X-API-Key": "nope"}):  # fmt: skip
        reply = api.post("/v1/memories", json=body, headers=headers)
        assert reply.status_code == 401, headers
        assert reply.json() == {"error": "missing or unknown API key", "field": "Authorization"}
        assert reply.headers["www-authenticate"] == "Bearer"
    by_header = api.post("/v1/memories", json=body,
                         headers={"Authorization": "", "X-API-Key": ADMIN_KEY})  # fmt: skip
    assert by_header.status_code == 201


def test_an_agent_limited_key_reads_and_writes_only_its_agents(
    api: httpx.Client, with_daemon: None
) -> None:
    mine, theirs = BOT_AGENTS[1], "bot-other"
    their_ids = remember_all(api, theirs, states_of(theirs, 2, seed=8))
    bot = {"Authorization": f"Bearer {BOT_KEY}"}
    my_ids = remember_all(
        httpx.Client(base_url=api.base_url, headers=bot), mine, states_of(mine, 2, seed=9)
    )
    query = {"state": {"health": 50}, "k": 2}
    own = api.post("/v1/recall", json={"agent_id": mine, **query}, headers=bot)
    assert own.status_code == 200
    assert {h["entry_id"] for h in own.json()["merged"]} == set(my_ids)
    denied = api.post("/v1/recall", json={"agent_id": theirs, **query}, headers=bot)
    assert denied.status_code == 403
    assert denied.json() == {"error": f"this API key may not access agent {theirs!r}",
                             "field": "agent_id"}  # fmt: skip
    write = api.post("/v1/memories", json={"agent_id": theirs, "state": {}}, headers=bot)
    assert write.status_code == 403
    assert api.get(f"/v1/entries/{their_ids[0]}", headers=bot).status_code == 404
    assert api.get(f"/v1/agents/{theirs}", headers=bot).status_code == 403
    assert [a["agent_id"] for a in api.get("/v1/agents", headers=bot).json()] == [mine]
    rebuilt = api.post("/v1/reconstruct", json={"agent_id": theirs, "entry_id": their_ids[0]},
                       headers=bot)  # fmt: skip
    assert rebuilt.status_code == 403


def test_keys_never_reach_the_settings_repr(tmp_path: Path) -> None:
    settings = Settings(api_keys=ADMIN_KEY, api_keys_file=str(write_keys_file(tmp_path)))
    assert ADMIN_KEY not in repr(settings)
    assert settings.redacted()["api_keys"] == "***"


# -- errors and limits -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "status", "field"),
    [
        ("/v1/recall", b'{"agent_id": "bot-1", "state": {', 400, "body"),
        ("/v1/recall", {"agent_id": "bot-1", "state": {}, "k": 0}, 422, "k"),
        ("/v1/recall", {"agent_id": "bot-1", "state": {}, "k": "ten"}, 422, "k"),
        ("/v1/recall", {"agent_id": "bot-1", "state": {}, "tiers": ["stm", "xtm"]}, 422,
         "tiers.1"),
        ("/v1/recall", {"agent_id": "a\x00b", "state": {}}, 422, "agent_id"),
        ("/v1/recall", {"agent_id": " bot", "state": {}}, 422, "agent_id"),
        ("/v1/recall", {"agent_id": "bot-1"}, 422, "body"),
        ("/v1/recall", {"agent_id": "bot-1", "vector": [0.5] * 7}, 422, "vector"),
        ("/v1/recall", {"agent_id": "bot-1", "state": {}, "filters": {"where": {"mood": "x"}}},
         422, "filters.where.mood"),
        ("/v1/recall", {"agent_id": "bot-1", "state": {},
                        "filters": {"where": {"health": [5, 1]}}}, 422, "filters.where.health"),
        ("/v1/recall", {"agent_id": "bot-1", "state": {}, "filters": {"kind": []}}, 422,
         "filters.kind"),
        ("/v1/recall", {"agent_id": "bot-1", "state": {}, "filters": {"kind": ["thought"]}},
         422, "filters.kind.0"),
        ("/v1/memories", {"agent_id": "bot-1", "state": {}, "step": 2**60}, 422, "step"),
        ("/v1/memories", {"agent_id": "bot-1", "state": [1]}, 422, "state"),
        ("/v1/memories", {"agent_id": "bot-1", "state": {}, "colour": 1}, 422, "colour"),
        ("/v1/memories/batch", {"items": [{"agent_id": "b", "state": {}}] * 51}, 422, "items"),
        ("/v1/memories/batch", {"items": [{"agent_id": "b", "state": {}},
                                          {"agent_id": "b", "state": {}, "ts": -1}]},
         422, "items.1.ts"),
    ],
)  # fmt: skip
def test_bad_requests_get_4xx_naming_the_field(
    api: httpx.Client, path: str, body: Any, status: int, field: str
) -> None:
    if isinstance(body, bytes):
        reply = api.post(path, content=body, headers={"Content-Type": "application/json"})
    else:
        reply = api.post(path, json=body)
    assert reply.status_code == status, reply.text
    assert reply.json()["field"] == field, reply.text
    assert reply.json()["error"]


def test_a_body_over_the_limit_gets_413_before_it_is_parsed(api: httpx.Client) -> None:
    huge = {"agent_id": "bot-1", "state": {"note": "x" * 300_000}}
    reply = api.post("/v1/memories", json=huge)
    assert reply.status_code == 413
    assert reply.json()["field"] == "body" and "200000 bytes" in reply.json()["error"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams in
        yield json.dumps(huge).encode()

    streamed = api.post(
        "/v1/memories", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert streamed.status_code == 413


# -- the committed OpenAPI document ------------------------------------------------------------


def test_the_committed_openapi_document_is_the_served_one(api: httpx.Client) -> None:
    committed = json.loads(OPENAPI_PATH.read_text())
    assert committed == openapi_document(Settings()), (
        "docs/openapi.json is stale: memory-tiers api --openapi docs/openapi.json"
    )
    assert api.get("/openapi.json").json() == committed
    assert set(committed["paths"]) >= {
        "/v1/memories", "/v1/memories/batch", "/v1/entries/{entry_id}", "/v1/recall",
        "/v1/reconstruct", "/v1/agents", "/v1/agents/{agent_id}", "/healthz",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("command", "variable", "value"),
    [("api", "MT_API_NO_AUTH", "maybe"), ("api", "MT_TORCH_THREADS", "abc"),
     ("mcp", "MT_TORCH_THREADS", "0")],
)  # fmt: skip
def test_a_bad_front_end_variable_is_named(command: str, variable: str, value: str) -> None:
    result = CliRunner().invoke(main, [command], env={variable: value})
    assert result.exit_code == 2
    assert variable in result.output and value in result.output
