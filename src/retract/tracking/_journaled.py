"""``session.track(obj)``: a tracked object's changes journaled as undoable operations.

While the session is open, every change of the object becomes a ``tracking.change``
operation (journaled when the session next writes to the journal, and at its end, in
the order the changes happened). The built-in handler reverts one by applying the
change's inverse to the object, which it finds by name in this process: tracked
objects live in memory, so their undo runs in the process that owns them.
"""

from __future__ import annotations

import errno
import uuid
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._errors import DriftError, UndoSkipped
from ..fs._handlers import drift_policy
from ._base import Tracked
from ._change import Change

if TYPE_CHECKING:
    from ..journal._records import OperationRecord
    from ..journal._registry import OperationRegistry

__all__ = ("OP_TYPE", "find_tracked", "payload_of", "register_tracking_handlers", "remember")

OP_TYPE = "tracking.change"

_live: weakref.WeakValueDictionary[str, Tracked] = weakref.WeakValueDictionary()


def remember(obj: Tracked, name: str | None) -> tuple[str, str]:
    """Register ``obj`` for undo; return its token and its label."""
    if not isinstance(obj, Tracked):
        raise TypeError(
            f"session.track() needs a TrackedDict, TrackedList, TrackedSet or TrackedAttr, "
            f"not {type(obj).__name__}; wrap it first, e.g. TrackedDict(value)"
        )
    if name is not None and (not name or type(name) is not str):
        raise ValueError(f"the name of a tracked object must be a non-empty str, not {name!r}")
    token = uuid.uuid4().hex
    _live[token] = obj
    return token, name if name is not None else type(obj).__name__


def find_tracked(token: str) -> Tracked | None:
    """The live object registered under ``token`` in this process, if any."""
    return _live.get(token)


def payload_of(token: str, label: str, change: Change) -> dict[str, Any]:
    """The journal payload of one change (its values must be plain JSON)."""
    return {
        "object": label,
        "token": token,
        "seq": change.seq,
        "path": list(change.path),
        "action": change.action,
        "kind": change.kind,
        "old": _normal(change.old),
        "new": _normal(change.new),
    }


def _change_of(payload: dict[str, Any]) -> Change:
    return Change(
        payload["seq"],
        tuple(payload["path"]),
        payload["action"],
        payload["old"],
        payload["new"],
        None,
        0.0,
        payload["kind"],
    )


async def _undo(op: OperationRecord) -> None:
    name = op.payload["object"]
    obj = find_tracked(op.payload["token"])
    if obj is None:
        raise LookupError(
            f"the tracked object {name!r} is not alive in this process (tracked objects "
            "live in memory): undo this session in the process that tracked it, before "
            "the object is gone"
        )
    change = _change_of(op.payload)
    drifted = _drift(obj._root_tracker()[0], change)
    if drifted is not None:
        _refuse_or_skip(name, change, drifted)
    if change.kind == "set" and change.action == "assign":
        change = change._replace(old=set(change.old), new=set(change.new))
    obj.apply_change(change.inverse())


def _normal(value: Any) -> Any:
    """``value`` as its journal payload holds it (JSON: lists for tuples and sets).

    Sets become sorted lists (by repr: their elements need not be comparable), also
    inside other values; drift checks compare live values through the same function.
    """
    if isinstance(value, dict):
        return {key: _normal(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_normal(item) for item in value]
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)
    return value


def _drift(root: Any, change: Change) -> str | None:
    """What differs from the state right after ``change``, or None if nothing does."""
    from ._apply import container_at  # noqa: PLC0415  (it imports the containers)

    action = change.action
    path = change.path if action == "assign" else change.path[:-1]
    try:
        target = container_at(root, path)
    except (LookupError, TypeError, AttributeError):
        return "its container is no longer there"
    if action == "assign":
        return None if _normal(target) == change.new else "the container's content changed"
    key = change.path[-1]
    if change.kind == "set":
        present = key in target
        expected = action == "add"
        return None if present == expected else "the element was added or removed since"
    if change.kind == "object":
        current = getattr(target, key, _GONE)
    elif change.kind == "list":
        if action == "remove":
            return None  # the index now holds the next item: nothing to compare
        if action == "splice":
            current = target[key : key + len(change.new)]
        else:
            current = target[key] if -len(target) <= key < len(target) else _GONE
    else:
        current = target.get(key, _GONE)
    if action == "remove":
        return None if current is _GONE else "the key is there again"
    if current is _GONE:
        return "the value is gone"
    return None if _normal(current) == change.new else "the value changed"


_GONE: Any = object()


def _refuse_or_skip(name: str, change: Change, what: str) -> None:
    found = (
        f"tracked object {name!r} changed at {list(change.path)!r} after change "
        f"#{change.seq}: {what}"
    )
    policy = drift_policy.get()
    if policy == "force":
        return
    if policy == "skip":
        raise UndoSkipped(f"{found}; left as it is (drift='skip')")
    raise DriftError(
        errno.ESTALE,
        f"{found}. Undo refused and left it untouched; undo again with drift='force' to "
        "revert it anyway, or drift='skip' to leave it",
        None,
        [what],
    )


def register_tracking_handlers(registry: OperationRegistry) -> None:
    """Register the undo handler of ``tracking.change`` operations."""
    handler: Callable[..., Any] = _undo
    registry.handler(OP_TYPE)(handler)
