"""TrackedDict: a dict that records every change."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any, Self, TypeVar

from ._base import MISSING, Tracked, detach
from ._change import Action, Kind, current_actor
from ._plain import SCALARS, plain
from ._tracker import DEFAULT_HISTORY

__all__ = ("TrackedDict",)

_get = dict.get
_set = dict.__setitem__
_now = time.time

K = TypeVar("K")
V = TypeVar("V")


class TrackedDict(Tracked, dict[K, V]):
    """A real ``dict`` subclass whose every mutation is recorded as a :class:`Change`.

    Every mutating method returns and raises exactly what ``dict``'s does, and leaves
    the dict as ``dict`` would. Plain dicts, lists and sets stored in it become tracked
    children (copies), whose changes are recorded with their path from here.

    :param history: changes kept (None: unbounded).
    :param capture_snapshots: store the whole tree's content with every change.
    :param capture_stack: store where each mutation was made.
    """

    __slots__ = ("__weakref__", "_key", "_locked", "_parent", "_tracker")
    _kind: Kind = "dict"

    def __init__(
        self,
        *args: Any,
        history: int | None = DEFAULT_HISTORY,
        capture_snapshots: bool = False,
        capture_stack: bool = False,
        **kwargs: Any,
    ) -> None:
        dict.__init__(self, *args, **kwargs)
        self._setup(history, capture_snapshots, capture_stack)
        for key, value in dict.items(self):
            dict.__setitem__(self, key, self._adopt(key, value))

    @classmethod
    def _nested(cls, value: Mapping[Any, Any], parent: Tracked, key: Any) -> Self:
        child = cls.__new__(cls)
        dict.update(child, value)
        child._parent, child._key, child._locked, child._tracker = parent, key, False, None
        for inner_key, inner in dict.items(child):
            dict.__setitem__(child, inner_key, child._adopt(inner_key, inner))
        return child

    def __repr__(self) -> str:
        return f"TrackedDict({dict.__repr__(self)})"

    def __reduce__(self) -> Any:
        # A copy (copy.copy, deepcopy, pickle) is a new root with its own history.
        return (type(self), (plain(self),))

    def __setitem__(self, key: K, value: V) -> None:
        if self._locked:
            self._refuse_locked()
        if type(value) in SCALARS:
            new = value
        else:
            if isinstance(value, dict | list | set):
                value = self._adopt(key, value)
            new = plain(value)
        old = _get(self, key, MISSING)
        _set(self, key, value)
        if old is MISSING:
            action: Action = "add"
            old = None
        else:
            action = "replace"
            if type(old) not in SCALARS:
                detach(old)
                old = plain(old)
        tracker = self._tracker  # only a root has one
        if tracker is None or not tracker.direct:
            self._record((key,), action, old, new)
            return
        # Tracker.record, inlined for the most common write (no capture, no observer).
        tracker.seq = seq = tracker.seq + 1
        raw = (seq, (key,), action, old, new, current_actor(), _now(), "dict", None, None)
        tracker.tail.append(raw)
        if not seq & 63:  # every CHUNK (64) changes
            tracker.seal()
        feed = tracker.feed
        if feed is not None:
            feed(raw)
        if tracker.sleepers:
            tracker.wake()

    def __delitem__(self, key: K) -> None:
        if self._locked:
            self._refuse_locked()
        old = dict.__getitem__(self, key)
        dict.__delitem__(self, key)
        detach(old)
        self._record((key,), "remove", plain(old), None)

    def pop(self, key: K, *default: Any) -> Any:
        """Like ``dict.pop``; a removal is recorded."""
        if self._locked:
            self._refuse_locked()
        if key not in self or len(default) > 1:
            # the default, or dict's own error (KeyError, or too many arguments)
            return dict.pop(self, key, *default)
        value = dict.pop(self, key)
        detach(value)
        self._record((key,), "remove", plain(value), None)
        return value

    def popitem(self) -> tuple[K, V]:
        """Like ``dict.popitem``; a removal is recorded."""
        if self._locked:
            self._refuse_locked()
        key, value = dict.popitem(self)
        detach(value)
        self._record((key,), "remove", plain(value), None)
        return key, value

    def setdefault(self, key: K, default: Any = None) -> Any:
        """Like ``dict.setdefault``; an insertion is recorded."""
        if key in self:
            return dict.__getitem__(self, key)
        self[key] = default
        return dict.__getitem__(self, key)

    def clear(self) -> None:
        """Like ``dict.clear``; recorded as one ``assign`` (nothing when already empty)."""
        if self._locked:
            self._refuse_locked()
        if not self:
            return
        old = plain(self)
        for value in dict.values(self):
            detach(value)
        dict.clear(self)
        self._record((), "assign", old, {})

    def update(self, *args: Any, **kwargs: Any) -> None:
        """Like ``dict.update``; each added or replaced key is recorded."""
        if self._locked:
            self._refuse_locked()
        before = dict(self)
        try:
            dict.update(self, *args, **kwargs)
        finally:
            self._record_merge(before)

    def __ior__(self, other: Any) -> Self:  # type: ignore[override,misc]
        if self._locked:
            self._refuse_locked()
        before = dict(self)
        try:
            result = dict.__ior__(self, other)
        finally:
            self._record_merge(before)
        return result if result is NotImplemented else self

    def _record_merge(self, before: dict[Any, Any]) -> None:
        """Record what an update (even one cut short by an error) added or replaced."""
        for key, stored in list(dict.items(self)):
            old = before.get(key, MISSING)
            if old is stored:
                continue
            value = stored
            if isinstance(stored, dict | list | set):
                value = self._adopt(key, stored)
                dict.__setitem__(self, key, value)
            if old is MISSING:
                self._record((key,), "add", None, plain(value))
            else:
                detach(old)
                self._record((key,), "replace", plain(old), plain(value))

    def _assign(self, content: Mapping[Any, Any]) -> None:
        """Replace the whole content, recorded as one ``assign`` (used by revert)."""
        if self._locked:
            self._refuse_locked()
        old = plain(self)
        for value in dict.values(self):
            detach(value)
        dict.clear(self)
        for key, value in content.items():
            dict.__setitem__(self, key, self._adopt(key, value))
        self._record((), "assign", old, plain(self))

    @classmethod
    def fromkeys(cls, iterable: Iterable[Any], value: Any = None) -> TrackedDict[Any, Any]:
        """A new TrackedDict with keys from ``iterable``, each set to ``value``."""
        return cls((key, value) for key in iterable)
