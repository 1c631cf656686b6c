"""Malformed stream entries drawn by hypothesis, each one a thing the daemon must dead-letter.

Every strategy breaks exactly one rule and keeps the rest valid, so an entry the daemon stores
is a bug of the daemon, not of the fuzzer. `malformed_entries(n, seed)` draws n of them (with
hypothesis's generation phase only: nothing to shrink), plus one 5 MB state and two giant grids
made by hand (drawing them by the thousand would only fill memory).
"""

from __future__ import annotations

import json
import random
from typing import Any

from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from memory_tiers.protocol import MAX_AGENT_ID_LENGTH, MAX_EXACT_INTEGER, TS_RANGE

Entry = dict[Any, Any]
"""Stream fields as XADD takes them: str or bytes names and values."""

GOOD_STATE = {"health": 50, "energy": 20, "agent_type": "explorer", "status": "active"}
NUMERIC_FIELDS = ("health", "energy", "resources", "x_position", "y_position")


def _entry(state: Any = GOOD_STATE, **fields: Any) -> Entry:
    """A valid entry of agent 'fuzz' with `fields` replaced (None: removed)."""
    base: Entry = {"agent_id": "fuzz", "state": json.dumps(state), "step": "1"}
    base.update(fields)
    return {k: v for k, v in base.items() if v is not None}


_digits = st.integers(min_value=20, max_value=400).map(lambda n: "9" * n)
_huge_step = st.one_of(
    st.integers(min_value=MAX_EXACT_INTEGER + 1, max_value=2**70),
    st.integers(min_value=-(2**70), max_value=-MAX_EXACT_INTEGER - 1),
).map(str)
_bad_ts = st.one_of(
    st.integers(min_value=TS_RANGE[1] + 1, max_value=2**80),
    st.integers(min_value=-(2**63), max_value=-1),
).map(str)
_not_a_number = st.from_regex(r"[a-z]{1,12}", fullmatch=True)
_not_finite = st.sampled_from(
    ["nan", "NaN", "inf", "-inf", "Infinity", "-Infinity", "1e999", "-1e400"]
)

NUMBERS = st.one_of(
    st.builds(lambda v: _entry(step=v), st.one_of(_digits, _huge_step, _not_a_number)),
    st.builds(lambda v: _entry(ts=v), st.one_of(_digits, _bad_ts, _not_a_number)),
    st.builds(lambda v: _entry(importance=v), st.one_of(_not_finite, _not_a_number)),
)
"""Huge, negative, non-finite and non-numeric step, ts and importance."""

WRONG_TYPES = st.one_of(
    st.builds(
        lambda name, value: _entry({**GOOD_STATE, name: value}),
        st.sampled_from(NUMERIC_FIELDS),
        st.one_of(_not_a_number, st.lists(st.integers(), max_size=3), st.just({"a": 1})),
    ),
    st.builds(lambda v: _entry({**GOOD_STATE, "agent_type": v}), st.integers()),
    st.builds(
        lambda v: _entry(state=v),
        st.one_of(st.lists(st.integers(), max_size=4), st.integers(), st.text(max_size=8)),
    ),
    st.builds(
        lambda v: {**_entry(), "state": v},
        st.sampled_from(["{not json", '{"health": NaN}', '{"a": -Infinity}', "", "[", "nul"]),
    ),
    st.builds(lambda v: _entry(kind=v), _not_a_number.filter(lambda k: k not in ("state",))),
)
"""A number where a string belongs and the reverse, a state that is no JSON object, NaN."""

DEEP = st.integers(min_value=2_000, max_value=20_000).map(
    lambda depth: {**_entry(), "state": '{"a": ' + "[" * depth + "]" * depth + "}"}
)
"""Nesting deeper than any JSON reader here follows."""

INVALID_UTF8 = st.builds(
    lambda field, junk: {
        **{k.encode(): v.encode() for k, v in _entry().items()},
        field.encode(): b"a" + junk + b"\xff\xfe",
    },
    st.sampled_from(["agent_id", "state", "step"]),
    st.binary(max_size=20),
)
"""A field that is not UTF-8."""

GRIDS = st.one_of(
    st.builds(
        lambda rows, short: _entry(
            {**GOOD_STATE, "perception": [[1, 2, 3]] * rows + [[1] * short]}
        ),
        st.integers(min_value=1, max_value=20),
        st.sampled_from([1, 2, 4]),
    ),
    st.integers(min_value=1025, max_value=2000).map(
        lambda rows: {**_entry(), "state": '{"perception": [' + ",".join(["[0]"] * rows) + "]}"}
    ),
    st.builds(lambda cell: _entry({**GOOD_STATE, "perception": [[0, cell]]}), st.text(max_size=4)),
)
"""Ragged grids, grids over the side limit, grid cells that are no numbers."""

AGENT_IDS = st.builds(
    lambda agent: {**_entry(), "agent_id": agent},
    st.one_of(
        st.just(""),
        st.text(min_size=1, max_size=8).map(lambda t: " " + t),
        st.text(min_size=1, max_size=8).map(lambda t: t + "\n"),
        st.text(min_size=1, max_size=8).map(lambda t: t[:1] + "\x1f" + t),
        st.integers(min_value=MAX_AGENT_ID_LENGTH + 1, max_value=2000).map(lambda n: "a" * n),
    ),
) | st.just({"state": json.dumps(GOOD_STATE)})
"""Empty, padded, control-character, overlong and missing agent ids."""

MALFORMED = st.one_of(NUMBERS, WRONG_TYPES, DEEP, INVALID_UTF8, GRIDS, AGENT_IDS)


def malformed_entries(n: int, draw_seed: int = 0) -> list[Entry]:
    """`n` malformed entries: n - 3 drawn by hypothesis, one 5 MB state, two giant grids."""
    drawn: list[Entry] = []

    @seed(draw_seed)
    @settings(
        max_examples=max(1, n - 3), phases=[Phase.generate], database=None, deadline=None,
        suppress_health_check=list(HealthCheck),
    )  # fmt: skip
    @given(MALFORMED)
    def draw(entry: Entry) -> None:
        drawn.append(entry)

    draw()
    while len(drawn) < n - 3:  # hypothesis may stop early on duplicates: top up
        drawn.append(drawn[random.Random(len(drawn)).randrange(len(drawn))])
    five_mb = {**_entry(), "state": json.dumps({**GOOD_STATE, "notes": "x" * 5_000_000})}
    giant = '{"perception": [' + ",".join(["[" + ",".join("0" * 700) + "]"] * 700) + "]}"
    return [*drawn[: n - 3], five_mb, {**_entry(), "state": giant}, {**_entry(), "state": giant}]
