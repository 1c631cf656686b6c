"""Commands and replies on the wire: a fast path past redis-py's pipeline, and reply helpers.

The ingest commit, the consolidation's moves and the recall's searches send many commands in
one round trip. redis-py's pipeline spends more Python on each command than Redis spends running
it (argument checks, a reply callback per command), and a commit on the daemon's second thread
competes for the GIL with the next batch's prepare. The fast path packs the commands with
hiredis ahead of time, sends the bytes on one pool connection and reads the raw replies.

It leans on redis-py internals: its `HiredisRespSerializer` (for what hiredis refuses) and a
pool connection's send and read methods. `FAST_PATH_PROBLEM` says at import why the fast path
is off, if it is; then commands are packed by the connection (redis-py's own packer) when they
are sent, and `round_trip` runs a plain redis-py pipeline. tests/test_resp.py checks that both
paths give the same replies, so a redis-py upgrade that changes them fails there, loudly.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

import redis
from redis.connection import Connection, ConnectionPool
from redis.utils import HIREDIS_AVAILABLE

Command = tuple[Any, ...]
"""One Redis command: its name, then its arguments, as `execute_command` takes them."""


def text(value: Any) -> str:
    """A reply value as str: bytes decoded as UTF-8 (bad bytes replaced), anything else str()."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _fast_path_problem() -> str | None:
    """Why the fast path cannot run on the installed redis-py; None if it can."""
    if not HIREDIS_AVAILABLE:
        return "hiredis is not installed"
    import hiredis
    import redis.connection

    if not callable(getattr(hiredis, "pack_command", None)):
        return "hiredis has no pack_command"
    if not hasattr(redis.connection, "HiredisRespSerializer"):
        return "redis.connection has no HiredisRespSerializer"
    if "disable_decoding" not in inspect.signature(Connection.read_response).parameters:
        return "Connection.read_response takes no disable_decoding"
    required = [
        p
        for p in list(inspect.signature(ConnectionPool.get_connection).parameters.values())[1:]
        if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if required:
        return "ConnectionPool.get_connection needs arguments"
    return None


FAST_PATH_PROBLEM = _fast_path_problem()
"""Why commands go through redis-py's own packing and pipeline; None: the fast path is on."""


class _HiredisPacker:
    """redis-py's hiredis packer minus its pass over every argument of every command.

    That pass turns bytearrays and memoryviews into bytes (hiredis takes memoryviews as they
    are) and splits command names like 'CLIENT SETNAME'; a commit packs ~20 arguments per
    record, so it cost more than the packing itself. Any command hiredis refuses, or whose name
    needs splitting, goes through redis-py's packer, which packs it or raises as before.
    """

    def __init__(self) -> None:
        import hiredis
        from redis.connection import HiredisRespSerializer

        self._pack_command = hiredis.pack_command
        self._redis_py = HiredisRespSerializer()

    def pack(self, args: Command) -> bytes:
        """The RESP bytes of one command."""
        name = args[0]
        if type(name) is str and " " not in name:
            try:
                packed: bytes = self._pack_command(args)
                return packed
            except TypeError:  # a bytearray, bool, None...
                pass
        return b"".join(self._redis_py.pack(*args))


_PACKER = _HiredisPacker() if FAST_PATH_PROBLEM is None else None


def pack(commands: Sequence[Command]) -> bytes | None:
    """The RESP bytes of `commands`, packed now (off the thread that sends them); None when the
    fast path is off: `send` has the connection pack them then.

    Raises:
        redis.DataError: an argument Redis cannot take (a bool, None...).
    """
    if _PACKER is None:
        return None
    return b"".join([_PACKER.pack(args) for args in commands])


@contextmanager
def pool_connection(client: redis.Redis) -> Iterator[Connection]:
    """One connection of the client's pool, for round trips of its own; back to the pool after.

    On any exception it is disconnected first: replies may be left unread on it, or a WATCH
    set, so it must never be reused as it is.
    """
    pool = client.connection_pool
    connection = pool.get_connection()
    try:
        yield connection
    except BaseException:
        connection.disconnect()
        raise
    finally:
        pool.release(connection)


def send(connection: Connection, commands: Sequence[Command], packed: bytes | None = None) -> None:
    """Send `commands` in one write: as `packed` by `pack` ahead of time, else packed now."""
    if packed is None:
        packed = pack(commands)
    connection.send_packed_command(
        [packed] if packed is not None else connection.pack_commands(commands)
    )


def read_replies(connection: Connection, count: int) -> list[Any]:
    """The next `count` raw replies (bytes, never decoded); an error reply is returned as its
    redis.ResponseError in its slot, not raised."""
    replies: list[Any] = []
    for _ in range(count):
        try:
            replies.append(connection.read_response(disable_decoding=True))
        except redis.ResponseError as e:
            replies.append(e)
    return replies


def first_error(replies: Sequence[Any]) -> None:
    """Raise the first error reply among `replies`, if any."""
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply


def zadd(key: str, scores: Mapping[str, int]) -> Command:
    """`ZADD key score member ...`, as `Pipeline.zadd(key, scores)` sends it."""
    return ("ZADD", key, *(value for member, score in scores.items() for value in (score, member)))


def multi_exec(commands: Sequence[Command]) -> list[Command]:
    """`commands` as one transaction: MULTI, the commands, EXEC."""
    return [("MULTI",), *commands, ("EXEC",)]


def execute_transaction(
    connection: Connection, commands: Sequence[Command], packed: bytes | None = None
) -> list[Any] | None:
    """Run `commands` as one MULTI/EXEC on `connection` (`packed`: `pack(multi_exec(commands))`
    made ahead of time); EXEC's raw replies, one per command. A command that failed inside
    EXEC has its redis.ResponseError in its slot, not raised: Redis applied the others.

    Returns:
        None if a key the connection WATCHes changed: nothing was applied.

    Raises:
        redis.ResponseError: Redis refused the transaction (EXECABORT: nothing was applied),
            or EXEC did not answer one reply per command.
        redis.RedisError: the connection failed (nothing can be said of what ran).
    """
    sent = multi_exec(commands)
    send(connection, sent, packed)
    *queued, replies = read_replies(connection, len(sent))  # MULTI's OK, QUEUED each, EXEC
    first_error([*queued, replies])
    if replies is None:
        return None
    if not isinstance(replies, list) or len(replies) != len(commands):
        raise redis.ResponseError(f"EXEC answered {str(replies)[:80]!r}")
    return replies


@contextmanager
def watching(client: redis.Redis, keys: Sequence[str]) -> Iterator[Connection]:
    """A pool connection that WATCHes `keys`, for an `execute_transaction` guarded by them;
    UNWATCHed before it goes back to the pool (after an EXEC that is a no-op), disconnected
    on any exception (`pool_connection`)."""
    with pool_connection(client) as connection:
        send(connection, [("WATCH", *keys)])
        first_error(read_replies(connection, 1))
        yield connection
        send(connection, [("UNWATCH",)])
        first_error(read_replies(connection, 1))


def round_trip(client: redis.Redis, commands: Sequence[Command]) -> list[Any]:
    """Send `commands` (not as a transaction) in one round trip; their raw replies, in order.

    Replies are never decoded (bytes), whatever the client's decode_responses, and pass no
    reply callback: what Redis sent. A command that failed has its redis.ResponseError in its
    slot, as `pipeline.execute(raise_on_error=False)` gives it.

    Raises:
        redis.RedisError: the connection failed (nothing can be said of what ran).
    """
    with conversation(client) as talk:
        return [talk.reply(ticket) for ticket in talk.send(commands)]


class Conversation(Protocol):
    """Commands sent as soon as they are known, their replies read in order when wanted: the
    caller works on one reply while Redis still answers the next command (a recall re-sorts
    one tier's candidates while Redis searches the next tier). Replies are raw, as in
    `round_trip`. Made by `conversation`."""

    def send(self, commands: Sequence[Command]) -> range:
        """Send `commands`; their tickets, for `reply`."""

    def reply(self, ticket: int) -> Any:
        """The raw reply of command `ticket`, an error reply as its exception."""

    def finish(self) -> None:
        """Done: every reply not read yet is read (or never sent)."""


class _WireConversation:
    """The fast path's Conversation: on one connection, each send written at once."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._sent = 0
        self._replies: list[Any] = []

    def send(self, commands: Sequence[Command]) -> range:
        """Send `commands` now; their tickets, for `reply`."""
        send(self._connection, commands, pack(commands))
        first, self._sent = self._sent, self._sent + len(commands)
        return range(first, self._sent)

    def reply(self, ticket: int) -> Any:
        """The raw reply of command `ticket` (an error reply as its exception); the replies
        before it are read and kept."""
        if ticket >= len(self._replies):
            self._replies += read_replies(self._connection, ticket + 1 - len(self._replies))
        return self._replies[ticket]

    def finish(self) -> None:
        """Read every reply not read yet, so the connection can go back to the pool."""
        if self._sent:
            self.reply(self._sent - 1)


class _PipelinedConversation:
    """The conversation without the fast path: commands wait until a reply is wanted, then
    all go as one plain pipeline (`pipeline_round_trip`)."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._waiting: list[Command] = []
        self._replies: list[Any] = []

    def send(self, commands: Sequence[Command]) -> range:
        first = len(self._replies) + len(self._waiting)
        self._waiting += commands
        return range(first, first + len(commands))

    def reply(self, ticket: int) -> Any:
        if ticket >= len(self._replies):
            self._replies += pipeline_round_trip(self._client, self._waiting)
            self._waiting = []
        return self._replies[ticket]

    def finish(self) -> None:
        if self._waiting:  # sent means run, as on the fast path
            self.reply(len(self._replies) + len(self._waiting) - 1)


@contextmanager
def conversation(client: redis.Redis) -> Iterator[Conversation]:
    """A Conversation on one of the client's pool connections, every reply read at the end;
    on any exception the connection is disconnected (`pool_connection`)."""
    if FAST_PATH_PROBLEM is not None:
        talk: Conversation = _PipelinedConversation(client)
        yield talk
        talk.finish()
        return
    with pool_connection(client) as connection:
        talk = _WireConversation(connection)
        yield talk
        talk.finish()


def pipeline_round_trip(client: redis.Redis, commands: Sequence[Command]) -> list[Any]:
    """`round_trip` through a plain redis-py pipeline: the fallback, and its contract's baseline.

    The pipeline runs on a client of the same pool without reply callbacks, so replies are
    Redis's own (an HGETALL stays a flat list on RESP2, as on the fast path).
    """
    raw = redis.Redis(connection_pool=client.connection_pool)
    raw.response_callbacks.clear()
    pipe = raw.pipeline(transaction=False)
    for command in commands:
        pipe.execute_command(*command, NEVER_DECODE=True)
    replies: list[Any] = pipe.execute(raise_on_error=False)
    return replies
