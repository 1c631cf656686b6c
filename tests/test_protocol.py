"""The stream protocol: entries are validated with reasons that name the field."""

from __future__ import annotations

import pytest

from memory_tiers.errors import EntryError
from memory_tiers.protocol import UNKNOWN_STEP, decode_entry, encode_entry, entry_time_ms


def test_encode_then_decode_round_trips() -> None:
    fields = encode_entry("agent-1", {"health": 50, "tags": ["a"]}, step=7, ts=1234, importance=0.5)
    entry = decode_entry("1700000000000-0", {k.encode(): v.encode() for k, v in fields.items()})
    assert (entry.agent_id, entry.state, entry.step, entry.ts) == (
        "agent-1", {"health": 50, "tags": ["a"]}, 7, 1234,
    )  # fmt: skip
    assert (entry.kind, entry.importance) == ("state", 0.5)


def test_defaults_come_from_the_entry_id() -> None:
    entry = decode_entry("1700000000123-4", {"agent_id": "a", "state": "{}"})
    assert (entry.step, entry.ts, entry.kind, entry.importance) == (
        UNKNOWN_STEP, 1700000000123, "state", 0.0,
    )  # fmt: skip
    assert entry_time_ms("1700000000123-4") == 1700000000123


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"state": "{}"}, "agent_id is missing"),
        ({"agent_id": "", "state": "{}"}, "agent_id is missing or empty"),
        ({"agent_id": "x" * 300, "state": "{}"}, "agent_id is 300 characters"),
        ({"agent_id": " a", "state": "{}"}, "has leading or trailing whitespace"),
        ({"agent_id": "a\x1fb", "state": "{}"}, "contains a control character"),
        ({"agent_id": "a"}, "state is missing"),
        ({"agent_id": "a", "state": "{not json"}, "state is not valid JSON"),
        ({"agent_id": "a", "state": "[1, 2]"}, "state must be a JSON object, got list"),
        ({"agent_id": "a", "state": '{"health": NaN}'}, "state holds NaN"),
        ({"agent_id": "a", "state": '{"health": -Infinity}'}, "state holds -Infinity"),
        ({"agent_id": "a", "state": "{}", "step": "seven"}, "step='seven': expected int"),
        ({"agent_id": "a", "state": "{}", "ts": "1.5"}, "ts='1.5': expected int"),
        ({"agent_id": "a", "state": "{}", "importance": "inf"}, "importance='inf': must be finite"),
        ({"agent_id": "a", "state": "{}", "kind": "dream"}, "kind='dream': expected one of"),
        ({b"agent_id": b"\xff\xfe", b"state": b"{}"}, "not UTF-8"),
    ],
)
def test_bad_entries_are_refused_with_the_field_named(fields: dict, reason: str) -> None:
    with pytest.raises(EntryError, match=reason.replace("[", r"\[")):
        decode_entry("1-0", fields)


def test_encode_refuses_what_the_daemon_would_dead_letter() -> None:
    with pytest.raises(EntryError, match="NaN"):
        encode_entry("a", {"health": float("nan")})
    with pytest.raises(EntryError, match="state must be a dict"):
        encode_entry("a", [1, 2])  # type: ignore[arg-type]
    with pytest.raises(EntryError, match="agent_id"):
        encode_entry("", {})
