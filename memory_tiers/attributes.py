"""State fields as record attributes, so recall can filter on what an agent knows.

Every record, in every tier, carries the schema's numeric fields as NUMERIC attributes and its
categorical fields as TAG attributes, with the values the state gave (raw units, not the
schema's normalization: a filter says `health` below 20, as agents send it). A field the state
left out, or gave as something the index cannot hold (a number that is not finite, a category
with control characters), is left out of the record: filters on it never match that memory.
Consolidation copies the attributes down, so IM and LTM filter as STM does even where the raw
state is dropped.

Attribute names are the field names behind a prefix (`s_health`), so they never collide with the
record's own fields; a field name that is not a plain identifier gets a stable hash suffix.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import reduce
from typing import Any

from redisvl.query.filter import FilterExpression, Num, Tag

from .features import FeatureSchema
from .protocol import tag_problem

PREFIX = "s_"
"""Prefix of every state attribute's hash field and index attribute."""

Value = float | str

KIND = "kind"
"""Record attribute (TAG) holding the entry's kind, `state` or `action`: `recall(kinds=...)`."""


@dataclass(frozen=True)
class StateAttribute:
    """One schema field as a record attribute."""

    field: str
    """The field's name in agents' states."""
    name: str
    """The record's hash field and the index attribute."""
    numeric: bool
    """NUMERIC (a numeric field) or TAG (a categorical one)."""


KIND_ATTRIBUTE = StateAttribute(KIND, KIND, numeric=False)
"""The entry's kind as an attribute: added to indexes and copied down the tiers as the state
fields are; not a state field, so `where` does not take it."""


def state_attributes(schema: FeatureSchema) -> tuple[StateAttribute, ...]:
    """The schema's numeric and categorical fields as record attributes, in schema order."""
    numeric = [StateAttribute(f.name, attribute_name(f.name), True) for f in schema.numeric]
    tags = [StateAttribute(c.name, attribute_name(c.name), False) for c in schema.categorical]
    return (*numeric, *tags)


def attribute_name(field: str) -> str:
    """`s_<field>`; a field name with characters other than [A-Za-z0-9_] gets them replaced and
    a hash of the name appended, so two fields never share an attribute."""
    safe = re.sub(r"[^A-Za-z0-9_]", "_", field)
    if safe == field:
        return PREFIX + field
    return f"{PREFIX}{safe}_{hashlib.sha1(field.encode()).hexdigest()[:8]}"


def attribute_values(
    attributes: Sequence[StateAttribute], state: Mapping[str, Any]
) -> dict[str, Value]:
    """The attributes one state gives: its finite numbers and its indexable category strings."""
    values: dict[str, Value] = {}
    for attribute in attributes:
        value = state.get(attribute.field)
        if attribute.numeric:
            if isinstance(value, int | float) and _is_number(value) and math.isfinite(value):
                values[attribute.name] = float(value)
        elif isinstance(value, str) and tag_problem(value) is None:
            values[attribute.name] = value
    return values


def where_filter(
    attributes: Sequence[StateAttribute], where: Mapping[str, Any]
) -> FilterExpression | None:
    """A redisvl filter from `where`: field -> (low, high) for a numeric field (either end None
    for open; inclusive), or a value or a list of values for a categorical one (any of them).

    Raises:
        ValueError: an unknown field, a bad range or a bad value, naming the field.
    """
    if not isinstance(where, Mapping):
        raise ValueError(f"where must be a mapping of field -> condition, got {where!r}")
    by_field = {a.field: a for a in attributes}
    parts = []
    for field, condition in where.items():
        attribute = by_field.get(field)
        if attribute is None:
            known = ", ".join(sorted(by_field)) or "none"
            raise ValueError(f"where: {field!r} is not a filterable field (filterable: {known})")
        if attribute.numeric:
            parts.append(_numeric_condition(attribute, condition))
        else:
            parts.append(_category_condition(attribute, condition))
    return reduce(lambda a, b: a & b, parts) if parts else None


def _numeric_condition(attribute: StateAttribute, condition: Any) -> FilterExpression:
    if isinstance(condition, str) or not isinstance(condition, Sequence) or len(condition) != 2:
        raise ValueError(
            f"where: {attribute.field!r} takes a (low, high) range, either end None, "
            f"got {condition!r}"
        )
    low, high = condition
    for end in (low, high):
        if end is not None and not (_is_number(end) and math.isfinite(end)):
            raise ValueError(
                f"where: {attribute.field!r} range ends must be finite numbers or None"
            )
    if low is not None and high is not None and low > high:
        raise ValueError(f"where: {attribute.field!r} range ({low}, {high}) has low above high")
    number = Num(attribute.name)
    if low is None and high is None:
        return number >= -math.inf
    if low is None:
        return number <= high
    if high is None:
        return number >= low
    return number.between(low, high)


def _category_condition(attribute: StateAttribute, condition: Any) -> FilterExpression:
    values = [condition] if isinstance(condition, str) else condition
    if not isinstance(values, list | tuple | set | frozenset) or not values:
        raise ValueError(
            f"where: {attribute.field!r} takes a value or a non-empty list of values, "
            f"got {condition!r}"
        )
    for value in values:
        problem = tag_problem(value) if isinstance(value, str) else "is not a string"
        if problem:
            raise ValueError(f"where: {attribute.field!r} value {value!r} {problem}")
    return Tag(attribute.name) == sorted(values)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
