"""Plain deep copies of container values, as changes store them."""

from __future__ import annotations

from typing import Any

__all__ = ("SCALARS", "plain")

#: Types whose values are immutable and stored in changes as they are.
SCALARS = frozenset({str, int, float, bool, type(None), bytes, complex})


def plain(value: Any) -> Any:
    """``value`` with every dict, list and set in it copied as a builtin one.

    Changes store container values this way, so that a value recorded once never
    changes afterwards (a live tracked child would). Other objects are kept as they are.
    """
    kind = type(value)
    if kind in SCALARS:
        return value
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain(item) for item in value]
    if isinstance(value, set):
        return set(value)  # elements are hashable, so immutable enough
    if kind is tuple:
        return tuple(plain(item) for item in value)
    return value
