"""How a change is written out: a flat JSON object per change."""

from __future__ import annotations

import json
import math
from typing import Any

from ..tracking import Change

__all__ = ("change_record", "dumps", "json_default")


def change_record(change: Change, source: str) -> dict[str, Any]:
    """``change`` as a dict of JSON-ready fields, tagged with the tree's ``source``.

    ``path`` becomes a list; ``old`` and ``new`` stay as recorded (plain values) and
    are made JSON by :func:`json_default` when dumped. Snapshots and stacks, when
    captured, are left out: they are for debugging in the process, not for export.
    """
    return {
        "source": source,
        "seq": change.seq,
        "path": list(change.path),
        "action": change.action,
        "old": change.old,
        "new": change.new,
        "actor": change.actor,
        "timestamp": change.timestamp,
        "kind": change.kind,
    }


def json_default(value: Any) -> Any:
    """JSON for what ``json`` cannot write: sets and tuples as lists, the rest as repr."""
    if isinstance(value, set | frozenset):
        try:
            return sorted(value)
        except TypeError:  # mixed types: any stable order will do
            return sorted(value, key=repr)
    if isinstance(value, tuple):
        return list(value)
    return repr(value)


def dumps(record: dict[str, Any]) -> str:
    """One compact JSON line (no newline), keys in a fixed order.

    A value JSON cannot hold even with :func:`json_default` (a dict keyed by tuples, a
    NaN) is written with such keys as their ``repr`` and NaN as null, not refused.
    """
    try:
        return _encode(record)
    except (TypeError, ValueError):
        return _encode(_sanitize(record))


# One encoder, made once: json.dumps with any non-default argument makes a new
# JSONEncoder on every call, which costs more than encoding a small record.
_encode = json.JSONEncoder(
    default=json_default, separators=(",", ":"), ensure_ascii=False, allow_nan=False
).encode


def _sanitize(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            key if isinstance(key, str | int | float | bool) or key is None else repr(key): (
                _sanitize(item)
            )
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [_sanitize(item) for item in value]
    if isinstance(value, set | frozenset):
        return _sanitize(json_default(value))
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
