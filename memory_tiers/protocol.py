"""The stream protocol: what agents XADD to `mt:states`, and how an entry is read back.

An entry's fields (all strings on the wire):
    agent_id    required; who the memory belongs to
    state       required; a JSON object (the agent's state, or an action for kind=action)
    step        optional integer; the agent's step counter (-1 when absent)
    ts          optional integer, milliseconds since the epoch (default: the entry id's time)
    kind        optional, 'state' (default) or 'action'
    importance  optional number (default 0), stored for filters and retention

Numbers are bounded here, at the edge, because everything after takes them as they are: step
and ts are indexed NUMERIC fields and ts scores the time indexes (ZADD), and both are doubles
inside Redis. An integer beyond 2**53 is rounded there (2**53 + 1 finds 2**53), one of 400
digits makes RediSearch fail to index the record and a ZADD fail inside the commit. So step
is an integer of at most MAX_EXACT_INTEGER in magnitude (well within int64), ts an epoch-ms in
TS_RANGE, and importance a finite number.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from .errors import EntryError

KINDS = ("state", "action")
"""What an entry's state field holds: an agent state, or an action to map to state form."""

UNKNOWN_STEP = -1
"""step stored for an entry that gave none."""

MAX_AGENT_ID_LENGTH = 256
"""Longest agent_id accepted; ids are TAG values and key parts."""

MAX_STATE_LENGTH = 2 * 1024 * 1024
"""Longest state JSON accepted, in characters (2 Mi). The largest grid the feature schema
takes (65,536 cells) needs well under 1 MB; a state is kept whole in its STM record."""

MAX_EXACT_INTEGER = 2**53 - 1
"""Largest |step| accepted: integers up to it are exact as doubles, so RediSearch NUMERIC
indexes and range-filters them, and ZADD scores them, without rounding."""

TS_RANGE = (0, 253_402_300_799_999)
"""Accepted ts, epoch milliseconds: 1970-01-01 to 9999-12-31T23:59:59.999Z, the dates Python
can render. Refuses negative times and timestamps in micro- or nanoseconds (16 digits and more);
every value in it is an exact double."""

INTEGER_BOUNDS = {"step": (-MAX_EXACT_INTEGER, MAX_EXACT_INTEGER), "ts": TS_RANGE}
"""The accepted range of each integer field."""

FINITE_NUMBER = "^-?(?:0|[1-9][0-9]{0,20})(?:\\.[0-9]+)?(?:[eE](?:-[0-9]{1,3}|\\+?[0-9]{1,2}))?$"
"""Pattern of a decimal number text that is a finite double: at most 21 integer digits (what
JavaScript's String(x) writes before switching to an exponent) and an exponent under 100, so
never past 1e121; negative exponents to -999 (they only underflow towards 0)."""


def integer_pattern(low: int, high: int) -> str:
    """An anchored pattern of the decimal integers in [low, high], where low <= 0 <= high.

    No leading zeros, no '+', no spaces: what JSON.stringify, String(n) and str(n) write for
    an integer, and all the daemon reads (the entry schema gives the same pattern).
    """
    if not low <= 0 <= high:
        raise ValueError(f"[{low}, {high}] must hold 0")
    if low == 0:
        return f"^(?:{_naturals_up_to(high)})$"
    if -low == high:
        return f"^-?(?:{_naturals_up_to(high)})$"
    return f"^(?:{_naturals_up_to(high)}|-(?:{_naturals_up_to(-low)}))$"


def _naturals_up_to(n: int) -> str:
    """Alternatives that match the decimal texts of 0..n exactly."""
    digits = str(n)
    if len(digits) == 1:
        return f"[0-{n}]"
    shorter = "0|[1-9]" + (f"[0-9]{{0,{len(digits) - 2}}}" if len(digits) > 2 else "")
    parts = [shorter]
    for i, digit in enumerate(digits):
        smallest = 1 if i == 0 else 0
        if int(digit) > smallest:
            rest = len(digits) - i - 1
            span = f"[{smallest}-{int(digit) - 1}]" if int(digit) - 1 > smallest else str(smallest)
            parts.append(digits[:i] + span + _any_digits(rest))
    parts.append(digits)
    return "|".join(parts)


def _any_digits(count: int) -> str:
    return "" if count == 0 else "[0-9]" if count == 1 else f"[0-9]{{{count}}}"


_INTEGER_SPELLINGS = {
    name: re.compile(integer_pattern(low, high)) for name, (low, high) in INTEGER_BOUNDS.items()
}
_FINITE_NUMBER = re.compile(FINITE_NUMBER)
_DIGITS = re.compile("-?[0-9]+")

_CONTROL_CHARACTER = re.compile("[\x00-\x1f\x7f]")

# Where orjson and json could disagree, json parses: orjson reads an integer beyond 64 bits as
# a float (json: an int), so a run of 19 or more digits (10**18 < 2**63) goes to json; and it
# nests up to 1024 deep where json (and so the readers of the stored state) may hit Python's
# recursion limit first, so a state with over _MAX_FAST_BRACKETS '[' and '{' goes to json too.
# One bytes.translate maps digits to b"0", both brackets to b"[" and the rest to b" ".
_FAST_CHECK_TABLE = bytes(48 if 48 <= i <= 57 else 91 if i in (91, 123) else 32 for i in range(256))
_LONG_DIGIT_RUN = b"0" * 19
_MAX_FAST_BRACKETS = 512


@dataclass(frozen=True)
class StreamEntry:
    """One validated stream entry."""

    entry_id: str
    agent_id: str
    state: dict[str, Any]
    step: int = UNKNOWN_STEP
    ts: int = 0
    kind: str = "state"
    importance: float = 0.0


def encode_entry(
    agent_id: str,
    state: Mapping[str, Any],
    step: int | None = None,
    ts: int | None = None,
    kind: str = "state",
    importance: float | None = None,
) -> dict[str, str]:
    """The XADD fields of one memory; validated the way the daemon will read them.

    Raises:
        EntryError: the agent_id, state or an option would be refused by the daemon.
    """
    fields = {"agent_id": agent_id, "state": _dumps(state), "kind": kind}
    for name, value in (("step", step), ("ts", ts), ("importance", importance)):
        if value is not None:
            fields[name] = str(value)
    decode_entry("0-0", fields)  # refuse here what the daemon would dead-letter
    return fields


def _dumps(state: Mapping[str, Any]) -> str:
    if not isinstance(state, Mapping):
        raise EntryError(f"state must be a dict, got {type(state).__name__}")
    try:
        return json.dumps(state, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as e:
        raise EntryError(f"state is not JSON-serialisable without NaN/inf: {e}") from e


def decode_entry(entry_id: str, fields: Mapping[Any, Any]) -> StreamEntry:
    """A StreamEntry from XREADGROUP/XRANGE fields (bytes or str).

    Raises:
        EntryError: naming the field that is missing or malformed.
    """
    try:
        text = {
            (k.decode() if isinstance(k, bytes) else str(k)): (
                v.decode() if isinstance(v, bytes) else str(v)
            )
            for k, v in fields.items()
        }
    except UnicodeDecodeError:
        text = {_text(k): _text(v) for k, v in fields.items()}  # raises, naming the field
    agent_id = text.get("agent_id", "")
    if not agent_id:
        raise EntryError("agent_id is missing or empty")
    check_agent_id(agent_id)
    kind = text.get("kind", "state")
    if kind not in KINDS:
        raise EntryError(f"kind={kind!r}: expected one of {', '.join(KINDS)}")
    return StreamEntry(
        entry_id=entry_id,
        agent_id=agent_id,
        state=_state(text.get("state")),
        step=_integer(text, "step", UNKNOWN_STEP),
        ts=_integer(text, "ts", entry_time_ms(entry_id)),
        kind=kind,
        importance=_importance(text),
    )


def action_to_state(action: Mapping[str, Any]) -> dict[str, Any]:
    """An action in the state-like form the feature schema reads (as designed).

    action_type becomes current_action; action_params, context and outcome entries become
    `param_*`, `context_*` and `outcome_*` keys, which land in the schema's hashed slots.
    """
    state: dict[str, Any] = {}
    if "action_type" in action:
        state["current_action"] = action["action_type"]
    for source, prefix in (("action_params", "param_"), ("context", "context_")):
        values = action.get(source)
        if isinstance(values, Mapping):
            state.update({f"{prefix}{key}": value for key, value in values.items()})
    outcome = action.get("outcome")
    if isinstance(outcome, Mapping):
        state.update({f"outcome_{key}": value for key, value in outcome.items()})
    elif outcome is not None:
        state["outcome"] = outcome
    return state


def integer_problem(name: str, value: int) -> str | None:
    """Why `value` cannot be stored as `name` ('step' or 'ts'), or None when it can.

    The protocol's bounds, for whatever writes records: the store checks them again, so a record
    made without `decode_entry` cannot carry a number Redis would refuse or round either.
    """
    low, high = INTEGER_BOUNDS[name]
    if low <= value <= high:
        return None
    return f"{name} {_shown(str(value))} is out of range [{low}, {high}]"


def check_agent_id(agent_id: object) -> str:
    """`agent_id` if the daemon would accept it.

    Raises:
        EntryError: empty, too long, not a string, or not storable as a TAG value.
    """
    problem = tag_problem(agent_id)
    if problem:
        raise EntryError(f"agent_id {agent_id!r} {problem}")
    assert isinstance(agent_id, str)
    if len(agent_id) > MAX_AGENT_ID_LENGTH:
        raise EntryError(f"agent_id is {len(agent_id)} characters, over {MAX_AGENT_ID_LENGTH}")
    return agent_id


def tag_problem(value: object) -> str | None:
    """Why `value` cannot be stored as a TAG value, or None when it can.

    RediSearch trims TAG values and cannot match an empty one, so ' a' would show up in searches
    for 'a' and '' would match nothing; control characters include the separator.
    """
    if not isinstance(value, str):
        return f"must be a string, got {type(value).__name__}"
    if not value:
        return "is empty"
    if value != value.strip():
        return "has leading or trailing whitespace"
    if _CONTROL_CHARACTER.search(value):
        return "contains a control character"
    return None


def entry_time_ms(entry_id: str) -> int:
    """The millisecond time part of a stream entry id ('1732600000000-3' -> 1732600000000)."""
    return int(entry_id.split("-", 1)[0])


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as e:
            raise EntryError(f"field is not UTF-8: {value[:40]!r}") from e
    return str(value)


def _state(raw: str | None) -> dict[str, Any]:
    if raw is None:
        raise EntryError("state is missing")
    if len(raw) > MAX_STATE_LENGTH:
        raise EntryError(f"state is {len(raw)} characters, over {MAX_STATE_LENGTH}")
    state = _loads(raw)
    if not isinstance(state, dict):
        raise EntryError(f"state must be a JSON object, got {type(state).__name__}")
    return state


def _loads(raw: str) -> Any:
    """The parsed state JSON (`read_json`), its errors as EntryErrors."""
    try:
        return read_json(raw)
    except json.JSONDecodeError as e:
        raise EntryError(f"state is not valid JSON ({e.msg} at {e.pos}): {raw[:60]!r}") from e
    except RecursionError as e:
        raise EntryError("state is nested too deep to be read (JSON arrays or objects)") from e


def read_json(raw: str | bytes) -> Any:
    """The parsed JSON: orjson where it agrees with json, else json (and json's errors).

    Raises:
        json.JSONDecodeError: not JSON.
        EntryError: it holds NaN or an infinity.
        RecursionError: nested too deep for json.
    """
    encoded = raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogatepass")
    shape = encoded.translate(_FAST_CHECK_TABLE)
    if _LONG_DIGIT_RUN not in shape and shape.count(b"[") <= _MAX_FAST_BRACKETS:
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass  # NaN, a BOM, a lone surrogate...: json decides, and words the error
    return json.loads(raw, parse_constant=_refuse_constant)


def _refuse_constant(name: str) -> Any:
    raise EntryError(f"state holds {name}: numbers must be finite")


def _integer(text: Mapping[str, str], name: str, default: int) -> int:
    raw = text.get(name)
    if raw is None or raw == "":
        return default
    if _INTEGER_SPELLINGS[name].fullmatch(raw):
        return int(raw)
    low, high = INTEGER_BOUNDS[name]
    if _DIGITS.fullmatch(raw):
        # Only its significant digits go to int(), which refuses texts over 4300 digits.
        significant = raw.lstrip("-").lstrip("0") or "0"
        too_long = len(significant) > len(str(max(-low, high)))
        value = 0 if too_long else int(significant) * (-1 if raw[0] == "-" else 1)
        if too_long or not low <= value <= high:
            raise EntryError(f"{name}={_shown(raw)}: out of range, expected int in [{low}, {high}]")
    raise EntryError(
        f"{name}={_shown(raw)}: expected int in [{low}, {high}], in plain decimal (no '+', "
        "spaces or leading zeros)"
    )


def _importance(text: Mapping[str, str]) -> float:
    raw = text.get("importance")
    if raw is None or raw == "":
        return 0.0
    if _FINITE_NUMBER.fullmatch(raw):
        return float(raw)
    try:
        finite = math.isfinite(float(raw))
    except ValueError:
        finite = True  # not a number at all: its spelling is the problem
    if not finite:
        raise EntryError(f"importance={_shown(raw)}: must be finite")
    raise EntryError(
        f"importance={_shown(raw)}: expected a decimal number (no '+', spaces or leading zeros; "
        "under 10^21 before the point, an exponent of at most 99)"
    )


def _shown(raw: str) -> str:
    """A value for an error message: repr, cut to 40 characters with its length."""
    return repr(raw) if len(raw) <= 40 else f"{raw[:40]!r}... ({len(raw)} characters)"
