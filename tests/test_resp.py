"""The wire fast path (resp.py) against its fallback, redis-py's own pipeline: same replies.

This is the contract that keeps the fast path honest on a redis-py upgrade: it runs on the
embedded Redis of conftest.py, with the installed redis-py and hiredis.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis

from memory_tiers import Keys, resp
from memory_tiers.resp import (
    FAST_PATH_PROBLEM,
    Command,
    execute_transaction,
    pipeline_round_trip,
    pool_connection,
    round_trip,
    watching,
)
from memory_tiers.server import EmbeddedRedis
from memory_tiers.store import TierStore

KEYS = Keys()
VECTOR = bytes(range(256)) * 2  # not UTF-8: must come back as it went in


def _same(fast: list[Any], slow: list[Any]) -> None:
    """Equal replies; errors equal by type and text (exceptions do not compare by value)."""
    assert [_comparable(r) for r in fast] == [_comparable(r) for r in slow]


def _comparable(reply: Any) -> Any:
    return (type(reply), str(reply)) if isinstance(reply, Exception) else reply


def test_the_fast_path_is_on_with_the_installed_redis_py() -> None:
    assert FAST_PATH_PROBLEM is None


@pytest.mark.parametrize("protocol", [2, 3])
def test_round_trips_give_the_pipelines_raw_replies(
    store: TierStore, redis_server: EmbeddedRedis, redis_client: redis.Redis, protocol: int
) -> None:
    key = KEYS.record_prefix("stm") + "1-0"
    redis_client.hset(key, mapping={"agent_id": "a", "step": 3})
    redis_client.hset(key, "vector", VECTOR)
    commands: list[Command] = [
        ("HGETALL", key),
        ("FT.SEARCH", KEYS.index("stm"), "*", "RETURN", 1, "agent_id", "DIALECT", 2),
        ("HGETALL", "no-such-key"),
        ("INCR", key),  # fails: the key holds a hash
        ("PING",),
    ]
    client = redis.Redis.from_url(redis_server.url, protocol=protocol)
    try:
        fast, slow = round_trip(client, commands), pipeline_round_trip(client, commands)
    finally:
        client.close()
    _same(fast, slow)
    fields = fast[0] if protocol == 3 else dict(zip(fast[0][::2], fast[0][1::2], strict=True))
    assert fields[b"vector"] == VECTOR  # bytes, never decoded
    assert isinstance(fast[3], redis.ResponseError)
    assert fast[4] in (b"PONG", "PONG")


@pytest.mark.parametrize("fast_path", [True, False])
def test_a_conversation_answers_each_ticket_whatever_order_replies_are_asked_in(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch, fast_path: bool
) -> None:
    if not fast_path:
        monkeypatch.setattr(resp, "FAST_PATH_PROBLEM", "forced off by the test")
    with resp.conversation(redis_client) as talk:
        first = talk.send([("SET", "a", "1"), ("INCR", "a"), ("HGET", "a", "f")])
        assert talk.reply(first[1]) == 2  # the SET's reply is read on the way and kept
        later = talk.send([("GET", "a"), ("PING",)])
        assert talk.reply(later[0]) == b"2"
        assert talk.reply(first[0]) in (b"OK", True)
        assert isinstance(talk.reply(first[2]), redis.ResponseError)  # a string, not a hash
        talk.send([("INCR", "a")])  # never asked for: finish() reads it
    assert redis_client.get("a") == "3"
    assert round_trip(redis_client, [("PING",)]) in ([b"PONG"], [True])  # the connection is clean


def test_round_trips_never_decode_even_on_a_decoding_client(redis_client: redis.Redis) -> None:
    redis_client.set("k", "v")
    assert round_trip(redis_client, [("GET", "k")]) == [b"v"]
    assert pipeline_round_trip(redis_client, [("GET", "k")]) == [b"v"]


def test_an_argument_redis_cannot_take_is_refused_by_both_paths(
    redis_client: redis.Redis,
) -> None:
    for path in (round_trip, pipeline_round_trip):
        with pytest.raises(redis.DataError):
            path(redis_client, [("SET", "k", None)])
        assert path(redis_client, [("PING",)]) == [b"PONG"]  # the pool still serves


@pytest.mark.parametrize("packed_ahead", [True, False])
def test_a_transaction_applies_all_but_the_failed_command_and_returns_each_reply(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch, packed_ahead: bool
) -> None:
    if not packed_ahead:
        monkeypatch.setattr(resp, "_PACKER", None)  # packed by the connection: the fallback
    commands: list[Command] = [
        ("XADD", "s", "MAXLEN", "~", 10, "*", "f", VECTOR),
        ("HSET", "h", "a", 1),
        ("INCR", "h"),  # fails inside EXEC; the others apply
    ]
    with pool_connection(redis_client) as connection:
        replies = execute_transaction(connection, commands)
    assert replies is not None
    assert replies[1] == 1
    assert isinstance(replies[2], redis.ResponseError)
    (entry,) = round_trip(redis_client, [("XRANGE", "s", "-", "+")])[0]
    assert entry == [replies[0], [b"f", VECTOR]]  # XADD's id, the bytes as they went in
    assert redis_client.hget("h", "a") == "1"


def test_a_transaction_refused_before_exec_applies_nothing(redis_client: redis.Redis) -> None:
    with pool_connection(redis_client) as connection, pytest.raises(redis.ResponseError):
        execute_transaction(connection, [("SET", "k", "v"), ("NO-SUCH-COMMAND",)])
    assert redis_client.get("k") is None


def test_a_watched_key_that_changed_aborts_the_transaction_and_the_watch_ends_with_it(
    redis_client: redis.Redis,
) -> None:
    with watching(redis_client, ["w", "v"]) as connection:
        redis_client.set("w", "changed")  # another connection of the pool
        assert execute_transaction(connection, [("SET", "x", "1")]) is None
    assert redis_client.get("x") is None
    with watching(redis_client, ["w"]) as watched:
        pass  # no EXEC: still UNWATCHed before it goes back to the pool
    with pool_connection(redis_client) as connection:
        assert connection is watched  # the pool hands the same connection out again
        redis_client.set("w", "changed again")
        assert execute_transaction(connection, [("SET", "x", "2")]) == [b"OK"]
    assert redis_client.get("x") == "2"
