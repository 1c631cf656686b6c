"""FeatureSchema: fixed length, exact normalization, clear errors, serialized forms."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memory_tiers.errors import ConfigError, FeatureError
from memory_tiers.features import (
    DEFAULT_SCHEMA,
    HASHED,
    OTHER,
    CategoricalField,
    FeatureSchema,
    GridField,
    NumericField,
    default_schema,
)
from memory_tiers.sampling import sample_states

S = DEFAULT_SCHEMA
SL = S.slices()
DIM = 152  # 5 numeric + (5 + 5 + 8) one-hot with "other" + 11 * 11 grid + 8 hashed


def full_state() -> dict[str, Any]:
    return {
        "agent_id": "a-1",
        "health": 80.0,
        "energy": 25,
        "resources": 300,
        "x_position": -250.0,
        "y_position": 125.5,
        "agent_type": "defender",
        "status": "sleeping",
        "current_action": "build",
        "perception": [[(r + c) % 4 for c in range(11)] for r in range(11)],
    }


def block(vec: np.ndarray, name: str) -> np.ndarray:
    return vec[SL[name]]


def grid_of(vec: np.ndarray, name: str = "perception") -> np.ndarray:
    return block(vec, name).reshape(11, 11)


# --- layout and fixed length ---


def test_default_schema_layout() -> None:
    assert S.input_dim == DIM
    assert default_schema() == S
    assert list(SL) == [
        "health",
        "energy",
        "resources",
        "x_position",
        "y_position",
        "agent_type",
        "status",
        "current_action",
        "perception",
        HASHED,
    ]
    # blocks are contiguous and cover the vector exactly
    stops = [0] + [s.stop for s in SL.values()]
    assert [s.start for s in SL.values()] == stops[:-1]
    assert stops[-1] == DIM
    assert SL["current_action"].stop - SL["current_action"].start == 8


@pytest.mark.parametrize(
    "state",
    [
        {},
        {"health": 10},
        {**full_state(), "extra_a": 1, "extra_b": 2.5, "extra_c": -7, "note": "hi", "tags": [1]},
        {**full_state(), **{f"k{i}": i for i in range(100)}},
    ],
    ids=["empty", "one-field", "extra-keys", "many-extra-keys"],
)
def test_length_is_fixed_for_any_keys(state: dict[str, Any]) -> None:
    vec = S.extract(state)
    assert vec.shape == (DIM,)
    assert vec.dtype == np.float32
    assert ((vec >= 0) & (vec <= 1)).all()


@pytest.mark.parametrize(
    "shape", [(1, 1), (3, 3), (11, 11), (12, 12), (22, 22), (5, 30), (40, 2), (1, 0), (256, 256)]
)
def test_length_is_fixed_for_any_grid_shape(shape: tuple[int, int]) -> None:
    grid = np.ones(shape, dtype=np.int64).tolist() if shape[1] else [[]]
    vec = S.extract({"perception": grid})
    assert vec.shape == (DIM,)
    assert ((vec >= 0) & (vec <= 1)).all()


_extra_values = st.one_of(
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.text(max_size=5),
    st.none(),
    st.lists(st.integers(), max_size=3),
)


@settings(max_examples=60, deadline=None)
@given(extra=st.dictionaries(st.text(min_size=1, max_size=8), _extra_values, max_size=12))
def test_unknown_keys_never_change_the_length(extra: dict[str, Any]) -> None:
    state = {**extra, **full_state()}
    vec = S.extract(state)
    assert vec.shape == (DIM,)
    assert ((vec >= 0) & (vec <= 1)).all()
    # declared blocks do not depend on the unknown keys
    np.testing.assert_array_equal(
        vec[: SL[HASHED].start], S.extract(full_state())[: SL[HASHED].start]
    )


# --- numeric fields ---


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("health", 50, 0.5),
        ("health", 150, 1.0),
        ("health", -3.5, 0.0),
        ("health", True, 0.01),
        ("energy", 25, 0.25),
        ("resources", 1000, 1.0),
        ("x_position", 0, 0.5),
        ("x_position", -500, 0.0),
        ("y_position", 250, 0.75),
        ("y_position", np.float32(-250), 0.25),
        ("y_position", np.int64(500), 1.0),
    ],
)
def test_numeric_normalized_and_clipped(field: str, value: Any, expected: float) -> None:
    assert block(S.extract({field: value}), field)[0] == pytest.approx(expected, abs=1e-7)


def test_missing_numeric_takes_default() -> None:
    assert block(S.extract({}), "health")[0] == 0.5
    assert block(S.extract({"health": None}), "health")[0] == 0.5
    schema = FeatureSchema(
        numeric=(NumericField("a", 0, 10), NumericField("b", 0, 10, default=0.0)), default=0.25
    )
    np.testing.assert_array_equal(schema.extract({})[:2], [0.25, 0.0])
    np.testing.assert_array_equal(schema.extract({"a": 5, "b": 10})[:2], [0.5, 1.0])


# --- categorical fields ---


def test_categorical_one_hot_other_and_absent() -> None:
    np.testing.assert_array_equal(
        block(S.extract({"agent_type": "explorer"}), "agent_type"), [0, 1, 0, 0, 0]
    )
    np.testing.assert_array_equal(
        block(S.extract({"agent_type": "wizard"}), "agent_type"), [0, 0, 0, 0, 1]
    )
    np.testing.assert_array_equal(block(S.extract({}), "agent_type"), [0, 0, 0, 0, 0])
    np.testing.assert_array_equal(
        block(S.extract({"current_action": "none"}), "current_action"), [0, 0, 0, 0, 0, 0, 1, 0]
    )


# --- grids ---


def test_grid_of_declared_shape_is_normalized_row_major() -> None:
    state = full_state()
    expected = np.array(state["perception"], dtype=np.float64) / 3.0
    np.testing.assert_allclose(grid_of(S.extract(state)), expected, rtol=0, atol=1e-7)
    np.testing.assert_array_equal(grid_of(S.extract({})), np.zeros((11, 11)))
    # the design's {"grid": ...} form and numpy arrays give the same features
    for same in ({"grid": state["perception"]}, np.array(state["perception"])):
        np.testing.assert_array_equal(
            S.extract({"perception": same}), S.extract({"perception": state["perception"]})
        )


def test_grid_values_are_clipped_to_range() -> None:
    grid = np.zeros((11, 11))
    grid[0, 0], grid[0, 1] = 7, -2
    vec = grid_of(S.extract({"perception": grid.tolist()}))
    assert (vec[0, 0], vec[0, 1]) == (1.0, 0.0)


def test_larger_grid_is_max_pooled_in_blocks() -> None:
    big = np.zeros((22, 22), dtype=np.int64)
    big[0, 1] = 2  # one agent in the top-left 2x2 block
    big[21, 21] = 3  # an obstacle in the bottom-right block
    vec = grid_of(S.extract({"perception": big.tolist()}))
    expected = np.zeros((11, 11))
    expected[0, 0], expected[10, 10] = 2 / 3, 1.0
    np.testing.assert_allclose(vec, expected, atol=1e-7)


def test_mean_pooling_option_averages_blocks() -> None:
    schema = FeatureSchema(grids=(GridField("g", (2, 2), 0, 4, pool="mean"),), hashed_slots=0)
    grid = [[4, 0, 0, 0], [0, 0, 0, 0], [0, 0, 4, 4], [0, 0, 4, 4]]
    np.testing.assert_allclose(schema.extract({"g": grid}), [0.25, 0.0, 0.0, 1.0], atol=1e-7)


def test_smaller_grid_is_centered_and_zero_padded() -> None:
    vec = grid_of(S.extract({"perception": [[3, 3, 3]] * 3}))
    expected = np.zeros((11, 11))
    expected[4:7, 4:7] = 1.0
    np.testing.assert_array_equal(vec, expected)


def test_non_square_grid_pools_one_axis_and_pads_the_other() -> None:
    tall = np.zeros((33, 5))
    tall[3, 0] = 3  # row block 1 (rows 3..5), first of five columns centered at 3..7
    vec = grid_of(S.extract({"perception": tall.tolist()}))
    expected = np.zeros((11, 11))
    expected[1, 3] = 1.0
    np.testing.assert_array_equal(vec, expected)


def test_empty_grid_is_all_zeros() -> None:
    empties: list[list[Any]] = [[], [[]]]
    for empty in empties:
        np.testing.assert_array_equal(grid_of(S.extract({"perception": empty})), np.zeros((11, 11)))


# --- hashed slots ---


def test_hashed_slot_is_stable() -> None:
    # zlib.crc32(b"foo") % 8 == 1; 3 -> 3 / (1 + 3) = 0.75 -> (0.75 + 1) / 2 = 0.875
    hashed = block(S.extract({"foo": 3}), HASHED)
    np.testing.assert_allclose(hashed, [0.5, 0.875, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5], atol=1e-7)


def test_hashed_slot_averages_keys_and_ignores_non_numbers() -> None:
    # "foo" and "score" share slot 1: mean(0.75, -0.5) = 0.125 -> 0.5625; "reward" is slot 3
    state = {"foo": 3, "score": -1, "reward": 0.0, "agent_id": "x", "alive": True, "l": [1, 2]}
    hashed = block(S.extract(state), HASHED)
    np.testing.assert_allclose(hashed, [0.5, 0.5625, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5], atol=1e-7)


def test_no_hashed_slots() -> None:
    schema = FeatureSchema(numeric=(NumericField("a", 0, 1),), hashed_slots=0)
    assert schema.input_dim == 1
    np.testing.assert_array_equal(schema.extract({"a": 1, "b": 5}), [1.0])


# --- bad values ---


def _ragged() -> list[list[int]]:
    return [[0] * 11] * 5 + [[0] * 10] + [[0] * 11] * 5


@pytest.mark.parametrize(
    ("state", "field", "shown"),
    [
        ({"health": math.nan}, "'health'", "nan"),
        ({"energy": math.inf}, "'energy'", "inf"),
        ({"x_position": -math.inf}, "'x_position'", "-inf"),
        ({"health": "50"}, "'health'", "'50'"),
        ({"health": [50]}, "'health'", "[50]"),
        ({"health": 10**400}, "'health'", "1000"),
        ({"agent_type": 3}, "'agent_type'", "3"),
        ({"status": ["idle"]}, "'status'", "['idle']"),
        ({"status": {"a": 1}}, "'status'", "{'a': 1}"),
        ({"perception": _ragged()}, "'perception'", "row 5"),
        ({"perception": [[1, 2], 3]}, "'perception'", "ragged"),
        ({"perception": [[[1]] * 3] * 3}, "'perception'", "2-D"),
        ({"perception": np.zeros((3, 3, 3))}, "'perception'", "3-D"),
        ({"perception": [1, 2, 3]}, "'perception'", "1-D"),
        ({"perception": 5}, "'perception'", "5"),
        ({"perception": [[1, "a"], [0, 0]]}, "'perception'", "'a'"),
        ({"perception": [[1, None], [0, 0]]}, "'perception'", "None"),
        ({"perception": [[1, math.nan], [0, 0]]}, "'perception'", "[0][1]"),
        ({"mystery": math.nan}, "'mystery'", "nan"),
        ("not a state", "state", "'not a state'"),
        ([("health", 5)], "state", "list"),
    ],
)
def test_bad_value_names_field_and_value(state: Any, field: str, shown: str) -> None:
    with pytest.raises(FeatureError) as info:
        S.extract(state)
    assert field in str(info.value)
    assert shown in str(info.value)
    assert isinstance(info.value, ValueError)


def test_long_value_is_truncated_in_message() -> None:
    with pytest.raises(FeatureError, match="'health'") as info:
        S.extract({"health": "x" * 10_000})
    assert len(str(info.value)) < 200


@pytest.mark.parametrize(
    "grid",
    [
        [[0] * 10] * 100_000,  # too many rows
        [[0] * 100_000] * 200,  # too many columns
        [[0] * 1000] * 1000,  # too many cells
    ],
    ids=["rows", "cols", "cells"],
)
def test_huge_grid_is_rejected(grid: list[list[int]]) -> None:
    with pytest.raises(FeatureError, match=r"'perception'.*exceeds"):
        S.extract({"perception": grid})


# --- batches ---


def _batch() -> list[dict[str, Any]]:
    states: list[dict[str, Any]] = [full_state(), {}, {"health": 3, "foo": 1.5, "agent_type": "z"}]
    states.append({"perception": [[2] * 30] * 7, "status": "idle", "reward": -2, "score": 9})
    return states


def test_extract_batch_equals_stacked_extract() -> None:
    states = _batch()
    batch = S.extract_batch(states)
    assert batch.shape == (len(states), DIM)
    assert batch.dtype == np.float32
    np.testing.assert_array_equal(batch, np.stack([S.extract(s) for s in states]))
    assert S.extract_batch([]).shape == (0, DIM)
    np.testing.assert_array_equal(S.extract_batch(iter(states)), batch)


class _Code(int):
    """An int subclass, as a cell: numpy reads it as an int, marshal refuses it."""


_ODD_CELLS = [2**31 - 1, -(2**31), 2**31, -(2**31) - 1, 10**30]  # int32's ends and beyond
_ODD_CELLS += [np.int64(2), _Code(3), True, 2.0, "", [], "row"]


@pytest.mark.parametrize("odd", _ODD_CELLS)
def test_batch_reads_grids_with_an_odd_cell_as_extract(odd: Any) -> None:
    """The batch reads grids of plain ints in bulk; one odd cell among them (beyond int32, a
    numpy or subclassed int, a bool, a float, a cell as long as an int in marshal's encoding,
    a row that is a tuple) must read as per state."""
    states = [full_state() for _ in range(3)]
    grid = [list(row) for row in states[1]["perception"]]
    if odd == "row":
        grid[4] = tuple(grid[4])
    else:
        grid[4][7] = odd
    states[1]["perception"] = grid
    rows: list[np.ndarray] = []
    failures: list[str] = []
    for state in states:
        try:
            rows.append(S.extract(state))
        except FeatureError as e:
            failures.append(str(e))
    features, _, errors = S.extract_valid(states)
    assert [str(e) for e in errors.values()] == failures
    np.testing.assert_array_equal(features, np.stack(rows))


def test_batch_error_names_item_index_and_field() -> None:
    states = [*_batch(), {"energy": "high"}]
    with pytest.raises(FeatureError, match=r"^item 4: field 'energy'.*'high'"):
        S.extract_batch(states)
    with pytest.raises(FeatureError, match=r"^item 1: state must be a dict"):
        S.extract_batch([{}, None])


def test_extract_valid_sets_bad_states_aside() -> None:
    states = [full_state(), {"health": math.nan}, {}, 7]
    features, good, errors = S.extract_valid(states)
    assert good == [0, 2]
    assert sorted(errors) == [1, 3]
    assert "'health'" in str(errors[1])
    np.testing.assert_array_equal(features, S.extract_batch([states[0], states[2]]))


# --- describe ---


def test_describe_recovers_the_state() -> None:
    state = full_state()
    described = S.describe(S.extract(state))
    for name, (low, high) in {
        "health": (0, 100),
        "resources": (0, 1000),
        "y_position": (-500, 500),
    }.items():
        assert described[name] == pytest.approx(state[name], abs=(high - low) * 1e-6)
    for name in ("agent_type", "status", "current_action"):
        assert described[name] == state[name]
    assert described["perception"] == state["perception"]
    assert "agent_id" not in described


def test_describe_other_absent_and_noisy_vectors() -> None:
    vec = S.extract({"agent_type": "wizard"})
    described = S.describe(vec)
    assert described["agent_type"] == OTHER
    assert "status" not in described  # absent stays absent
    assert described["health"] == 50.0  # a missing number reads back as its default
    noisy = np.full(DIM, 0.1, dtype=np.float32)
    noisy[SL["status"].start + 2] = 0.7  # "sleeping" strongest, sum 1.1 > 1: present
    assert S.describe(noisy)["status"] == "sleeping"
    with pytest.raises(FeatureError, match="152"):
        S.describe(np.zeros(10))
    with pytest.raises(FeatureError):
        S.describe(np.full(DIM, np.nan))


# --- serialized forms ---


def test_dict_round_trip_is_exact_and_plain_json() -> None:
    data = S.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert FeatureSchema.from_dict(data) == S
    assert FeatureSchema.from_dict(data).to_dict() == data
    assert data["grids"] == [
        {"name": "perception", "shape": [11, 11], "min": 0.0, "max": 3.0, "pool": "max"}
    ]


def test_fingerprint_is_stable() -> None:
    # changes only when the default schema changes (and then models must be retrained)
    assert S.fingerprint() == "9d67f2f6f831"
    other = FeatureSchema.from_dict({**S.to_dict(), "hashed_slots": 4})
    assert other.fingerprint() != S.fingerprint()


def test_json_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(S.to_dict()))
    assert FeatureSchema.from_file(path) == S


def test_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "schema.toml"
    path.write_text(
        """
hashed_slots = 4
default = 0.5

[[numeric]]
name = "health"
min = 0
max = 100

[[numeric]]
name = "temperature"
min = -40
max = 60
default = 0.4

[[categorical]]
name = "status"
values = ["idle", "active"]

[[grids]]
name = "vision"
shape = [5, 7]
max = 9
"""
    )
    schema = FeatureSchema.from_file(path)
    assert schema == FeatureSchema(
        numeric=(NumericField("health", 0, 100), NumericField("temperature", -40, 60, 0.4)),
        categorical=(CategoricalField("status", ("idle", "active")),),
        grids=(GridField("vision", (5, 7), 0, 9),),
        hashed_slots=4,
    )
    assert schema.input_dim == 2 + 3 + 35 + 4
    assert FeatureSchema.from_dict(schema.to_dict()) == schema
    vec = schema.extract({"temperature": 10, "vision": [[9] * 7] * 5})
    assert vec[1] == 0.5
    assert (vec[SL_slice(schema, "vision")] == 1.0).all()


def SL_slice(schema: FeatureSchema, name: str) -> slice:
    return schema.slices()[name]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"numeric": [{"name": "a", "min": 1, "max": 1}]}, "below max"),
        ({"numeric": [{"name": "a", "min": 0, "max": 1, "default": 2}]}, r"\[0, 1\]"),
        ({"numeric": [{"name": "a", "min": 0, "max": "1"}]}, "a.max"),
        ({"numeric": [{"name": "a", "min": 0}]}, "missing keys \\['max'\\]"),
        (
            {"numeric": [{"name": "a", "min": 0, "max": 1, "unit": "m"}]},
            "unknown keys \\['unit'\\]",
        ),
        ({"categorical": [{"name": "c", "values": ["x", "x"]}]}, "duplicate"),
        ({"categorical": [{"name": "c", "values": "xy"}]}, "list of strings"),
        ({"categorical": [{"name": "c", "values": []}]}, "non-empty"),
        ({"grids": [{"name": "g", "shape": [3]}]}, "shape"),
        ({"grids": [{"name": "g", "shape": [2000, 2]}]}, "shape"),
        ({"grids": [{"name": "g", "pool": "median"}]}, "pool"),
        ({"numeric": [{"name": "a", "min": 0, "max": 1}], "grids": [{"name": "a"}]}, "twice"),
        ({"numeric": [{"name": HASHED, "min": 0, "max": 1}]}, "reserved"),
        ({"hashed_slots": -1}, "hashed_slots"),
        ({"hashed_slots": True}, "hashed_slots"),
        ({"version": 2}, "version"),
        ({"fields": []}, "unknown keys"),
        ({"numeric": {"name": "a"}}, "expected a list"),
    ],
)
def test_invalid_schema_raises_config_error(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        FeatureSchema.from_dict(data)


def test_from_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.json"):
        FeatureSchema.from_file(tmp_path / "missing.json")
    bad = tmp_path / "bad.toml"
    bad.write_text("numeric = [")
    with pytest.raises(ConfigError, match=r"bad\.toml"):
        FeatureSchema.from_file(bad)
    with pytest.raises(ConfigError, match=r"\.yaml"):
        FeatureSchema.from_file(tmp_path / "schema.yaml")


def test_values_no_slot_takes_are_counted_per_field() -> None:
    from collections import Counter

    schema = default_schema()
    states = [
        {"text": "user likes pizza", "health": 50},
        {"text": "user hates rain", "tags": ["a"], "health": 50},
        {"health": 50, "agent_id": "a-1", "flag": True, "gone": None, "score": 3},
    ]
    ignored: Counter[str] = Counter()
    features, good, errors = schema.extract_valid(states, ignored)
    assert (good, errors) == ([0, 1, 2], {})
    assert ignored == {"text": 2, "tags": 1, "flag": 1}  # score is hashed; agent_id, None: never
    assert np.array_equal(features[0], features[1])  # why users must be told
    bare = FeatureSchema.from_dict({**schema.to_dict(), "hashed_slots": 0})
    ignored.clear()
    bare.extract_valid(states, ignored)
    assert ignored == {"text": 2, "tags": 1, "flag": 1, "score": 1}


# --- the batch path against the per-state path ---

_SMALL = FeatureSchema(
    numeric=(NumericField("a", -1, 1, default=0.25), NumericField("b", 0, 10)),
    categorical=(CategoricalField("kind", ("x", "y")),),
    grids=(GridField("cells", (3, 4), -1.0, 2.0, pool="mean"),),
    hashed_slots=1,  # keys share the slot: the order values are summed in must not change
)
_SCHEMAS = (S, _SMALL, FeatureSchema.from_dict({**S.to_dict(), "hashed_slots": 0}))

_numbers = st.one_of(  # values a declared number or an unknown key takes without error
    st.none(),
    st.floats(-1e6, 1e6),
    st.integers(-(2**60), 2**60),  # past 2**53 too: converted one by one
    st.booleans(),
    st.builds(np.float64, st.floats(-1e3, 1e3)),
)
_cells = st.one_of(  # beside codes: ints beyond int32 and numpy's, read one grid at a time
    st.integers(0, 3),
    st.integers(-3, 300),
    st.integers(-(2**40), 2**40),
    st.builds(np.int64, st.integers(-3, 3)),
    st.floats(-5, 5),
    st.booleans(),
)
_FAULTS: dict[str, st.SearchStrategy[Any]] = {  # one bad value per kind of place
    "number": st.sampled_from([math.nan, -math.inf, 10**400, "1.5", [1]]),
    "category": st.sampled_from([1, True, 2.5, ["x"]]),
    "grid": st.sampled_from(["ragged", "1-D", "nan", "none", "text", "nested", "string"]),
}


@st.composite
def _grids(draw: st.DrawFn, shape: tuple[int, int], fault: str | None = None) -> Any:
    """A grid of one of a few shapes (so that several states share one), of codes or of other
    numbers, in one of the accepted forms; with `fault`, broken in that way."""
    rows, cols = draw(st.sampled_from([shape, shape, (2, 3), (5, 5), (1, 40), (40, 13)]))
    cell = st.integers(0, 3) if draw(st.booleans()) else _cells
    grid: Any = [[draw(cell) for _ in range(cols)] for _ in range(rows)]
    if fault is not None:
        r, c = draw(st.integers(0, rows - 1)), draw(st.integers(0, cols - 1))
        bad = {"nan": math.nan, "none": None, "text": "1", "nested": [1]}
        if fault in bad:
            grid[r][c] = bad[fault]
        elif fault == "ragged":
            grid[r] = grid[r][:-1] if cols > 1 else [*grid[r], 0]
        return {"1-D": grid[0], "string": "grid"}.get(fault, grid)
    form = draw(st.sampled_from(["list"] * 8 + ["empty", "form", "tuple"]))
    return {"list": grid, "empty": [], "form": {"grid": grid}, "tuple": tuple(grid)}[form]


@st.composite
def _states(draw: st.DrawFn, schema: FeatureSchema) -> Any:
    """A state of `schema`'s fields, some left out, unknown keys beside them; one in three has
    one bad value, one in twenty is not a dict."""
    if draw(st.integers(0, 19)) == 0:
        return draw(st.sampled_from([None, 7, "state", [1, 2]]))
    state: dict[str, Any] = {}
    for f in schema.numeric:
        if draw(st.integers(0, 3)):
            state[f.name] = draw(st.floats(f.min - 5, f.max + 5) | _numbers)
    for c in schema.categorical:
        if draw(st.integers(0, 3)):
            state[c.name] = draw(st.sampled_from([*c.values, "unknown", None]))
    for g in schema.grids:
        if draw(st.integers(0, 3)):
            state[g.name] = draw(_grids(g.shape) | st.none())
    extras = st.sampled_from(["score", "speed", "mood", "agent_id", "note", "flag"])
    values = _numbers | st.text(max_size=2) | st.lists(st.integers(), max_size=2)
    state.update(draw(st.dictionaries(extras, values, max_size=6)))
    if draw(st.integers(0, 2)) == 0:
        names = [f.name for f in schema.numeric] + [c.name for c in schema.categorical]
        names += [g.name for g in schema.grids]
        name = draw(st.sampled_from([*names, "score"]))
        place = "category" if name in {c.name for c in schema.categorical} else "number"
        if name in {g.name for g in schema.grids}:
            state[name] = draw(_grids(schema.grids[0].shape, draw(_FAULTS["grid"])))
        else:
            state[name] = draw(_FAULTS[place])
    return state


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_batch_path_equals_per_state_path(data: st.DataObject) -> None:
    schema = data.draw(st.sampled_from(_SCHEMAS))
    states = data.draw(st.lists(_states(schema), max_size=12))
    rows: dict[int, bytes] = {}
    failures: dict[int, str] = {}
    for i, state in enumerate(states):
        try:
            rows[i] = schema.extract(state).tobytes()
        except FeatureError as e:
            failures[i] = str(e)
    expected: Counter[str] = Counter()
    schema._extract_each(states, lambda _, __: None, expected)  # the per-state path's counts

    ignored: Counter[str] = Counter()
    features, good, errors = schema.extract_valid(states, ignored)
    assert {i: str(e) for i, e in errors.items()} == failures
    assert good == sorted(rows)
    assert [row.tobytes() for row in features] == [rows[i] for i in good]  # bit for bit
    assert ignored == expected
    if failures:
        first = min(failures)
        with pytest.raises(FeatureError) as caught:
            schema.extract_batch(states)
        assert str(caught.value) == f"item {first}: {failures[first]}"
    else:
        assert schema.extract_batch(states).tobytes() == b"".join(rows[i] for i in good)


@pytest.mark.parametrize(
    "names", [("health",), ("energy", "agent_type"), ("status", "x_position", "current_action")]
)
def test_a_schema_restricted_to_some_fields_featurizes_them_as_the_whole_schema_does(
    names: tuple[str, ...],
) -> None:
    states = sample_states(S, 300, num_agents=3, seed=7)  # values off range, others, left out
    partial = [{name: state[name] for name in names if name in state} for state in states]
    restricted = S.restricted_to(names)

    whole = S.extract_batch(partial)
    slots = np.concatenate([np.arange(SL[n].start, SL[n].stop) for n in S.slices() if n in names])
    assert restricted.input_dim == len(slots)
    np.testing.assert_array_equal(restricted.extract_batch(partial), whole[:, slots])
    np.testing.assert_array_equal(restricted.extract(partial[0]), whole[0, slots])
