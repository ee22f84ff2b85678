"""``Change``: one recorded mutation of a tracked container, and the actor that made it."""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal, NamedTuple

__all__ = (
    "Action",
    "Change",
    "Kind",
    "current_actor",
    "json_pointer",
    "tracking_actor",
)

Action = Literal["add", "replace", "remove", "splice", "assign"]
Kind = Literal["dict", "list", "set", "object"]

_actor: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "retract_tracking_actor", default=None
)
#: The actor of the running task (fast path for the containers).
current_actor = _actor.get


@contextmanager
def tracking_actor(name: str | None) -> Iterator[None]:
    """Attribute the changes made inside the block to ``name``.

    The actor lives in a context variable: each asyncio task (and each thread) has its
    own, so concurrent tasks never see each other's actor.
    """
    token = _actor.set(name)
    try:
        yield
    finally:
        _actor.reset(token)


class Change(NamedTuple):
    """One mutation of a tracked container (immutable; a tuple underneath).

    :ivar seq: 1, 2, 3... per root container, in the order the mutations happened.
    :ivar path: keys and indices from the root to what changed: for ``add``, ``replace``
        and ``remove`` it ends with the dict key, list index or set element; for
        ``splice`` with the start index; for ``assign`` it is the container's own path.
    :ivar action: ``"add"`` (a key, item or element that was not there), ``"replace"``
        (a key or index overwritten), ``"remove"``, ``"splice"`` (a contiguous list
        slice replaced: ``old`` and ``new`` are lists) or ``"assign"`` (the whole
        content of a container replaced: sort, reverse, ``clear``, ``*=``...).
    :ivar old: the value before (None for ``add``); containers as plain deep copies.
    :ivar new: the value after (None for ``remove``); containers as plain deep copies.
    :ivar actor: set with :func:`tracking_actor`, else None.
    :ivar timestamp: ``time.time()`` of the mutation.
    :ivar kind: what the changed container is: ``"dict"``, ``"list"``, ``"set"`` or
        ``"object"`` (a :class:`TrackedAttr`, whose path ends with the attribute name).
    :ivar snapshot: with ``capture_snapshots=True``, the root's content after the change.
    :ivar stack: with ``capture_stack=True``, where the mutation was made.
    """

    seq: int
    path: tuple[Any, ...]
    action: Action
    old: Any
    new: Any
    actor: str | None
    timestamp: float
    kind: Kind = "dict"
    snapshot: Any = None
    stack: tuple[str, ...] | None = None

    def inverse(self) -> Change:
        """The change that undoes this one (same path; old and new swapped)."""
        action: Action = self.action
        if action == "add":
            action = "remove"
        elif action == "remove":
            action = "add"
        return self._replace(action=action, old=self.new, new=self.old)

    def to_json_patch(self) -> list[dict[str, Any]]:
        """RFC 6902 operations that make the same change to a JSON copy of the root.

        :raises TypeError: the change is about a set element (sets have no JSON form).
        """
        if self.kind == "set":
            raise TypeError("a set has no JSON Patch form (JSON has no sets)")
        if self.action == "assign":
            value = self.new
            return [{"op": "replace", "path": json_pointer(self.path), "value": value}]
        if self.action == "splice":
            *prefix, start = self.path
            ops: list[dict[str, Any]] = [
                {"op": "remove", "path": json_pointer((*prefix, start))} for _ in self.old
            ]
            ops += [
                {"op": "add", "path": json_pointer((*prefix, start + offset)), "value": item}
                for offset, item in enumerate(self.new)
            ]
            return ops
        pointer = json_pointer(self.path)
        if self.action == "remove":
            return [{"op": "remove", "path": pointer}]
        return [{"op": self.action, "path": pointer, "value": self.new}]


def json_pointer(path: tuple[Any, ...]) -> str:
    """The RFC 6901 pointer of ``path`` (``()`` is ``""``, the whole document)."""
    return "".join("/" + str(part).replace("~", "~0").replace("/", "~1") for part in path)
