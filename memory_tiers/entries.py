"""Where a stream entry ended: stored in a tier, dead-lettered with its reason, or pending.

A producer gets an entry id from XADD and may ask what became of it. The answer comes from
Redis alone, in at most a few round trips:

1. One MULTI/EXEC reads, at one instant: whether the entry's record exists in STM, IM or LTM
   (record keys derive from the entry id), whether it is pending for a daemon (XPENDING of
   that id), the group's last delivered id, and the entry itself (XRANGE id id). Tier moves
   and ingest commits are transactions too, so a memory is seen in exactly one place.
2. Otherwise the dead-letter stream is read from the entry's time on. A dead letter is
   XADDed in the commit that acks its entry, after the entry was added, so its id is never
   older than the entry's (both from the same Redis clock). The scan stops after
   DEAD_LETTER_SCAN entries: a dead letter far later than that is reported as unknown.

Unknown means none of those: an id never added, an LTM memory deleted by retention, or a
dead letter trimmed from the capped dead-letter stream.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

import redis

from .constants import TIERS, Keys
from .errors import StoreError
from .ingest import DEAD_LETTER_FIELDS
from .protocol import entry_time_ms
from .resp import text
from .store import failure_text

EntryState = Literal["stored", "dead_letter", "pending", "unknown"]

ENTRY_ID_PATTERN = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")
"""A stream entry id as XADD returns it: milliseconds, '-', a sequence number."""

DEAD_LETTER_SCAN = 10_000
"""Dead letters read at most, from the entry's time on, to find the one of an entry."""

_SCAN_CHUNK = 500


@dataclass(frozen=True)
class EntryStatus:
    """What became of one stream entry."""

    entry_id: str
    state: EntryState
    tier: str | None = None
    """The tier holding its memory, when stored."""
    key: str | None = None
    """The record key of its memory, when stored."""
    agent_id: str | None = None
    """Whose entry it is, when Redis still knows (record, dead letter, stream entry)."""
    error: str | None = None
    """Why it was dead-lettered."""
    delivered: bool | None = None
    """When pending: True if a daemon is working on it, False if none has read it yet."""

    def to_dict(self) -> dict[str, Any]:
        """The status as a JSON-ready dict; fields that do not apply are left out."""
        values = {
            "entry_id": self.entry_id, "state": self.state, "tier": self.tier, "key": self.key,
            "agent_id": self.agent_id, "error": self.error, "delivered": self.delivered,
        }  # fmt: skip
        return {name: value for name, value in values.items() if value is not None}


def entry_status(client: redis.Redis, keys: Keys, entry_id: str) -> EntryStatus:
    """Where the entry `entry_id` of the state stream ended, or that it waits.

    Raises:
        ValueError: `entry_id` is not a stream entry id.
        StoreError: Redis failed.
    """
    if not ENTRY_ID_PATTERN.fullmatch(entry_id):
        raise ValueError(f"entry_id {entry_id!r}: expected a stream entry id like 1732600000000-0")
    try:
        found = _read_at_once(client, keys, entry_id)
        return found or _dead_letter(client, keys, entry_id)
    except redis.RedisError as e:
        raise StoreError(
            f"reading the status of entry {entry_id} failed: {failure_text(e, keys)}"
        ) from e


def _read_at_once(client: redis.Redis, keys: Keys, entry_id: str) -> EntryStatus | None:
    """Stored or pending, read in one transaction; None when neither."""
    pipe = client.pipeline(transaction=True)
    for tier in TIERS:
        pipe.hget(keys.record(tier, entry_id), "agent_id")
    pipe.xpending_range(keys.stream, keys.group, min=entry_id, max=entry_id, count=1)
    pipe.xinfo_groups(keys.stream)
    pipe.xrange(keys.stream, min=entry_id, max=entry_id, count=1)
    replies = pipe.execute(raise_on_error=False)
    owners, pending, groups, entry = replies[: len(TIERS)], *replies[len(TIERS) :]
    for tier, owner in zip(TIERS, owners, strict=True):
        if owner is not None and not isinstance(owner, Exception):
            key = keys.record(tier, entry_id)
            return EntryStatus(entry_id, "stored", tier=tier, key=key, agent_id=text(owner))
    agent = _field(entry[0][1], "agent_id") if isinstance(entry, list) and entry else None
    if isinstance(pending, list) and pending:
        return EntryStatus(entry_id, "pending", agent_id=agent, delivered=True)
    if agent is not None and not _delivered(groups, keys.group, entry_id):
        return EntryStatus(entry_id, "pending", agent_id=agent, delivered=False)
    return None


def _delivered(groups: Any, group: str, entry_id: str) -> bool:
    """Whether the group's last delivered id is at or past `entry_id` (no group: not yet)."""
    if isinstance(groups, Exception):
        return False
    for info in groups:
        fields = {text(k): v for k, v in info.items()}
        if text(fields.get("name", "")) == group:
            return _id_order(text(fields.get("last-delivered-id", "0-0"))) >= _id_order(entry_id)
    return False


def _dead_letter(client: redis.Redis, keys: Keys, entry_id: str) -> EntryStatus:
    """The entry's dead letter, searched from its time on; unknown when not found."""
    start = f"{entry_time_ms(entry_id)}-0"
    read = 0
    while read < DEAD_LETTER_SCAN:
        chunk = client.xrange(keys.dead_letters, min=start, count=_SCAN_CHUNK) or []
        for _, fields in chunk:
            if _field(fields, DEAD_LETTER_FIELDS[1]) == entry_id:
                return EntryStatus(
                    entry_id, "dead_letter", agent_id=_field(fields, "agent_id"),
                    error=_field(fields, DEAD_LETTER_FIELDS[0]) or "no reason recorded",
                )  # fmt: skip
        read += len(chunk)
        if len(chunk) < _SCAN_CHUNK:
            break
        start = "(" + text(chunk[-1][0])
    return EntryStatus(entry_id, "unknown")


def _field(fields: Any, name: str) -> str | None:
    """One field of an entry (bytes or str names and values); None when absent or not text."""
    for key, value in fields.items():
        if text(key) == name:
            try:
                return value.decode() if isinstance(value, bytes) else str(value)
            except UnicodeDecodeError:
                return None
    return None


def _id_order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)
