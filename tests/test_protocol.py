"""The stream protocol: entries are validated with reasons that name the field."""

from __future__ import annotations

import re

import pytest

from memory_tiers.errors import EntryError
from memory_tiers.protocol import (
    MAX_AGENT_ID_LENGTH,
    MAX_EXACT_INTEGER,
    TS_RANGE,
    UNKNOWN_STEP,
    check_agent_id,
    decode_entry,
    encode_entry,
    entry_time_ms,
    integer_problem,
)


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
        ({"agent_id": "a", "state": " " * (2**21 + 1)}, "state is 2097153 characters, over"),
        ({"agent_id": "a", "state": "[1, 2]"}, "state must be a JSON object, got list"),
        ({"agent_id": "a", "state": '{"health": NaN}'}, "state holds NaN"),
        ({"agent_id": "a", "state": '{"health": -Infinity}'}, "state holds -Infinity"),
        ({"agent_id": "a", "state": "{}", "step": "seven"}, "step='seven': expected int"),
        ({"agent_id": "a", "state": "{}", "ts": "1.5"}, "ts='1.5': expected int"),
        ({"agent_id": "a", "state": "{}", "importance": "inf"}, "importance='inf': must be finite"),
        ({"agent_id": "a", "state": "{}", "importance": "nan"}, "importance='nan': must be finite"),
        ({"agent_id": "a", "state": "{}", "importance": "1e400"}, "importance='1e400': must be"),
        ({"agent_id": "a", "state": "{}", "step": "9" * 400}, "step='9999.*400 characters.: out"),
        ({"agent_id": "a", "state": "{}", "step": str(2**53)}, "step='9007199254740992': out of"),
        ({"agent_id": "a", "state": "{}", "step": str(-(2**53))}, "step='-9007199254740992': out"),
        ({"agent_id": "a", "state": "{}", "ts": "1" * 400}, "ts='1111.*: out of range"),
        ({"agent_id": "a", "state": "{}", "ts": "-1"}, "ts='-1': out of range"),
        ({"agent_id": "a", "state": "{}", "ts": "1732600000000000"}, "ts='1732600000000000': out"),
        ({"agent_id": "a", "state": "{}", "ts": "9" * 5000}, "ts='9999.*: out of range"),
        # Only the spelling the entry schema gives (str(n), String(n)): what it refuses, the
        # daemon refuses, so a producer that validates is never surprised by the daemon.
        *(
            ({"agent_id": "a", "state": "{}", "step": raw}, f"'{re.escape(raw)}': expected int")
            for raw in ("007", "-0012", " 1", "1 ", "+1", "1_000", "\u0663", "0x1f")
        ),
        ({"agent_id": "a", "state": "{}", "ts": "-0"}, "ts='-0': expected int.*plain"),
        ({"agent_id": "a", "state": "{}", "step": "-" + "0" * 5000 + "1"}, "step='-000.*plain"),
        ({"agent_id": "a", "state": "{}", "step": "0" * 5000 + "9" * 17}, "step='000.*out of"),
        *(
            ({"agent_id": "a", "state": "{}", "importance": raw}, "expected a decimal number")
            for raw in (" 1", ".5", "1.", "+0.5", "05", "1e200", "1_0.5", "\u0663")
        ),
        ({"agent_id": "a", "state": "{}", "kind": "dream"}, "kind='dream': expected one of"),
        ({b"agent_id": b"\xff\xfe", b"state": b"{}"}, "not UTF-8"),
    ],
)
def test_bad_entries_are_refused_with_the_field_named(fields: dict, reason: str) -> None:
    with pytest.raises(EntryError, match=reason.replace("[", r"\[")):
        decode_entry("1-0", fields)


def test_integers_at_the_bounds_are_accepted_and_round_trip() -> None:
    for step, ts in ((MAX_EXACT_INTEGER, TS_RANGE[1]), (-MAX_EXACT_INTEGER, TS_RANGE[0])):
        entry = decode_entry("1-0", encode_entry("a", {}, step=step, ts=ts))
        assert (entry.step, entry.ts) == (step, ts)
        assert float(step) == step and float(ts) == ts  # exact as doubles: as Redis holds them
    assert integer_problem("step", 2**63 - 1) == (
        f"step '9223372036854775807' is out of range [{-MAX_EXACT_INTEGER}, {MAX_EXACT_INTEGER}]"
    )
    assert integer_problem("ts", TS_RANGE[1]) is None


def test_encode_refuses_what_the_daemon_would_dead_letter() -> None:
    with pytest.raises(EntryError, match="NaN"):
        encode_entry("a", {"health": float("nan")})
    with pytest.raises(EntryError, match="state must be a dict"):
        encode_entry("a", [1, 2])  # type: ignore[arg-type]
    with pytest.raises(EntryError, match="agent_id"):
        encode_entry("", {})
    with pytest.raises(EntryError, match="step='9007199254740992': out of range"):
        encode_entry("a", {}, step=2**53)


@pytest.mark.parametrize(
    ("agent_id", "reason"),
    [
        ("", "agent_id '' is empty"),
        (7, "agent_id 7 must be a string, got int"),
        ("a\tb", "contains a control character"),
        ("x" * (MAX_AGENT_ID_LENGTH + 1), f"characters, over {MAX_AGENT_ID_LENGTH}"),
    ],
)
def test_check_agent_id_refuses_what_the_daemon_would(agent_id: object, reason: str) -> None:
    with pytest.raises(EntryError, match=reason):
        check_agent_id(agent_id)


def test_check_agent_id_returns_an_id_the_daemon_accepts() -> None:
    assert check_agent_id("bot-7") == "bot-7"
    assert decode_entry("1-0", {"agent_id": "bot-7", "state": "{}"}).agent_id == "bot-7"
