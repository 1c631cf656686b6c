"""Fixed-length feature vectors from agent states, laid out by a declared `FeatureSchema`.

Layout of a vector (blocks in this order, fields in schema order within a block):

    numeric      1 slot per field: (value - min) / (max - min), clipped to [0, 1]
    categorical  len(values) + 1 slots per field: one-hot, the last slot is "other"
    grids        rows * cols slots per grid, row-major: (cell - min) / (max - min), clipped
    hashed       `hashed_slots` slots for numeric top-level keys the schema does not name

Every slot lies in [0, 1], so the autoencoder's Sigmoid decoder can reproduce each one, and
the length depends only on the schema, never on the state.

Decisions (the design's extractor left these open):

- Absent: a missing key and None (JSON null) mean the same. A numeric field then takes its
  `default` (normalized, 0.5 = middle of the range, as designed); a categorical field is all
  zeros ("absent", distinct from "other"); a grid is all zeros (nothing perceived).
- Bools: a declared numeric field accepts True/False as 1/0 (declaring it is opt-in, e.g. a
  0..1 flag); unknown bool keys are flags, not magnitudes, and are ignored by the hashed slots.
- Categorical values must be strings: a number there usually means a wrong schema, and
  str() would make 1 and 1.0 different categories. An unknown string goes to "other".
- Grids larger than the target shape are max-pooled over near-equal blocks: cells are codes
  (the simulation: 0 empty, 1 resource, 2 agent, 3 obstacle), so averaging would invent codes
  (mean of 1 and 3 reads as 2, "agent") while max keeps a lone agent or obstacle visible and
  rounds back to a real code. `pool="mean"` is there for grids of magnitudes. Smaller grids
  are padded, centered, with `min` (normalized 0). The design's {"grid": [[...]]} form is
  accepted too.
- Hashed slots: slot = zlib.crc32(key) % hashed_slots (stable across processes, unlike
  hash()); value x is squashed to x / (1 + |x|), values sharing a slot are averaged and the
  mean s in (-1, 1) is stored as (s + 1) / 2; an empty slot is 0.5. Non-numeric values
  (agent_id strings, lists, dicts) and non-string keys are ignored.
- Any NaN or inf, in a declared field, a grid cell or an unknown numeric key, is rejected.
"""

from __future__ import annotations

import hashlib
import json
import marshal
import math
import reprlib
import sys
import zlib
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from operator import itemgetter
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .errors import ConfigError, FeatureError

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

FloatArray = npt.NDArray[np.float32]

SCHEMA_VERSION = 1
"""Version of the dict form; `from_dict` refuses others."""

DEFAULT_MISSING = 0.5
"""Normalized value of an absent numeric field: the middle of its range."""

DEFAULT_HASHED_SLOTS = 8
"""Slots that unknown numeric keys are folded into."""

MAX_GRID_SIDE = 1024
"""Rows or columns beyond this reject a grid before any array is built from it."""

MAX_GRID_CELLS = 65_536
"""Cells (rows * columns) beyond this reject a grid before any array is built from it."""

OTHER = "<other>"
"""What `describe` shows for a categorical value that is not among the declared values."""

HASHED = "_hashed"
"""Name of the hashed block in `FeatureSchema.slices()`; no field may take it."""

POOLS = ("max", "mean")
"""How a grid larger than its declared shape is reduced."""

_NUMBER_TYPES = (int, float, np.integer, np.floating)
_EXACT_INT = 2**53
_BOOL_TYPES = (bool, np.bool_)
_PLAIN_NUMBERS = frozenset({float, int, bool, type(None)})  # what the batch path converts itself
_PLAIN_CATEGORIES = frozenset({str, type(None)})

NOT_FEATURES = frozenset({"agent_id"})
"""State keys that are never features and are not reported as ignored: a state's own copy of
its agent's id (the simulation's states carry one) is what recall filters by, not a trait."""

_SCHEMA_KEYS = ("version", "numeric", "categorical", "grids", "hashed_slots", "default")

_repr = reprlib.Repr()
_repr.maxstring = 40
_repr.maxother = 40
_repr.maxlist = 6
_repr.maxtuple = 6
_repr.maxdict = 4
_repr.maxlevel = 2


def _show(value: object) -> str:
    """Type and a truncated repr of `value`, cheap even for huge nested lists."""
    return f"{type(value).__name__} {_repr.repr(value)}"


# --- declared fields -----------------------------------------------------------------------


@dataclass(frozen=True)
class NumericField:
    """A number with a known range; normalized to [0, 1] and clipped.

    `default` is the normalized value used when the field is absent; None takes the schema's.
    """

    name: str
    min: float
    max: float
    default: float | None = None

    def __post_init__(self) -> None:
        _check_name(self.name)
        object.__setattr__(self, "min", _config_float(self.min, f"{self.name}.min"))
        object.__setattr__(self, "max", _config_float(self.max, f"{self.name}.max"))
        if not self.min < self.max:
            raise ConfigError(f"numeric field {self.name!r}: min {self.min} must be below max")
        if self.default is not None:
            default = _config_float(self.default, f"{self.name}.default")
            object.__setattr__(self, "default", _check_unit(default, f"{self.name}.default"))

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form; `default` appears only when set."""
        data: dict[str, Any] = {"name": self.name, "min": self.min, "max": self.max}
        if self.default is not None:
            data["default"] = self.default
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NumericField:
        """Inverse of `to_dict`."""
        _check_keys(data, "numeric field", required=("name", "min", "max"), optional=("default",))
        return cls(data["name"], data["min"], data["max"], data.get("default"))


@dataclass(frozen=True)
class CategoricalField:
    """A string from a known list; one-hot over the values plus a last "other" slot."""

    name: str
    values: tuple[str, ...]

    def __post_init__(self) -> None:
        _check_name(self.name)
        if isinstance(self.values, str) or not isinstance(self.values, Sequence):
            raise ConfigError(f"categorical field {self.name!r}: values must be a list of strings")
        values = tuple(self.values)
        if not values or not all(isinstance(v, str) for v in values):
            raise ConfigError(f"categorical field {self.name!r}: values must be non-empty strings")
        if len(set(values)) != len(values):
            raise ConfigError(f"categorical field {self.name!r}: duplicate values in {values}")
        object.__setattr__(self, "values", values)

    @property
    def width(self) -> int:
        """Slots this field takes: one per value plus "other"."""
        return len(self.values) + 1

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return {"name": self.name, "values": list(self.values)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CategoricalField:
        """Inverse of `to_dict`."""
        _check_keys(data, "categorical field", required=("name", "values"), optional=())
        return cls(data["name"], data["values"])


@dataclass(frozen=True)
class GridField:
    """A 2-D grid of numbers fitted to `shape` (pooled or padded), then normalized to [0, 1]."""

    name: str = "perception"
    shape: tuple[int, int] = (11, 11)
    min: float = 0.0
    max: float = 3.0
    pool: str = "max"

    def __post_init__(self) -> None:
        _check_name(self.name)
        shape = tuple(self.shape) if isinstance(self.shape, Sequence) else ()
        if len(shape) != 2 or not all(_is_int(n) and 0 < n <= MAX_GRID_SIDE for n in shape):
            raise ConfigError(
                f"grid {self.name!r}: shape must be [rows, cols] within 1..{MAX_GRID_SIDE}, "
                f"got {self.shape!r}"
            )
        if shape[0] * shape[1] > MAX_GRID_CELLS:
            raise ConfigError(f"grid {self.name!r}: shape {shape} exceeds {MAX_GRID_CELLS} cells")
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "min", _config_float(self.min, f"{self.name}.min"))
        object.__setattr__(self, "max", _config_float(self.max, f"{self.name}.max"))
        if not self.min < self.max:
            raise ConfigError(f"grid {self.name!r}: min {self.min} must be below max")
        if self.pool not in POOLS:
            raise ConfigError(f"grid {self.name!r}: pool must be one of {POOLS}, got {self.pool!r}")

    @property
    def width(self) -> int:
        """Slots this grid takes: rows * cols."""
        return self.shape[0] * self.shape[1]

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return {
            "name": self.name,
            "shape": list(self.shape),
            "min": self.min,
            "max": self.max,
            "pool": self.pool,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GridField:
        """Inverse of `to_dict`; all keys but `name` may be left out."""
        _check_keys(data, "grid", required=("name",), optional=("shape", "min", "max", "pool"))
        return cls(**data)


# --- the schema ----------------------------------------------------------------------------


class _Layout:
    """Offsets and lookup tables derived once from a schema, used on every extract."""

    def __init__(self, schema: FeatureSchema) -> None:
        self.n_numeric = len(schema.numeric)
        self.num_min = np.array([f.min for f in schema.numeric], dtype=np.float64)
        self.num_span = np.array([f.max - f.min for f in schema.numeric], dtype=np.float64)
        defaults = [schema.default if f.default is None else f.default for f in schema.numeric]
        self.num_default = np.array(defaults, dtype=np.float64)
        self.slices: dict[str, slice] = {}
        offset = 0
        for f in schema.numeric:
            self.slices[f.name] = slice(offset, offset + 1)
            offset += 1
        self.categories: list[tuple[CategoricalField, int, dict[str, int]]] = []
        for c in schema.categorical:
            self.categories.append((c, offset, {v: k for k, v in enumerate(c.values)}))
            self.slices[c.name] = slice(offset, offset + c.width)
            offset += c.width
        self.grids: list[tuple[GridField, int]] = []
        for g in schema.grids:
            self.grids.append((g, offset))
            self.slices[g.name] = slice(offset, offset + g.width)
            offset += g.width
        self.hashed_offset = offset
        self.slices[HASHED] = slice(offset, offset + schema.hashed_slots)
        self.dim = offset + schema.hashed_slots
        self.known = frozenset(self.slices) - {HASHED}
        # Plain tuples for the per-state loop: (name, ...) without attribute lookups.
        self.numeric_names = tuple(enumerate(f.name for f in schema.numeric))
        self.category_slots = tuple(
            (c.name, offset, index, len(c.values)) for c, offset, index in self.categories
        )
        # For the batch path: value -> slot within the field; None (absent) -> -1.
        self.category_codes: list[dict[str | None, int]] = []
        for _, _, index in self.categories:
            codes: dict[str | None, int] = {None: -1}
            codes.update(index.items())
            self.category_codes.append(codes)


class _Accumulator:
    """Per-batch values gathered in plain lists while reading states, written out vectorized."""

    def __init__(self, n: int, layout: _Layout) -> None:
        self.numbers = [math.nan] * (n * layout.n_numeric)  # NaN marks absent: real NaN is refused
        self.hot: list[int] = []  # flat indices into the (n, dim) output set to 1
        self.slots: list[int] = []  # flat indices into the (n, hashed_slots) hashed block
        self.squashed: list[float] = []
        self.ignored: Counter[str] | None = None  # per key: values no slot takes, if counted


@dataclass(frozen=True)
class FeatureSchema:
    """The declared fields of an agent state and how each becomes part of a fixed-length vector.

    Build it in code, from a dict (`from_dict`) or from a .json/.toml file (`from_file`).
    `to_dict` is stored in model checkpoints; `fingerprint` identifies it.
    """

    numeric: tuple[NumericField, ...] = ()
    categorical: tuple[CategoricalField, ...] = ()
    grids: tuple[GridField, ...] = ()
    hashed_slots: int = DEFAULT_HASHED_SLOTS
    default: float = DEFAULT_MISSING
    _layout: _Layout = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for attr, kind in (
            ("numeric", NumericField),
            ("categorical", CategoricalField),
            ("grids", GridField),
        ):
            items = tuple(getattr(self, attr))
            if not all(isinstance(item, kind) for item in items):
                raise ConfigError(f"schema {attr}: every item must be a {kind.__name__}")
            object.__setattr__(self, attr, items)
        if not _is_int(self.hashed_slots) or self.hashed_slots < 0:
            raise ConfigError(f"schema hashed_slots must be an int >= 0, got {self.hashed_slots!r}")
        object.__setattr__(self, "default", _check_unit(_config_float(self.default, "default")))
        fields: list[NumericField | CategoricalField | GridField] = [
            *self.numeric,
            *self.categorical,
            *self.grids,
        ]
        names = [f.name for f in fields]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigError(f"schema: field names used twice: {duplicates}")
        object.__setattr__(self, "_layout", _Layout(self))

    # --- layout ---

    @property
    def input_dim(self) -> int:
        """Length of every feature vector this schema produces."""
        return self._layout.dim

    def slices(self) -> dict[str, slice]:
        """Field name -> its slots in a feature vector, in layout order; `HASHED` is last."""
        return dict(self._layout.slices)

    def restricted_to(self, names: Collection[str]) -> FeatureSchema:
        """This schema's fields named in `names` alone, without hashed slots: each is
        featurized exactly as here, in fewer slots (a recall by a few fields ranks on them)."""
        return FeatureSchema(
            numeric=tuple(f for f in self.numeric if f.name in names),
            categorical=tuple(f for f in self.categorical if f.name in names),
            grids=tuple(f for f in self.grids if f.name in names),
            hashed_slots=0,
            default=self.default,
        )

    def slot_names(self) -> tuple[str, ...]:
        """A readable name per feature slot: `health`, `status[idle]`, `status[other]`,
        `perception[3,4]`, `_hashed[7]`; index i names slot i of every feature vector."""
        names = [f.name for f in self.numeric]
        for c in self.categorical:
            names += [f"{c.name}[{v}]" for v in (*c.values, OTHER)]
        for g in self.grids:
            names += [f"{g.name}[{r},{k}]" for r in range(g.shape[0]) for k in range(g.shape[1])]
        names += [f"{HASHED}[{i}]" for i in range(self.hashed_slots)]
        return tuple(names)

    # --- extraction ---

    def extract(self, state: object) -> FloatArray:
        """Feature vector of one state: float32, shape (input_dim,).

        Raises:
            FeatureError: the state is not a dict, or a value is unusable; the message names
                the field and the value.
        """

        def fail(_: int, error: FeatureError) -> None:
            raise error

        features: FloatArray = self._extract_each([state], fail)[0]
        return features

    def extract_batch(self, states: Iterable[object]) -> FloatArray:
        """Feature vectors of many states: float32, shape (N, input_dim); row i is extract(i).

        Raises:
            FeatureError: as `extract`, with the message starting "item <index>: ".
        """

        def fail(index: int, error: FeatureError) -> None:
            raise FeatureError(f"item {index}: {error}") from error

        return self._extract(list(states), fail)

    def extract_valid(
        self, states: Iterable[object], ignored: Counter[str] | None = None
    ) -> tuple[FloatArray, list[int], dict[int, FeatureError]]:
        """Like `extract_batch`, but bad states are set aside instead of failing the batch.

        Args:
            ignored: if given, counts per key the top-level values no slot takes: keys the
                schema does not name whose values are not numbers (or, with hashed_slots 0,
                any), None and the state's own `agent_id` left out.

        Returns:
            (features of the good states in order, their indices, {index: error} of the bad)
        """
        errors: dict[int, FeatureError] = {}

        def keep(index: int, error: FeatureError) -> None:
            errors[index] = error

        items = list(states)
        features = self._extract(items, keep, ignored)
        good = [i for i in range(len(items)) if i not in errors]
        return features[good], good, errors

    def _extract(
        self,
        states: Sequence[object],
        on_error: Callable[[int, FeatureError], None],
        ignored: Counter[str] | None = None,
    ) -> FloatArray:
        """The batch path: numpy over columns (`_Columns`). The states it declines, the bad and
        the unusual, go through the per-state path, which computes them or names the error."""
        if not states:  # a recall whose candidates all carry features: skip the column setup
            return np.zeros((0, self.input_dim), dtype=np.float32)
        columns = _Columns(self, states)
        out = columns.features(ignored)
        declined: list[int] = np.flatnonzero(columns.declined).tolist()
        if declined:

            def on_declined(j: int, error: FeatureError) -> None:
                on_error(declined[j], error)

            rows = [states[i] for i in declined]
            out[declined] = self._extract_each(rows, on_declined, ignored)
        return out

    def _extract_each(
        self,
        states: Sequence[object],
        on_error: Callable[[int, FeatureError], None],
        ignored: Counter[str] | None = None,
    ) -> FloatArray:
        """The per-state path: each state read field by field, checked as it is read."""
        layout = self._layout
        out = np.zeros((len(states), layout.dim), dtype=np.float32)
        acc = _Accumulator(len(states), layout)
        acc.ignored = ignored
        for i, state in enumerate(states):
            try:
                self._read(state, i, out, acc)
            except FeatureError as error:
                on_error(i, error)
        raw = np.array(acc.numbers, dtype=np.float64).reshape(len(out), layout.n_numeric)
        _write_numeric(out, raw, layout)
        np.put(out, acc.hot, 1.0)
        _write_hashed(out, acc.slots, acc.squashed, layout)
        return out

    def _read(self, state: object, i: int, out: FloatArray, acc: _Accumulator) -> None:
        """Check state `i` and take its values: numbers and slots into `acc`, grids into `out`."""
        if type(state) is not dict and not isinstance(state, Mapping):
            raise FeatureError(f"state must be a dict, got {_show(state)}")
        layout, get, numbers = self._layout, state.get, acc.numbers
        base = i * layout.n_numeric
        for j, name in layout.numeric_names:
            value = get(name)
            if value is not None:
                numbers[base + j] = _number(name, value)
        base = i * layout.dim
        for name, offset, index, other in layout.category_slots:
            value = get(name)
            if value is None:
                continue
            if not isinstance(value, str):
                raise FeatureError(f"field {name!r}: expected a string, got {_show(value)}")
            acc.hot.append(base + offset + index.get(value, other))
        for g, offset in layout.grids:
            value = state.get(g.name)
            if value is not None:
                out[i, offset : offset + g.width] = _fit_grid(g, value).ravel()
        if self.hashed_slots or acc.ignored is not None:
            self._read_unknown(state, i, acc)

    def _read_unknown(self, state: Mapping[Any, Any], i: int, acc: _Accumulator) -> None:
        known, k, ignored = self._layout.known, self.hashed_slots, acc.ignored
        for key, value in state.items():
            if key in known or not isinstance(key, str):
                continue
            if not k or isinstance(value, _BOOL_TYPES) or not isinstance(value, _NUMBER_TYPES):
                if ignored is not None and value is not None and key not in NOT_FEATURES:
                    ignored[key] += 1
                continue
            x = _number(key, value)
            acc.slots.append(i * k + zlib.crc32(key.encode("utf-8")) % k)
            acc.squashed.append(x / (1.0 + abs(x)))

    # --- reading back ---

    def describe(self, features: npt.ArrayLike) -> dict[str, Any]:
        """Best-effort readable state from a feature vector (extracted or reconstructed).

        Numbers come back in their ranges; a category is the strongest of its values, `OTHER`
        and "absent" (1 - sum of its slots; then the key is left out); grid cells are rounded
        to the nearest integer. Hashed slots cannot be traced back to keys and are left out.

        Raises:
            FeatureError: `features` is not a finite vector of length input_dim.
        """
        try:
            v = np.asarray(features, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise FeatureError(f"features: not a numeric vector: {_show(features)}") from e
        if v.shape != (self.input_dim,) or not np.isfinite(v).all():
            raise FeatureError(
                f"features: expected {self.input_dim} finite values, got shape {v.shape}"
            )
        v = np.clip(v, 0.0, 1.0)
        state: dict[str, Any] = {}
        for j, f in enumerate(self.numeric):
            state[f.name] = float(f.min + v[j] * (f.max - f.min))
        for c, offset, _ in self._layout.categories:
            slots = v[offset : offset + c.width]
            best = int(np.argmax(slots))
            if slots[best] >= 1.0 - slots.sum():
                state[c.name] = c.values[best] if best < len(c.values) else OTHER
        for g, offset in self._layout.grids:
            cells = g.min + v[offset : offset + g.width].reshape(g.shape) * (g.max - g.min)
            state[g.name] = np.rint(cells).astype(np.int64).tolist()
        return state

    # --- serialized forms ---

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (str, int, float, list, dict only); `from_dict` inverts it exactly."""
        return {
            "version": SCHEMA_VERSION,
            "numeric": [f.to_dict() for f in self.numeric],
            "categorical": [c.to_dict() for c in self.categorical],
            "grids": [g.to_dict() for g in self.grids],
            "hashed_slots": self.hashed_slots,
            "default": self.default,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureSchema:
        """Schema from its dict form; every key may be left out (then no such fields).

        Raises:
            ConfigError: an unknown key, a wrong version or an invalid field.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"feature schema must be a dict, got {_show(data)}")
        _check_keys(data, "feature schema", required=(), optional=_SCHEMA_KEYS)
        if data.get("version", SCHEMA_VERSION) != SCHEMA_VERSION:
            raise ConfigError(f"feature schema version {data['version']!r} is not {SCHEMA_VERSION}")
        return cls(
            numeric=tuple(NumericField.from_dict(d) for d in _entries(data, "numeric")),
            categorical=tuple(CategoricalField.from_dict(d) for d in _entries(data, "categorical")),
            grids=tuple(GridField.from_dict(d) for d in _entries(data, "grids")),
            hashed_slots=data.get("hashed_slots", DEFAULT_HASHED_SLOTS),
            default=data.get("default", DEFAULT_MISSING),
        )

    @classmethod
    def from_file(cls, path: str | Path) -> FeatureSchema:
        """Schema from a .json or .toml file holding its dict form.

        Raises:
            ConfigError: the file cannot be read or parsed, or holds an invalid schema.
        """
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix not in (".json", ".toml"):
            raise ConfigError(f"feature schema {path}: expected a .json or .toml file")
        try:
            with path.open("rb") as fh:
                data = json.load(fh) if suffix == ".json" else tomllib.load(fh)
        except (OSError, ValueError) as e:  # JSONDecodeError and TOMLDecodeError are ValueErrors
            raise ConfigError(f"feature schema {path}: {e}") from e
        return cls.from_dict(data)

    def fingerprint(self) -> str:
        """Short stable id of this schema: first 12 hex digits of sha256 of its canonical JSON."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def feature_distances(reference: npt.ArrayLike, rows: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Mean squared difference of each feature row (n, input_dim) to `reference` (input_dim,).

    Mean, not sum: on the scale of a model's reconstruction MSE; the order is L2's.
    """
    diff = np.asarray(rows, dtype=np.float64) - np.asarray(reference, dtype=np.float64)
    distances: npt.NDArray[np.float64] = np.mean(diff * diff, axis=-1)
    return distances


def default_schema() -> FeatureSchema:
    """The design's fields: five ranged numbers, three categories, an 11x11 perception grid."""
    return FeatureSchema(
        numeric=(
            NumericField("health", 0, 100),
            NumericField("energy", 0, 100),
            NumericField("resources", 0, 1000),
            NumericField("x_position", -500, 500),
            NumericField("y_position", -500, 500),
        ),
        categorical=(
            CategoricalField("agent_type", ("harvester", "explorer", "defender", "builder")),
            CategoricalField("status", ("idle", "active", "sleeping", "engaged")),
            CategoricalField(
                "current_action", ("move", "gather", "attack", "defend", "build", "rest", "none")
            ),
        ),
        grids=(GridField("perception", (11, 11), 0, 3),),
        hashed_slots=DEFAULT_HASHED_SLOTS,
    )


# --- the batch path ------------------------------------------------------------------------


class _Columns:
    """One batch of states read field by field: each field a list gathered across the states,
    converted to a numpy column in one call.

    It takes a value only where the conversion gives exactly what the per-state path gives
    (plain dicts of JSON's types). A state holding anything else, a bad value among them, is
    declined: `declined[i]` is set, its row here is left unfinished, and the per-state path
    computes it or names its error.
    """

    def __init__(self, schema: FeatureSchema, states: Sequence[object]) -> None:
        self.layout = schema._layout
        self.hashed_slots = schema.hashed_slots
        self.n = len(states)
        self.declined = np.array([type(state) is not dict for state in states], dtype=bool)
        empty: dict[str, Any] = {}
        self.rows: list[dict[str, Any]] = [
            state if type(state) is dict else empty for state in states
        ]

    def features(self, ignored: Counter[str] | None) -> FloatArray:
        """(n, input_dim) float32; counts into `ignored` only the states not declined."""
        out = np.zeros((self.n, self.layout.dim), dtype=np.float32)
        self._numeric(out)
        self._categories(out)
        for g, offset in self.layout.grids:
            self._grid(g, offset, out)
        if self.hashed_slots or ignored is not None:
            self._unknown(out, ignored)
        return out

    def _column(self, name: str) -> list[Any]:
        return list(map(dict.get, self.rows, repeat(name)))

    def _decline(self, rows: Sequence[int]) -> None:
        if rows:
            self.declined[list(rows)] = True

    def _numeric(self, out: FloatArray) -> None:
        layout = self.layout
        if not layout.n_numeric:
            return
        raw = np.empty((self.n, layout.n_numeric), dtype=np.float64)  # NaN: absent
        for j, name in layout.numeric_names:
            raw[:, j], odd = _floats(self._column(name))
            self._decline(odd)
        _write_numeric(out, raw, layout)

    def _categories(self, out: FloatArray) -> None:
        for (name, offset, _, other), codes_of in zip(
            self.layout.category_slots, self.layout.category_codes, strict=True
        ):
            values = self._column(name)
            if not set(map(type, values)) <= _PLAIN_CATEGORIES:
                odd = [i for i, value in enumerate(values) if type(value) not in _PLAIN_CATEGORIES]
                self._decline(odd)
                for i in odd:
                    values[i] = None
            codes = np.fromiter(map(codes_of.get, values, repeat(other)), np.intp, self.n)
            present = np.flatnonzero(codes >= 0)
            out[present, offset + codes[present]] = 1.0

    def _grid(self, g: GridField, offset: int, out: FloatArray) -> None:
        """Grids grouped by their shape, each group converted, scaled and fitted as one array."""
        values = self._column(g.name)
        for (rows, cols), index in self._by_shape(values).items():
            if rows > MAX_GRID_SIDE or cols > MAX_GRID_SIDE or rows * cols > MAX_GRID_CELLS:
                self._decline(index)  # before any array is built from them
                continue
            taken, cells = _stack_grids([values[i] for i in index], cols)
            if len(taken) < len(index):
                self._decline(sorted(set(index) - {index[t] for t in taken}))
            if taken:
                fitted = _fit_cells(g, cells)  # (m, *g.shape)
                out[[index[t] for t in taken], offset : offset + g.width] = fitted.reshape(
                    len(taken), g.width
                )

    def _by_shape(self, values: list[Any]) -> dict[tuple[int, int], list[int]]:
        """Positions of the grids that are lists of lists, by (rows, length of the first row);
        other values but None are declined: another form, an empty grid, not a grid."""
        if set(map(type, values)) == {list} and all(values):  # the common case, in C loops
            firsts = list(map(itemgetter(0), values))
            if set(map(type, firsts)) == {list}:
                rows, cols = set(map(len, values)), set(map(len, firsts))  # no tuple per grid
                if len(rows) == len(cols) == 1:
                    return {(rows.pop(), cols.pop()): list(range(len(values)))}
        by_shape: dict[tuple[int, int], list[int]] = {}
        for i, value in enumerate(values):
            if value is None:
                continue
            if type(value) is list and value and type(value[0]) is list:
                by_shape.setdefault((len(value), len(value[0])), []).append(i)
            else:
                self.declined[i] = True
        return by_shape

    def _unknown(self, out: FloatArray, ignored: Counter[str] | None) -> None:
        """Keys the schema does not name, in each state's order (values sharing a hashed slot
        are summed in that order, as the per-state path sums them)."""
        found = self._unknown_values()
        x, odd = _floats(found.numbers)
        self._decline([found.rows[j] for j in odd])
        if self.hashed_slots:
            with np.errstate(invalid="ignore"):  # inf/inf in declined rows, redone per state
                _write_hashed(out, found.slots, x / (1.0 + np.abs(x)), self.layout)
        if ignored is not None:
            declined = self.declined.tolist()
            ignored.update(key for i, key in found.unused if not declined[i])

    def _unknown_values(self) -> _UnknownValues:
        """The unknown keys' values sorted in one pass over the states that have some: the
        numbers for the hashed slots, the keys no slot takes. Declines the states holding keys
        or values only the per-state path can judge."""
        known, k = self.layout.known, self.hashed_slots
        rows: list[int] = []
        keys: list[str] = []
        numbers: list[Any] = []
        unused: list[tuple[int, str]] = []
        for i in self._with_unknown_keys():
            for key, value in self.rows[i].items():
                if key in known:
                    continue
                if type(key) is not str:
                    if isinstance(key, str):  # a str subclass, hashed by the per-state path
                        self.declined[i] = True
                    continue
                kind = type(value)
                if k and (kind is float or kind is int):
                    rows.append(i)
                    keys.append(key)
                    numbers.append(value)
                elif kind in _PLAIN_UNUSED or (not k and kind in _PLAIN_NUMBERS):
                    if value is not None and key not in NOT_FEATURES:
                        unused.append((i, key))
                else:  # numpy scalars and other types: the per-state path judges them
                    self.declined[i] = True
        slot_of = {key: zlib.crc32(key.encode("utf-8")) % k for key in set(keys)}
        slots = np.fromiter(map(slot_of.__getitem__, keys), np.intp, len(keys))
        return _UnknownValues(rows, np.array(rows, dtype=np.intp) * k + slots, numbers, unused)

    def _with_unknown_keys(self) -> Sequence[int]:
        """The states with keys the schema does not name, leaving out only `NOT_FEATURES`
        keys when no state gives one a number (then no slot takes it and it is not counted)."""
        known = self.layout.known
        if all(set(map(type, self._column(key))) <= _PLAIN_CATEGORIES for key in NOT_FEATURES):
            known = known | NOT_FEATURES
        return [i for i, state in enumerate(self.rows) if not known.issuperset(state)]


_PLAIN_UNUSED = frozenset({str, bool, list, dict, type(None)})
"""Types of unknown keys' values that no slot takes and the batch path counts itself."""


@dataclass(frozen=True)
class _UnknownValues:
    """A batch's values of keys the schema does not name (`_Columns._unknown_values`)."""

    rows: list[int]
    """Per number: its state."""
    slots: npt.NDArray[np.intp]
    """Per number: its hashed slot in the flattened (n, hashed slots) block."""
    numbers: list[Any]
    """The values a hashed slot takes, in each state's key order."""
    unused: list[tuple[int, str]]
    """(state, key) of the values no slot takes: the ignored keys, where the state is kept."""


def _floats(values: list[Any]) -> tuple[npt.NDArray[np.float64], list[int]]:
    """Plain numbers (and None, as NaN) in one float64 array, and the positions the per-state
    path must judge: values of other types, NaN, inf and numbers beyond +-2**53 (converted
    there one by one, refused if too large for a float)."""
    odd: list[int] = []
    if not set(map(type, values)) <= _PLAIN_NUMBERS:
        odd = [j for j, value in enumerate(values) if type(value) not in _PLAIN_NUMBERS]
        values = [None if type(value) not in _PLAIN_NUMBERS else value for value in values]
    try:
        column = np.array(values, dtype=np.float64)
    except OverflowError:  # an int beyond any float
        big = [j for j, v in enumerate(values) if type(v) is int and abs(v) >= _EXACT_INT]
        odd += big
        values = [None if type(v) is int and abs(v) >= _EXACT_INT else v for v in values]
        column = np.array(values, dtype=np.float64)
    unusual = np.flatnonzero(~(np.abs(column) < _EXACT_INT)).tolist()  # NaN, inf, huge
    odd += [j for j in unusual if values[j] is not None]
    return column, odd


def _stack_grids(grids: list[list[Any]], cols: int) -> tuple[list[int], npt.NDArray[Any]]:
    """Grids of one row count (lists of rows, the first `cols` long) as one (m, rows, cols)
    array, and the positions of those in it: the grids that the per-state path reads as the
    same numbers. The common case, cells that are all ints, is read in bulk (`_int_grids`)."""
    codes = _int_grids(grids, len(grids[0]), cols)
    if codes is not None:
        return list(range(len(grids))), codes
    taken: list[int] = []
    arrays: list[npt.NDArray[np.float64]] = []
    for position, grid in enumerate(grids):
        try:
            array = np.asarray(grid)
        except ValueError:  # ragged: the per-state path says where
            continue
        if array.shape != (len(grid), cols) or array.dtype.kind not in "biuf":
            continue
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            continue
        taken.append(position)
        arrays.append(array.astype(np.float64))  # as the per-state path converts each grid
    return taken, np.stack(arrays) if arrays else np.zeros((0, len(grids[0]), cols))


_MARSHALLED = np.dtype([("tag", "u1"), ("value", "<i4")])
"""What marshal (version 2) writes for a list's header (tag "[", its length) and for an int
within int32 (tag "i", its value): 5 bytes each, so nested lists of such ints are a flat array
of these; other types are written otherwise (a bool as one byte) or refused."""


def _int_grids(grids: list[Any], rows: int, cols: int) -> npt.NDArray[np.int32] | None:
    """`grids` as one (m, rows, cols) array if each is a list of `rows` lists of `cols` ints
    (exactly these types, each within int32), else None.

    marshal checks every type in one pass in C, cheaper than a Python-level check per cell:
    the grids' encoding must match that of a grid of zeros repeated, tag for tag and header
    for header, and the values are then read from it."""
    try:
        encoded = marshal.dumps(grids, 2)  # 2: no back-references, a fixed layout
    except ValueError:  # a type marshal cannot write
        return None
    zeros = np.frombuffer(marshal.dumps([[0] * cols] * rows, 2), _MARSHALLED)
    if len(encoded) != _MARSHALLED.itemsize * (1 + len(grids) * len(zeros)):
        return None
    items = np.frombuffer(encoded, _MARSHALLED, offset=_MARSHALLED.itemsize)  # past the list
    items = items.reshape(len(grids), len(zeros))
    headers = zeros["tag"] == zeros["tag"][0]
    if not (items["tag"] == zeros["tag"]).all():
        return None
    if not (items["value"][:, headers] == zeros["value"][headers]).all():
        return None
    by_row = items[:, 1:].reshape(len(grids), rows, 1 + cols)  # a row: its header, its cells
    cells: npt.NDArray[np.int32] = by_row["value"][:, :, 1:]
    return cells


def _write_numeric(out: FloatArray, raw: npt.NDArray[np.float64], layout: _Layout) -> None:
    """Numeric block of `out` from raw values (n, n_numeric), NaN where absent."""
    if not layout.n_numeric:
        return
    scaled = np.clip((raw - layout.num_min) / layout.num_span, 0.0, 1.0)
    out[:, : layout.n_numeric] = np.where(np.isnan(raw), layout.num_default, scaled)


def _write_hashed(out: FloatArray, slots: Any, squashed: Any, layout: _Layout) -> None:
    """Hashed block of `out`: per slot the mean of the squashed values in it, summed in order."""
    k = layout.dim - layout.hashed_offset
    if not k:
        return
    size = len(out) * k
    sums = np.bincount(slots, weights=squashed, minlength=size)
    counts = np.bincount(slots, minlength=size)
    means = sums / np.maximum(counts, 1)  # an empty slot: mean 0 -> 0.5
    out[:, layout.hashed_offset :] = ((means + 1.0) / 2.0).reshape(len(out), k)


# --- value checks --------------------------------------------------------------------------


def _number(name: str, value: object) -> float:
    """`value` as a finite float, or a FeatureError naming `name` and the value."""
    if type(value) is float and math.isfinite(value):  # the common cases first, same result
        return value
    if type(value) is int and -_EXACT_INT < value < _EXACT_INT:
        return float(value)
    if isinstance(value, _BOOL_TYPES):
        return float(value)
    if not isinstance(value, _NUMBER_TYPES):
        raise FeatureError(f"field {name!r}: expected a number, got {_show(value)}")
    try:
        x = float(value)
    except OverflowError as e:
        raise FeatureError(f"field {name!r}: {_show(value)} is too large for a float") from e
    if not math.isfinite(x):
        raise FeatureError(f"field {name!r}: {_show(value)} is not a finite number")
    return x


def _fit_grid(g: GridField, value: object) -> npt.NDArray[np.float64]:
    """A grid value checked, normalized to [0, 1] and fitted to `g.shape`."""
    cells = _grid_cells(g, value)
    if cells.size and cells.dtype.kind == "f" and not np.isfinite(cells).all():
        r, c = np.argwhere(~np.isfinite(cells))[0]
        raise FeatureError(f"field {g.name!r}: grid cell [{r}][{c}] is {cells[r, c]!r}")
    return _fit_cells(g, cells)


def _fit_cells(g: GridField, cells: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    """Checked cells (..., rows, cols), one grid or a stack of them, normalized to [0, 1] and
    fitted to `g.shape`: the same arithmetic per grid either way."""
    scaled = np.clip((cells.astype(np.float64) - g.min) / (g.max - g.min), 0.0, 1.0)
    for axis, size in zip((-2, -1), g.shape, strict=True):
        scaled = _fit_axis(scaled, axis, size, g.pool)
    return scaled


def _grid_cells(g: GridField, value: object) -> npt.NDArray[Any]:
    """A grid value as a 2-D numeric array; size limits are checked before it is built."""
    if isinstance(value, Mapping) and "grid" in value:
        value = value["grid"]  # the design's {"grid": [[...]]} form
    if isinstance(value, np.ndarray):
        if value.ndim == 2:
            _check_grid_size(g, value.shape[0], value.shape[1])
        cells = value
    elif isinstance(value, (list, tuple)):
        _check_grid_rows(g, value)
        if not value:
            return np.zeros((0, 0))  # nothing perceived: padded to all zeros
        try:
            cells = np.asarray(value)
        except ValueError as e:  # mixed rows and scalars, or deeper ragged nesting
            raise FeatureError(f"field {g.name!r}: ragged grid {_show(value)}") from e
    else:
        raise FeatureError(
            f"field {g.name!r}: expected a 2-D grid (list of rows), got {_show(value)}"
        )
    if cells.ndim != 2:
        raise FeatureError(
            f"field {g.name!r}: expected a 2-D grid, got {cells.ndim}-D {cells.shape}"
        )
    if cells.dtype.kind not in "biuf":
        raise FeatureError(f"field {g.name!r}: grid cells must be numbers, got {_show(value)}")
    return cells


def _check_grid_rows(g: GridField, rows: Sequence[Any]) -> None:
    """Refuse a nested-list grid that is too big, ragged or not 2-D, in O(rows)."""
    if not rows:
        return
    first = rows[0]
    if not _is_row(first):
        raise FeatureError(
            f"field {g.name!r}: expected a 2-D grid (a list of rows), got a 1-D {_show(rows)}"
        )
    width = len(first)
    _check_grid_size(g, len(rows), width)
    for r, row in enumerate(rows):
        if _is_row(row) and len(row) != width:
            raise FeatureError(
                f"field {g.name!r}: ragged grid: row {r} has {len(row)} cells, row 0 has {width}"
            )
    if width and _is_row(first[0]):
        raise FeatureError(f"field {g.name!r}: expected a 2-D grid, got nested lists in its cells")


def _is_row(value: object) -> bool:
    return isinstance(value, (list, tuple)) or (isinstance(value, np.ndarray) and value.ndim > 0)


def _check_grid_size(g: GridField, rows: int, cols: int) -> None:
    if rows > MAX_GRID_SIDE or cols > MAX_GRID_SIDE or rows * cols > MAX_GRID_CELLS:
        raise FeatureError(
            f"field {g.name!r}: grid {rows}x{cols} exceeds the limit "
            f"({MAX_GRID_SIDE} per side, {MAX_GRID_CELLS} cells)"
        )


def _fit_axis(
    cells: npt.NDArray[np.float64], axis: int, size: int, pool: str
) -> npt.NDArray[np.float64]:
    """Pool (n > size) over `size` near-equal blocks or pad (n < size), centered, with 0;
    `axis` is -2 (rows) or -1 (columns) of one grid or of a stack of grids."""
    n = cells.shape[axis]
    if n > size:
        starts = np.arange(size) * n // size  # strictly increasing since n > size
        if pool == "max":
            return np.maximum.reduceat(cells, starts, axis=axis)
        counts = np.diff(np.append(starts, n)).astype(np.float64)
        sums = np.add.reduceat(cells, starts, axis=axis)
        return sums / (counts[:, None] if axis == -2 else counts)
    if n < size:
        before = (size - n) // 2
        pad = [(0, 0)] * cells.ndim
        pad[axis] = (before, size - n - before)
        return np.pad(cells, pad, constant_values=0.0)
    return cells


# --- config checks -------------------------------------------------------------------------


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _config_float(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where}: expected a finite number, got {_show(value)}")
    return float(value)


def _check_unit(value: float, where: str = "default") -> float:
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{where}: a normalized default must lie in [0, 1], got {value}")
    return value


def _check_name(name: object) -> None:
    if not isinstance(name, str) or not name:
        raise ConfigError(f"field name must be a non-empty string, got {_show(name)}")
    if name == HASHED:
        raise ConfigError(f"field name {HASHED!r} is reserved for the hashed slots")


def _check_keys(data: object, where: str, required: Sequence[str], optional: Sequence[str]) -> None:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a dict, got {_show(data)}")
    unknown = sorted(set(data) - set(required) - set(optional))
    missing = [k for k in required if k not in data]
    if unknown or missing:
        name = data.get("name", "?")
        raise ConfigError(
            f"{where} {name!r}: unknown keys {unknown}, missing keys {missing}; "
            f"allowed: {[*required, *optional]}"
        )


def _entries(data: Mapping[str, Any], key: str) -> list[Any]:
    entries = data.get(key, [])
    if not isinstance(entries, list):
        raise ConfigError(f"feature schema {key!r}: expected a list, got {_show(entries)}")
    return entries


DEFAULT_SCHEMA = default_schema()
"""The schema used when none is configured; input_dim 152."""
