"""Reading redis-py replies, which are bytes or str depending on how the client decodes."""

from __future__ import annotations

from typing import Any


def text(value: Any) -> str:
    """A reply value as str: bytes decoded as UTF-8 (bad bytes replaced), anything else str()."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
