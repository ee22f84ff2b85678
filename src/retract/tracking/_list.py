"""TrackedList: a list that records every change."""

from __future__ import annotations

import operator
import time
from collections.abc import Iterable
from typing import Any, Self, SupportsIndex, TypeVar, overload

from ._base import Tracked, detach
from ._change import Kind, current_actor
from ._plain import SCALARS, plain
from ._tracker import DEFAULT_HISTORY

__all__ = ("TrackedList",)

_append = list.append
_now = time.time

T = TypeVar("T")


class TrackedList(Tracked, list[T]):
    """A real ``list`` subclass whose every mutation is recorded as a :class:`Change`.

    Appends and inserts are ``add`` changes at their index, item assignment ``replace``,
    deletions ``remove``; contiguous slice assignment and ``extend`` are one ``splice``;
    sort, reverse, ``*=``, ``clear`` and extended slices one ``assign``. Return values,
    exceptions and the resulting content are exactly ``list``'s.

    Parameters as for :class:`TrackedDict`.
    """

    __slots__ = ("__weakref__", "_key", "_locked", "_parent", "_tracker")
    _kind: Kind = "list"

    def __init__(
        self,
        iterable: Iterable[T] = (),
        *,
        history: int | None = DEFAULT_HISTORY,
        capture_snapshots: bool = False,
        capture_stack: bool = False,
    ) -> None:
        list.__init__(self, iterable)
        self._setup(history, capture_snapshots, capture_stack)
        self._adopt_all()

    @classmethod
    def _nested(cls, value: Iterable[Any], parent: Tracked, key: Any) -> Self:
        child = cls.__new__(cls)
        list.extend(child, value)
        child._parent, child._key, child._locked, child._tracker = parent, key, False, None
        child._adopt_all()
        return child

    def _adopt_all(self) -> None:
        seen: set[int] = set()
        for index, item in enumerate(list.__iter__(self)):
            stored = item
            adopted = isinstance(item, Tracked) and item._parent is self and id(item) not in seen
            if isinstance(item, dict | list | set) and not adopted:
                # Plain containers become tracked children; a child that appears twice
                # (after *=) gets its own copy, since one child has one place.
                stored = self._adopt(None, item)
                list.__setitem__(self, index, stored)
            seen.add(id(stored))

    def __repr__(self) -> str:
        return f"TrackedList({list.__repr__(self)})"

    def __reduce__(self) -> Any:
        return (type(self), (plain(self),))

    def _guard(self) -> None:
        if self._locked:
            self._refuse_locked()

    def append(self, item: T) -> None:
        """Like ``list.append``; recorded as an ``add`` at the new index."""
        if self._locked:
            self._refuse_locked()
        if type(item) in SCALARS:
            new = item
        else:
            if isinstance(item, dict | list | set):
                item = self._adopt(None, item)
            new = plain(item)
        index = len(self)
        _append(self, item)
        tracker = self._tracker  # only a root has one
        if tracker is None or not tracker.direct:
            self._record((index,), "add", None, new)
            return
        # Tracker.record, inlined for the most common write (no capture, no observer).
        tracker.seq = seq = tracker.seq + 1
        raw = (seq, (index,), "add", None, new, current_actor(), _now(), "list", None, None)
        tracker.tail.append(raw)
        if not seq & 63:  # every CHUNK (64) changes
            tracker.seal()
        feed = tracker.feed
        if feed is not None:
            feed(raw)
        if tracker.sleepers:
            tracker.wake()

    def insert(self, index: SupportsIndex, item: T) -> None:
        """Like ``list.insert`` (the index is clamped like list's)."""
        self._guard()
        at = operator.index(index)
        size = len(self)
        if at < 0:
            at = max(at + size, 0)
        at = min(at, size)
        item = self._adopt(None, item)
        # list's own call, with the index as given: it raises OverflowError for an index
        # beyond a C ssize_t (the clamped one would not), and clamps the rest like `at`
        list.insert(self, index, item)
        self._record((at,), "add", None, plain(item))

    def extend(self, iterable: Iterable[T]) -> None:
        """Like ``list.extend``; recorded as one ``splice`` at the end."""
        self._guard()
        start = len(self)
        added: list[Any] = []
        try:
            added.extend(self._adopt(None, item) for item in iterable)
        finally:
            # list.extend keeps what it took from an iterator that then failed.
            if added:
                list.extend(self, added)
                self._record((start,), "splice", [], plain(added))

    def __iadd__(self, other: Iterable[T]) -> Self:  # type: ignore[override,misc]
        self.extend(other)
        return self

    def __imul__(self, count: SupportsIndex) -> Self:
        self._guard()
        if not hasattr(type(count), "__index__"):
            # lets Python raise list's own "can't multiply sequence by non-int" error
            return NotImplemented
        old = list(self)
        list.__imul__(self, count)
        if len(old) != len(self):  # only a count of 1 (or an empty list) changes nothing
            if not self:
                for item in old:
                    detach(item)
            self._adopt_all()
            self._record((), "assign", plain(old), plain(self))
        return self

    def pop(self, index: SupportsIndex = -1) -> T:
        """Like ``list.pop``; recorded as a ``remove`` at the item's index."""
        self._guard()
        at = operator.index(index)
        item = list.pop(self, at)
        if at < 0:
            at += len(self) + 1
        detach(item)
        self._record((at,), "remove", plain(item), None)
        return item

    def remove(self, value: T) -> None:
        """Like ``list.remove``; recorded as a ``remove`` at the item's index."""
        self._guard()
        try:
            at = list.index(self, value)
        except ValueError:
            list.remove(self, value)  # raises list's own error
            raise  # pragma: no cover
        item = list.__getitem__(self, at)
        list.__delitem__(self, at)
        detach(item)
        self._record((at,), "remove", plain(item), None)

    def clear(self) -> None:
        """Like ``list.clear``; one ``assign`` (nothing when already empty)."""
        self._guard()
        if self:
            self._assign([])

    def sort(self, *, key: Any = None, reverse: bool = False) -> None:
        """Like ``list.sort``; one ``assign`` when the order changed."""
        self._guard()
        old = list(self)
        try:
            list.sort(self, key=key, reverse=reverse)
        finally:
            # A failed comparison can leave the list partly sorted, as list's does.
            if len(old) != len(self) or any(a is not b for a, b in zip(old, self, strict=False)):
                self._record((), "assign", plain(old), plain(self))

    def reverse(self) -> None:
        """Like ``list.reverse``; one ``assign`` (nothing for fewer than 2 items)."""
        self._guard()
        if len(self) > 1:
            old = plain(self)
            list.reverse(self)
            self._record((), "assign", old, plain(self))

    @overload
    def __setitem__(self, index: SupportsIndex, value: T) -> None: ...
    @overload
    def __setitem__(self, index: slice, value: Iterable[T]) -> None: ...
    def __setitem__(self, index: Any, value: Any) -> None:
        self._guard()
        if isinstance(index, slice):
            self._set_slice(index, value)
            return
        try:
            old = list.__getitem__(self, index)
        except (IndexError, TypeError):
            list.__setitem__(self, index, value)  # raises list's own error
            raise  # pragma: no cover
        at = operator.index(index)
        if at < 0:
            at += len(self)
        value = self._adopt(None, value)
        list.__setitem__(self, at, value)
        detach(old)
        self._record((at,), "replace", plain(old), plain(value))

    def _set_slice(self, index: slice, value: Any) -> None:
        # list checks the slice (bad indices, a zero step) before it reads the value
        start, stop, step = index.indices(len(self))
        try:
            iter(value)
        except TypeError:
            list.__setitem__(self, index, value)  # raises list's own error
            raise  # pragma: no cover
        items = [self._adopt(None, item) for item in list(value)]
        if step == 1:
            stop = max(stop, start)
            removed = list.__getitem__(self, slice(start, stop))
            list.__setitem__(self, slice(start, stop), items)
            for item in removed:
                detach(item)
            if removed or items:
                self._record((start,), "splice", plain(removed), plain(items))
            return
        old = list(self)
        list.__setitem__(self, index, items)  # an extended slice: list checks the sizes
        kept = {id(now) for now in self}  # one pass, not one scan per item
        for item in old:
            if id(item) not in kept:
                detach(item)
        if any(a is not b for a, b in zip(old, self, strict=False)):
            self._record((), "assign", plain(old), plain(self))

    def __delitem__(self, index: SupportsIndex | slice) -> None:
        self._guard()
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step == 1:
                self._set_slice(slice(start, max(stop, start)), [])
                return
            old = list(self)
            list.__delitem__(self, index)
            if len(old) != len(self):
                kept = {id(now) for now in self}
                for item in old:
                    if id(item) not in kept:
                        detach(item)
                self._record((), "assign", plain(old), plain(self))
            return
        try:
            old_item = list.__getitem__(self, index)
        except (IndexError, TypeError):
            list.__delitem__(self, index)  # raises list's own error
            raise  # pragma: no cover
        at = operator.index(index)
        if at < 0:
            at += len(self)
        list.__delitem__(self, at)
        detach(old_item)
        self._record((at,), "remove", plain(old_item), None)

    def _assign(self, content: Iterable[Any]) -> None:
        """Replace the whole content, recorded as one ``assign``."""
        self._guard()
        old = list(self)
        list.__setitem__(self, slice(None), [self._adopt(None, item) for item in content])
        for item in old:
            detach(item)
        self._record((), "assign", plain(old), plain(self))
