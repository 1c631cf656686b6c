"""Where training states come from: a JSONL file, or the raw states already in the stream."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, cast

import redis

from .constants import Keys
from .errors import EntryError, MemoryTiersError
from .protocol import decode_entry
from .resp import text
from .store import TierStore

log = logging.getLogger(__name__)

STREAM_PAGE = 1000
"""Entries fetched per XRANGE call when reading states back from the stream."""


def load_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """States from a file of one JSON object per line; blank lines are skipped.

    Raises:
        MemoryTiersError: a line is not a JSON object, naming the file and line number.
    """
    states: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                state = json.loads(line)
            except json.JSONDecodeError as e:
                raise MemoryTiersError(f"{path}:{number}: not JSON ({e.msg})") from e
            if not isinstance(state, dict):
                raise MemoryTiersError(f"{path}:{number}: expected a JSON object")
            states.append(state)
    return states


def read_stream_states(
    client: redis.Redis, keys: Keys, limit: int | None = None
) -> list[dict[str, Any]]:
    """The states agents XADDed (kind=state), oldest first; malformed entries are skipped."""
    return [state for _, state in read_stream_memories(client, keys, limit)]


def read_stream_memories(
    client: redis.Redis, keys: Keys, limit: int | None = None
) -> list[tuple[str, dict[str, Any]]]:
    """(agent id, state) of the states agents XADDed (kind=state), oldest first.

    Malformed entries are skipped and counted in the log.
    """
    memories: list[tuple[str, dict[str, Any]]] = []
    skipped = 0
    start = "-"
    while limit is None or len(memories) < limit:
        page = cast(
            "list[tuple[bytes, dict[bytes, bytes]]]",
            client.xrange(keys.stream, min=start, max="+", count=STREAM_PAGE),
        )
        for entry_id, fields in page:
            try:
                entry = decode_entry(text(entry_id), fields)
            except EntryError:
                skipped += 1
                continue
            if entry.kind == "state":
                memories.append((entry.agent_id, entry.state))
        if len(page) < STREAM_PAGE:
            break
        start = "(" + text(page[-1][0])
    log.info("read %d states from %s (%d malformed skipped)", len(memories), keys.stream, skipped)
    return memories[:limit]


def read_tier_memories(store: TierStore, tier: str, limit: int) -> list[tuple[str, dict[str, Any]]]:
    """(agent id, state) of up to `limit` of a tier's oldest memories that keep their state."""
    records = store.read(tier, store.oldest_keys(tier, limit))
    memories = [
        (record.agent_id, json.loads(record.state_json))
        for record in records
        if record.state_json is not None
    ]
    log.info("read %d states of %d %s memories", len(memories), len(records), tier)
    return memories
