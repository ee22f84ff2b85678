"""``session.track(obj)``: a tracked object's changes journaled as undoable operations.

While the session is open, every change of the object becomes a ``tracking.change``
operation (journaled when the session next writes to the journal, and at its end, in
the order the changes happened). The built-in handler reverts one by applying the
change's inverse to the object, which it finds by name in this process: tracked
objects live in memory, so their undo runs in the process that owns them.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._base import Tracked
from ._change import Change

if TYPE_CHECKING:
    from ..journal._records import OperationRecord
    from ..journal._registry import OperationRegistry

__all__ = ("OP_TYPE", "find_tracked", "payload_of", "register_tracking_handlers", "remember")

OP_TYPE = "tracking.change"

_live: weakref.WeakValueDictionary[str, Tracked] = weakref.WeakValueDictionary()


def remember(obj: Tracked, name: str | None) -> str:
    """Register ``obj`` for undo under ``name`` (a generated one when None)."""
    if not isinstance(obj, Tracked):
        raise TypeError(
            f"session.track() needs a TrackedDict, TrackedList, TrackedSet or TrackedAttr, "
            f"not {type(obj).__name__}; wrap it first, e.g. TrackedDict(value)"
        )
    if name is None:
        name = f"{type(obj).__name__}-{id(obj):x}"
    elif not name or type(name) is not str:
        raise ValueError(f"the name of a tracked object must be a non-empty str, not {name!r}")
    known = _live.get(name)
    if known is not None and known is not obj:
        raise ValueError(f"another object is already tracked as {name!r}; pick another name")
    _live[name] = obj
    return name


def find_tracked(name: str) -> Tracked | None:
    """The live object registered as ``name`` in this process, if any."""
    return _live.get(name)


def payload_of(name: str, change: Change) -> dict[str, Any]:
    """The journal payload of one change (its values must be plain JSON)."""
    return {
        "object": name,
        "seq": change.seq,
        "path": list(change.path),
        "action": change.action,
        "kind": change.kind,
        "old": _jsonable(change.old),
        "new": _jsonable(change.new),
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)  # a set element's undo needs only its value
    return value


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
    obj = find_tracked(name)
    if obj is None:
        raise LookupError(
            f"the tracked object {name!r} is not alive in this process (tracked objects "
            "live in memory): undo this session in the process that tracked it, before "
            "the object is gone"
        )
    change = _change_of(op.payload)
    if change.kind == "set" and change.action == "assign":
        change = change._replace(old=set(change.old), new=set(change.new))
    obj.apply_change(change.inverse())


def register_tracking_handlers(registry: OperationRegistry) -> None:
    """Register the undo handler of ``tracking.change`` operations."""
    handler: Callable[..., Any] = _undo
    registry.handler(OP_TYPE)(handler)
