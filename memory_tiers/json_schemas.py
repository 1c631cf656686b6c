"""JSON Schemas (draft 2020-12) for producers in any language: a stream entry, and a state.

`entry_schema()` describes the fields an agent XADDs to `mt:states` (protocol.py), all strings
as on the wire; `state_schema(schema)` describes the JSON object in an entry's `state` field
under a model's FeatureSchema (features.py). `memory-tiers schema` prints them.

Both are written to accept no less than the daemon does where JSON Schema can say it, and to
refuse what it always refuses, so an entry the schema refuses is one the daemon would
dead-letter. Some checks have no JSON Schema form and are left to the daemon:
- a number in a state beyond a double (1e400), which JSON parsers read as infinity;
- a grid's rows of unequal length, or more than MAX_GRID_CELLS cells in all;
- the entry's `state` text parsed as a JSON object (`contentSchema` is an annotation in 2020-12:
  validators do not apply it unless told to; validate the parsed state against `$defs/state`).
So a valid entry may still be dead-lettered, with a reason naming the field; the README's
"Other languages" section says how a producer finds out.

Out-of-range numbers are not refused: the daemon clips them into the field's range, so the
ranges appear in each field's description (and whole, in `$defs/feature_schema`), not as
`minimum`/`maximum`. No custom keywords are used: Ajv's strict mode refuses unknown ones.
"""

from __future__ import annotations

from typing import Any

from .features import (
    MAX_GRID_CELLS,
    MAX_GRID_SIDE,
    NOT_FEATURES,
    OTHER,
    CategoricalField,
    FeatureSchema,
    GridField,
    NumericField,
)
from .protocol import (
    FINITE_NUMBER,
    INTEGER_BOUNDS,
    KINDS,
    MAX_AGENT_ID_LENGTH,
    MAX_STATE_LENGTH,
    UNKNOWN_STEP,
    integer_pattern,
)

DRAFT = "https://json-schema.org/draft/2020-12/schema"
"""The JSON Schema dialect of every document here."""

CONTROL_CHARACTER = "[\\u0000-\\u001f\\u007f]"
"""Pattern of a character the protocol refuses in an agent id (and TAG values)."""

NO_EDGE_WHITESPACE = "^\\S(?:[\\s\\S]*\\S)?$"
"""Pattern of a string without leading or trailing whitespace (RediSearch trims TAG values)."""


def entry_schema(state: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON Schema of one stream entry's fields, as strings (the XADD field/value pairs).

    Args:
        state: a `state_schema()` to reference from the `state` field (kept under
            `$defs/state`, as its `contentSchema` for kind=state).
    """
    low, high = INTEGER_BOUNDS["step"]
    ts_low, ts_high = INTEGER_BOUNDS["ts"]
    document: dict[str, Any] = {
        "$schema": DRAFT,
        "title": "memory_tiers stream entry",
        "description": (
            "The fields of one XADD to the stream mt:states (MT_PREFIX changes mt). Every value "
            "is a string, as Redis stores it. Fields not listed here are kept in the stream but "
            "not read."
        ),
        "type": "object",
        "required": ["agent_id", "state"],
        "properties": {
            "agent_id": _agent_id(),
            "state": _state_text(state is not None),
            "step": {
                "type": "string",
                "pattern": _or_empty(integer_pattern(low, high)),
                "description": (
                    f"the agent's step counter, a decimal integer in [{low}, {high}] (exact as "
                    f"a double); absent or empty: {UNKNOWN_STEP}"
                ),
            },
            "ts": {
                "type": "string",
                "pattern": _or_empty(integer_pattern(ts_low, ts_high)),
                "description": (
                    f"milliseconds since the epoch, a decimal integer in [{ts_low}, {ts_high}] "
                    "(1970-01-01 to 9999-12-31T23:59:59.999Z); absent or empty: the entry id's "
                    "time"
                ),
            },
            "kind": {
                "enum": list(KINDS),
                "description": (
                    "state (default): `state` is the agent's state; action: `state` is an "
                    "action, mapped to a state (action_type -> current_action, action_params/"
                    "context/outcome entries -> param_*/context_*/outcome_* keys)"
                ),
            },
            "importance": {
                "type": "string",
                "pattern": _or_empty(FINITE_NUMBER),
                "description": "a finite decimal number, stored for filters; absent or empty: 0",
            },
        },
        "additionalProperties": {"type": "string"},
    }
    if state is not None:
        document["$defs"] = {"state": state}
    return document


def state_schema(schema: FeatureSchema, version: str | None = None) -> dict[str, Any]:
    """The JSON Schema of a state under `schema`: its declared fields, and what becomes of
    the keys it does not declare.

    Args:
        version: the model version, named in the title when given.
    """
    properties: dict[str, Any] = {f.name: _numeric(f, schema.default) for f in schema.numeric}
    properties.update({c.name: _categorical(c) for c in schema.categorical})
    properties.update({g.name: _grid(g) for g in schema.grids})
    model = f", model {version}" if version else ""
    return {
        "$schema": DRAFT,
        "title": f"memory_tiers state (feature schema {schema.fingerprint()}{model})",
        "description": (
            "A JSON object: the state an agent remembers and recalls by. Every declared field "
            "may be absent or null. " + _unknown_keys(schema.hashed_slots)
        ),
        "type": "object",
        "properties": properties,
        "additionalProperties": {"description": _unknown_keys(schema.hashed_slots)},
        "$defs": {
            "feature_schema": {
                "description": (
                    "the model's FeatureSchema as memory_tiers.features.FeatureSchema.to_dict() "
                    "writes it: the exact ranges, values and grid shapes, for tools"
                ),
                "const": schema.to_dict(),
            }
        },
    }


def _or_empty(pattern: str) -> str:
    """`pattern` (anchored) or the empty string, which the daemon reads as an absent field."""
    return f"^$|{pattern}"


def _agent_id() -> dict[str, Any]:
    return {
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_AGENT_ID_LENGTH,
        "pattern": NO_EDGE_WHITESPACE,
        "not": {"pattern": CONTROL_CHARACTER},
        "description": (
            f"whose memory it is: 1 to {MAX_AGENT_ID_LENGTH} characters, no control "
            "characters, no leading or trailing whitespace; any other character is allowed "
            "(escape it in TAG queries)"
        ),
    }


def _state_text(with_schema: bool) -> dict[str, Any]:
    field: dict[str, Any] = {
        "type": "string",
        "maxLength": MAX_STATE_LENGTH,
        "pattern": "^\\s*\\{",
        "contentMediaType": "application/json",
        "description": (
            f"a JSON object as text, at most {MAX_STATE_LENGTH} characters, finite numbers "
            "only (no NaN or Infinity); kind=state: a state ($defs/state), kind=action: an "
            "action (action_type, action_params, context, outcome)"
        ),
    }
    if with_schema:
        field["contentSchema"] = {"$ref": "#/$defs/state"}
    return field


def _numeric(f: NumericField, schema_default: float) -> dict[str, Any]:
    normalized = schema_default if f.default is None else f.default
    absent = f.min + normalized * (f.max - f.min)
    return {
        "type": ["number", "boolean", "null"],
        "description": (
            f"a number, normalized over [{_num(f.min)}, {_num(f.max)}]: values outside are "
            f"clipped to it; true/false count as 1/0; absent or null: {_num(absent)}"
        ),
    }


def _categorical(c: CategoricalField) -> dict[str, Any]:
    return {
        "type": ["string", "null"],
        "examples": list(c.values),
        "description": (
            f"one of {', '.join(c.values)}; any other string counts as one value, "
            f"{OTHER}; absent or null: none of them"
        ),
    }


def _grid(g: GridField) -> dict[str, Any]:
    rows, cols = g.shape
    cells: dict[str, Any] = {
        "type": "array",
        "maxItems": MAX_GRID_SIDE,
        "items": {
            "type": "array",
            "maxItems": MAX_GRID_SIDE,
            "items": {"type": ["number", "boolean"]},
        },
        "description": (
            f"a list of rows of numbers, rows of equal length, at most {MAX_GRID_SIDE} a side "
            f"and {MAX_GRID_CELLS} cells; fitted to {rows}x{cols} (a larger grid is "
            f"{g.pool}-pooled, a smaller one padded, centered), cells normalized over "
            f"[{_num(g.min)}, {_num(g.max)}] and clipped"
        ),
    }
    wrapped = {
        "type": "object",
        "required": ["grid"],
        "properties": {"grid": cells},
        "description": 'the same grid as {"grid": [[...]]}',
    }
    return {"anyOf": [cells, wrapped, {"type": "null"}], "description": "absent or null: zeros"}


def _unknown_keys(hashed_slots: int) -> str:
    skipped = ", ".join(sorted(NOT_FEATURES))
    if not hashed_slots:
        return f"Keys the schema does not declare are ignored ({skipped} included)."
    return (
        f"A key the schema does not declare counts only when its value is a number (not a "
        f"boolean): it is folded into one of {hashed_slots} hashed slots (crc32 of the key); "
        f"any other value is ignored, as is {skipped}."
    )


def _num(value: float) -> str:
    """A bound as people write it: 100, not 100.0."""
    return str(int(value)) if float(value).is_integer() else str(value)
