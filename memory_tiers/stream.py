"""The state stream's consumer group: create it, read and claim its entries, trim what it acked.

`GroupReader` is one consumer's reads: new entries (XREADGROUP '>'), its own delivered but
unacked ones (XREADGROUP from an id), and entries other consumers left pending too long
(XAUTOCLAIM). `ReadPosition` is where the daemon's loop reads next: its own pending entries
first, then new ones, with one batch read ahead. What a batch does with its entries, and the
ownership check of its commit, are ingest.py's.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import redis

from .constants import Keys
from .errors import StoreError
from .resp import text
from .settings import Settings

log = logging.getLogger(__name__)

TRIM_BATCH = 10_000
"""Entries one XTRIM call may remove (its LIMIT): a few milliseconds of Redis's time."""

MAX_TRIM_CALLS = 100
"""XTRIM calls per trim at most: a million entries, for a stream that grew long before."""

Fields = Mapping[Any, Any]
"""An entry's fields as redis-py returns them: bytes (or str) names and values."""
Message = tuple[Any, Fields | None]
"""(entry id, fields) as XREADGROUP/XAUTOCLAIM return it; empty or None: entry deleted."""

DELETED_BY_CLAIM: Fields = MappingProxyType({})
"""The fields of an entry XAUTOCLAIM reported deleted from the stream: it left every pending
list, so its dead letter is written without the ownership check."""


def ensure_group(client: redis.Redis, keys: Keys) -> bool:
    """Create the daemons' consumer group (and the stream) when missing; True if it was created.

    The group starts at id 0, so states XADDed before the first daemon ran are consumed.
    """
    stream, group = keys.stream, keys.group
    try:
        client.xgroup_create(stream, group, id="0", mkstream=True)
    except redis.ResponseError as e:
        if "BUSYGROUP" in str(e):
            return False
        raise StoreError(f"XGROUP CREATE {stream} {group} failed: {e}") from e
    except redis.RedisError as e:
        raise StoreError(f"XGROUP CREATE {stream} {group} failed: {e}") from e
    log.info("created consumer group %s on %s", group, stream)
    return True


class GroupReader:
    """One consumer's reads of the state stream in the daemons' consumer group.

    Args:
        client: a client from `ingest.consumer_client` (no built-in retries; bytes replies).
        settings: stream names (prefix), batch_size, block_ms, claim_idle_ms.
        consumer: this consumer's name in the group.
        keys: the stream's key names [default: the deployment's]; one bucket's (buckets.py).
    """

    def __init__(
        self, client: redis.Redis, settings: Settings, consumer: str, keys: Keys | None = None
    ) -> None:
        self.client = client
        self.settings = settings
        self.consumer = consumer
        self.keys = settings.keys if keys is None else keys

    def read_new(self) -> list[Message]:
        """Up to batch_size entries never delivered to the group, waiting up to block_ms."""
        return self._read(">", self.settings.block_ms)

    def read_ready(self) -> list[Message]:
        """Up to batch_size entries never delivered to the group, of those there now: no wait."""
        return self._read(">", None)

    def read_pending(self, after: str = "0") -> list[Message]:
        """Up to batch_size of this consumer's own delivered but unacked entries after `after`.

        Deleted entries come back with empty fields; ingest dead-letters and acks them.
        """
        return self._read(after, None)

    def claim_idle(self, cursor: str = "0-0") -> tuple[str, list[Message]]:
        """One XAUTOCLAIM page: entries pending longer than claim_idle_ms, now this consumer's.

        Returns:
            (the cursor of the next page, '0-0' after the last; the claimed messages). Entries
            that were deleted from the stream (Redis 7+ drops them from the pending list and
            lists their ids) come back with empty fields, to be dead-lettered like the others.
        """
        stream, group = self.keys.stream, self.keys.group
        pipe = self.client.pipeline(transaction=True)
        pipe.incr(self.keys.claims)  # aborts the commits that WATCH it: see ingest.py
        pipe.xautoclaim(
            stream, group, self.consumer, self.settings.claim_idle_ms, cursor,
            count=self.settings.batch_size,
        )  # fmt: skip
        try:
            _, reply = pipe.execute()
        except redis.RedisError as e:
            raise StoreError(f"XAUTOCLAIM {stream} {group} {self.consumer} failed: {e}") from e
        next_cursor = text(reply[0])
        messages: list[Message] = list(reply[1])
        deleted = reply[2] if len(reply) > 2 else []
        messages += [(entry_id, DELETED_BY_CLAIM) for entry_id in deleted]
        return next_cursor, messages

    def _read(self, start: str, block_ms: int | None) -> list[Message]:
        stream, group = self.keys.stream, self.keys.group
        try:
            reply = self.client.xreadgroup(
                group,
                self.consumer,
                {stream: start},
                count=self.settings.batch_size,
                block=block_ms,
            )
        except redis.RedisError as e:
            raise StoreError(
                f"XREADGROUP {group} {self.consumer} {stream} {start} failed: {e}"
            ) from e
        return _stream_messages(reply)


def read_ready_together(readers: Sequence[GroupReader]) -> list[list[Message] | None]:
    """`read_ready` of each of `readers` (of streams on one node, through one client) in one
    round trip: each one's new entries, or None where its read failed (to be read, and fail,
    on its own).

    Raises:
        StoreError: the round trip failed.
    """
    pipe = readers[0].client.pipeline(transaction=False)
    for reader in readers:
        keys = reader.keys
        pipe.xreadgroup(
            keys.group, reader.consumer, {keys.stream: ">"}, count=reader.settings.batch_size
        )
    try:
        replies = pipe.execute(raise_on_error=False)
    except redis.RedisError as e:
        raise StoreError(f"XREADGROUP of {len(readers)} streams failed: {e}") from e
    return [None if isinstance(r, Exception) else _stream_messages(r) for r in replies]


class ReadPosition:
    """Where a consumer loop reads next: its own pending entries (from id 0: what a previous
    run of the same name, or this one before a failure, read and did not ack), then new ones;
    and the batch it read ahead and has not handled yet."""

    def __init__(self, reader: GroupReader) -> None:
        self._reader = reader
        self._pending_after: str | None = "0"
        """Own pending entries after this id come next; None: they are done, new ones come."""
        self.read_ahead: list[Message] = []
        """A batch read before the one in hand was committed; `next_batch` returns it first."""

    def next_batch(self, wait: bool) -> list[Message]:
        """The batch read ahead if any, else the next own pending entries, else new ones
        (waiting up to block_ms for some if `wait`); [] if there are none."""
        if self.read_ahead:
            messages, self.read_ahead = self.read_ahead, []
            return messages
        if self._pending_after is not None:
            messages = self._reader.read_pending(self._pending_after)
            self._pending_after = text(messages[-1][0]) if messages else None
            return messages
        return self._reader.read_new() if wait else self._reader.read_ready()

    @property
    def reads_new(self) -> bool:
        """Whether the next batch is new entries (nothing read ahead, no own pending entries
        to re-read first)."""
        return not self.read_ahead and self._pending_after is None

    def restart(self) -> None:
        """Forget the batch read ahead and re-read the own pending entries from the start: after
        a failure, whatever was read and not acked is read again."""
        self._pending_after = "0"
        self.read_ahead = []


def trim_acked(client: redis.Redis, keys: Keys, max_age_s: float, now_ms: int) -> int:
    """Trim the state stream's entries older than `max_age_s` that every consumer group has
    been delivered and has acked (in whole stream nodes: a few may stay); how many went.

    An entry goes only if it is older than the cutoff, than every group's first undelivered
    entry (after its last-delivered-id) and than every group's oldest pending entry: what a
    lagging daemon, a dead consumer's pending list or another team's group still needs stays.
    A stream nobody consumes yet keeps everything.
    """
    try:
        groups = client.xinfo_groups(keys.stream)
    except redis.ResponseError as e:
        if "no such key" in str(e).lower():
            return 0
        raise
    if not groups:
        return 0
    bound = (now_ms - round(max_age_s * 1000), 0)
    pipe = client.pipeline(transaction=False)
    for group in groups:
        pipe.xpending(keys.stream, group["name"])
        delivered_ms, delivered_seq = stream_id(group["last-delivered-id"])
        bound = min(bound, (delivered_ms, delivered_seq + 1))
    for summary in pipe.execute():
        if summary["pending"]:
            bound = min(bound, stream_id(summary["min"]))
    if bound[0] < 0:
        return 0
    # Approximate: whole stream nodes (~100 entries) only, about TRIM_BATCH entries per call,
    # so no call blocks Redis for long; entries at or after the bound are never removed.
    minid, trimmed = f"{bound[0]}-{bound[1]}", 0
    for _ in range(MAX_TRIM_CALLS):
        removed = int(client.xtrim(keys.stream, minid=minid, approximate=True, limit=TRIM_BATCH))
        trimmed += removed
        if removed == 0:
            break
    return trimmed


_DELETE_IF_IDLE = """
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) > 0 then
    return 0
end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1
"""


def remove_idle_consumers(
    client: redis.Redis, keys: Keys, max_idle_ms: int, keep: str = ""
) -> list[str]:
    """Remove the group's consumers idle over `max_idle_ms` with nothing pending; their names.

    Every restart of a daemon adds a consumer (host-pid), which would stay in the group for
    good. Nothing pending is checked again where the consumer is deleted, in one script: a
    DELCONSUMER drops the consumer's pending entries, which nobody could claim then.
    """
    try:
        consumers = client.xinfo_consumers(keys.stream, keys.group)
    except redis.ResponseError as e:
        if "no such key" in str(e).lower() or "nogroup" in str(e).lower():
            return []
        raise
    delete = client.register_script(_DELETE_IF_IDLE)
    removed = []
    for consumer in consumers:
        name = text(consumer["name"])
        # idle: since its last read attempt, which a live daemon makes every block_ms at most.
        idle = int(consumer["idle"])
        if name == keep or int(consumer["pending"]) > 0 or idle < max_idle_ms:
            continue
        if delete(keys=[keys.stream], args=[keys.group, name]):
            removed.append(name)
    return removed


def stream_id(raw: bytes | str) -> tuple[int, int]:
    """A stream entry id as (milliseconds, sequence): ids in stream order sort so."""
    ms, _, seq = text(raw).partition("-")
    return int(ms), int(seq or 0)


def _stream_messages(reply: Any) -> list[Message]:
    """The messages of a one-stream XREADGROUP reply, RESP2 list or RESP3 map; [] if none."""
    if not reply:
        return []
    streams = reply.values() if isinstance(reply, dict) else (item[1] for item in reply)
    messages: list[Message] = []
    for stream_messages in streams:
        # RESP3 maps hold [[messages]], RESP2 lists [stream, messages].
        if isinstance(reply, dict) and stream_messages and isinstance(stream_messages[0], list):
            stream_messages = stream_messages[0]
        messages.extend((entry_id, fields) for entry_id, fields in stream_messages)
    return messages
