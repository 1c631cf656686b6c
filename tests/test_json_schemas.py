"""The JSON Schemas of `memory-tiers schema` agree with what the daemon accepts and refuses.

Each bad sample is checked on both sides: the schema refuses it and so does the daemon's own
reader (protocol.decode_entry, FeatureSchema.extract), so the schema never promises less than
the daemon does. Property tests add: whatever the schema refuses, the daemon refuses too.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from memory_tiers import EntryError, FeatureError, FeatureSchema
from memory_tiers.checkpoint import load_checkpoint
from memory_tiers.cli import main
from memory_tiers.features import DEFAULT_SCHEMA
from memory_tiers.json_schemas import entry_schema, state_schema
from memory_tiers.protocol import (
    FINITE_NUMBER,
    INTEGER_BOUNDS,
    decode_entry,
    encode_entry,
    integer_pattern,
)
from memory_tiers.sampling import sample_states
from memory_tiers.settings import packaged_model
from memory_tiers.sim import simulate_states

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = {part: ROOT / "docs" / "schema" / f"{part}.schema.json" for part in ("entry", "state")}

STATE = state_schema(DEFAULT_SCHEMA)
ENTRY = entry_schema(STATE)
entries = Draft202012Validator(ENTRY)
states = Draft202012Validator(STATE)


def daemon_accepts_entry(fields: dict[str, str]) -> bool:
    try:
        entry = decode_entry("1-0", fields)
    except EntryError:
        return False
    if entry.kind == "state":
        return daemon_accepts_state(entry.state)
    return True


def daemon_accepts_state(state: object) -> bool:
    try:
        DEFAULT_SCHEMA.extract(state)
    except FeatureError:
        return False
    return True


def test_both_documents_are_valid_draft_2020_12_schemas() -> None:
    Draft202012Validator.check_schema(ENTRY)
    Draft202012Validator.check_schema(STATE)
    assert ENTRY["$defs"]["state"] is STATE
    assert ENTRY["properties"]["state"]["contentSchema"] == {"$ref": "#/$defs/state"}


# -- entries -----------------------------------------------------------------------------------


def test_entries_the_client_writes_validate() -> None:
    samples = [
        encode_entry("bot-7", {"health": 80, "agent_type": "explorer"}, step=12),
        encode_entry("node bot|{1}:ü", {}, step=-(2**53 - 1), ts=253_402_300_799_999),
        encode_entry("a", {"action_type": "gather"}, kind="action", importance=0.25),
        encode_entry("a", {"x": 1}, ts=0, importance=-1e99),
        {"agent_id": "bot-7", "state": '  {"health": 1}', "step": "0", "extra": "kept"},
    ]
    for fields in samples:
        assert entries.is_valid(fields), list(entries.iter_errors(fields))
        assert daemon_accepts_entry(fields)


BAD_ENTRIES: list[tuple[dict[str, Any], str]] = [
    ({"state": "{}"}, "agent_id"),
    ({"agent_id": "", "state": "{}"}, "agent_id"),
    ({"agent_id": " bot", "state": "{}"}, "agent_id"),
    ({"agent_id": "bot\n", "state": "{}"}, "agent_id"),
    ({"agent_id": "b\x00t", "state": "{}"}, "agent_id"),
    ({"agent_id": "b" * 257, "state": "{}"}, "agent_id"),
    ({"agent_id": "bot"}, "state"),
    ({"agent_id": "bot", "state": "[1, 2]"}, "state"),
    ({"agent_id": "bot", "state": "null"}, "state"),
    ({"agent_id": "bot", "state": "{}", "step": str(2**53)}, "step"),
    ({"agent_id": "bot", "state": "{}", "step": "1.5"}, "step"),
    ({"agent_id": "bot", "state": "{}", "step": "1" * 400}, "step"),
    ({"agent_id": "bot", "state": "{}", "ts": "-1"}, "ts"),
    ({"agent_id": "bot", "state": "{}", "ts": "1732600000000000"}, "ts"),
    ({"agent_id": "bot", "state": "{}", "kind": "thought"}, "kind"),
    ({"agent_id": "bot", "state": "{}", "importance": "nan"}, "importance"),
    ({"agent_id": "bot", "state": "{}", "importance": "inf"}, "importance"),
    ({"agent_id": "bot", "state": "{}", "importance": "1e400"}, "importance"),
    ({"agent_id": "bot", "state": "{}", "importance": "high"}, "importance"),
    ({"agent_id": "bot", "state": "{}", "step": 12}, "step"),  # a number, not a string
]


@pytest.mark.parametrize(("fields", "field"), BAD_ENTRIES)
def test_bad_entries_are_refused_by_the_schema_and_the_daemon(
    fields: dict[str, Any], field: str
) -> None:
    errors = list(entries.iter_errors(fields))
    assert errors, f"the schema accepted {fields!r}"
    assert {e.path[0] if e.path else _missing(e.message) for e in errors} == {field}
    if all(isinstance(v, str) for v in fields.values()):  # the wire holds strings only
        assert not daemon_accepts_entry(fields)


def _missing(message: str) -> str:
    found = re.match(r"'(\w+)' is a required property", message)
    assert found, message
    return found.group(1)


@pytest.mark.parametrize("name", ["step", "ts"])
def test_integer_patterns_match_exactly_the_protocol_bounds(name: str) -> None:
    low, high = INTEGER_BOUNDS[name]
    pattern = re.compile(ENTRY["properties"][name]["pattern"])
    near = [low, low + 1, -1, 0, 1, 9, 10, 99, high - 1, high, high // 7, high // 10 - 3]
    inside = [v for v in near if low <= v]
    outside = [low - 1, high + 1, high * 10, 10 ** len(str(high)), -(10**20)]
    assert all(pattern.search(str(v)) for v in inside)
    assert not any(pattern.search(str(v)) for v in outside)
    assert not any(pattern.search(text) for text in ("-", "+1", "01", " 1", "1 ", "1e3"))
    assert pattern.search("")  # an empty field is read as an absent one
    assert not re.search(integer_pattern(low, high), "")


@settings(max_examples=300, deadline=None)
@given(
    bounds=st.tuples(st.integers(-(10**20), 0), st.integers(0, 10**20)),
    value=st.integers(-(10**21), 10**21),
)
def test_integer_pattern_is_the_range(bounds: tuple[int, int], value: int) -> None:
    low, high = bounds
    matched = re.search(integer_pattern(low, high), str(value)) is not None
    assert matched == (low <= value <= high)


@settings(max_examples=300, deadline=None)
@given(st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(10**30), 10**30))
def test_finite_number_pattern_only_takes_finite_numbers(value: float) -> None:
    for written in {repr(value), str(value), json.dumps(value)}:
        if re.search(FINITE_NUMBER, written):
            assert daemon_accepts_entry({"agent_id": "a", "state": "{}", "importance": written})


_text = st.text(st.characters(codec="utf-8"), max_size=6) | st.sampled_from(
    ["0", "-0", "12", "9007199254740991", "253402300799999", "1.5", "state", "action", " a"]
)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["agent_id", "state", "step", "ts", "kind", "importance"]),
        _text | st.sampled_from(["{}", '{"health": 3}', "[]", '{"health": "x"}']),
    )
)
def test_whatever_the_entry_schema_refuses_the_daemon_refuses(fields: dict[str, str]) -> None:
    if not entries.is_valid(fields):
        assert not daemon_accepts_entry(fields)


@settings(max_examples=500, deadline=None)
@given(
    name=st.sampled_from(["step", "ts", "importance"]),
    raw=st.text(st.sampled_from("0123456789-+. eE_\u0663"), max_size=8),
)
def test_a_number_field_is_read_exactly_when_the_schema_takes_its_spelling(
    name: str, raw: str
) -> None:
    # Spellings int() and float() would read ('007', ' 1', '+1', '1_0', '.5') are refused by
    # both: the schema and the daemon agree on every text, not only on plain ones.
    fields = {"agent_id": "a", "state": "{}", name: raw}
    assert entries.is_valid(fields) == daemon_accepts_entry(fields)


# -- states ------------------------------------------------------------------------------------


def test_simulated_and_schema_wide_states_validate() -> None:
    samples = [
        *simulate_states(200, seed=5),
        *sample_states(DEFAULT_SCHEMA, 200, seed=6),
        {},
        {"health": None, "agent_type": None, "perception": None},
        {"health": True, "agent_type": "wizard", "perception": {"grid": [[1, 2], [3, 0]]}},
        {"health": 1e6, "perception": [], "note": "ignored", "tags": [1, 2], "speed": -3.5},
        {"perception": [[1] * 40] * 40},  # larger than 11x11: pooled
    ]
    for state in samples:
        assert states.is_valid(state), list(states.iter_errors(state))
        assert daemon_accepts_state(state)


BAD_STATES: list[tuple[object, str]] = [
    ([], "type"),
    ("health=3", "type"),
    ({"health": "high"}, "type"),
    ({"health": [1]}, "type"),
    ({"agent_type": 3}, "type"),
    ({"status": ["idle"]}, "type"),
    ({"perception": [1, 2, 3]}, "anyOf"),
    ({"perception": [["wall"]]}, "anyOf"),
    ({"perception": [[[1]]]}, "anyOf"),
    ({"perception": {"cells": [[1]]}}, "anyOf"),
    ({"perception": [[0] * 1025]}, "anyOf"),
    ({"perception": 7}, "anyOf"),
]


@pytest.mark.parametrize(("state", "keyword"), BAD_STATES)
def test_bad_states_are_refused_by_the_schema_and_the_daemon(state: object, keyword: str) -> None:
    assert [e.validator for e in states.iter_errors(state)] == [keyword]
    assert not daemon_accepts_state(state)


_scalar = st.none() | st.booleans() | st.integers(-1000, 1000) | st.floats(-1e6, 1e6)
_json = st.recursive(
    _scalar | st.text(max_size=3),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=2)
    ),
    max_leaves=8,
)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from(["health", "agent_type", "perception", "zz"]), _json))
def test_whatever_the_state_schema_refuses_the_daemon_refuses(state: dict[str, Any]) -> None:
    if not states.is_valid(state):
        assert not daemon_accepts_state(state)


def test_the_feature_schema_is_carried_whole_and_described() -> None:
    carried = STATE["$defs"]["feature_schema"]["const"]
    assert FeatureSchema.from_dict(carried) == DEFAULT_SCHEMA
    props = STATE["properties"]
    assert list(props) == [
        *(f.name for f in DEFAULT_SCHEMA.numeric),
        *(c.name for c in DEFAULT_SCHEMA.categorical),
        "perception",
    ]
    assert "[-500, 500]" in props["x_position"]["description"]
    assert "absent or null: 0" in props["x_position"]["description"]
    assert props["agent_type"]["examples"] == ["harvester", "explorer", "defender", "builder"]
    assert "fitted to 11x11" in props["perception"]["anyOf"][0]["description"]
    assert "8 hashed slots" in STATE["additionalProperties"]["description"]
    unhashed = state_schema(FeatureSchema(hashed_slots=0))
    assert unhashed["additionalProperties"]["description"].startswith("Keys the schema does not")
    assert STATE["title"] == f"memory_tiers state (feature schema {DEFAULT_SCHEMA.fingerprint()})"


# -- the command and the committed documents ----------------------------------------------------


def test_schema_command_prints_the_active_models_schemas(model_path: Path) -> None:
    checkpoint = load_checkpoint(model_path)
    runner = CliRunner()
    env = {"MT_MODEL_PATH": str(model_path)}
    state = runner.invoke(main, ["schema", "state"], env=env)
    assert state.exit_code == 0, state.output
    assert json.loads(state.output) == state_schema(checkpoint.schema, checkpoint.version)
    entry = runner.invoke(main, ["schema"], env=env)
    assert entry.exit_code == 0, entry.output
    assert json.loads(entry.output) == entry_schema(json.loads(state.output))
    missing = runner.invoke(main, ["schema"], env={"MT_MODEL_PATH": str(model_path) + ".gone"})
    assert missing.exit_code == 1 and "model checkpoint not found" in missing.output


@pytest.mark.parametrize("part", ["entry", "state"])
def test_the_committed_schemas_are_the_packaged_models(part: str) -> None:
    checkpoint = load_checkpoint(packaged_model())
    state = state_schema(checkpoint.schema, checkpoint.version)
    expected = state if part == "state" else entry_schema(state)
    committed = json.loads(COMMITTED[part].read_text(encoding="utf-8"))
    assert committed == expected, (
        f"{COMMITTED[part].relative_to(ROOT)} is stale: "
        f"memory-tiers schema {part} > {COMMITTED[part].relative_to(ROOT)} (MT_MODEL_PATH unset)"
    )
