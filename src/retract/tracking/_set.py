"""TrackedSet: a set that records every change."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Self, TypeVar

from ._base import Tracked
from ._change import Kind
from ._tracker import DEFAULT_HISTORY

__all__ = ("TrackedSet",)

T = TypeVar("T")


class TrackedSet(Tracked, set[T]):
    """A real ``set`` subclass whose every mutation is recorded as a :class:`Change`.

    Each element added or removed is one ``add`` or ``remove`` change whose path ends
    with the element; ``clear`` is one ``assign``. Bulk operations (``update``, ``|=``,
    ``-=``, ``&=``, ``^=`` and their method forms) record one change per element they
    added or removed. Sets have no JSON Patch form.

    Parameters as for :class:`TrackedDict`.
    """

    __slots__ = ("_key", "_locked", "_parent", "_tracker")  # set has __weakref__ already
    _kind: Kind = "set"

    def __init__(
        self,
        iterable: Iterable[T] = (),
        *,
        history: int | None = DEFAULT_HISTORY,
        capture_snapshots: bool = False,
        capture_stack: bool = False,
    ) -> None:
        set.__init__(self, iterable)
        self._setup(history, capture_snapshots, capture_stack)

    @classmethod
    def _nested(cls, value: Iterable[Any], parent: Tracked, key: Any) -> Self:
        child = cls.__new__(cls)
        set.update(child, value)
        child._parent, child._key, child._locked, child._tracker = parent, key, False, None
        return child

    def __repr__(self) -> str:
        return f"TrackedSet({set(self)!r})" if self else "TrackedSet()"

    def __reduce__(self) -> Any:
        return (type(self), (set(self),))

    def add(self, element: T) -> None:
        """Like ``set.add``; an ``add`` is recorded if the element is new."""
        if self._locked:
            self._refuse_locked()
        if element in self:
            return
        set.add(self, element)
        self._record((element,), "add", None, element)

    def discard(self, element: object) -> None:
        """Like ``set.discard``; a ``remove`` is recorded if the element was there."""
        if self._locked:
            self._refuse_locked()
        if element in self:
            set.discard(self, element)
            self._record((element,), "remove", element, None)

    def remove(self, element: object) -> None:
        """Like ``set.remove`` (KeyError when missing)."""
        if self._locked:
            self._refuse_locked()
        set.remove(self, element)  # type: ignore[misc]
        self._record((element,), "remove", element, None)

    def pop(self) -> T:
        """Like ``set.pop``."""
        if self._locked:
            self._refuse_locked()
        element = set.pop(self)
        self._record((element,), "remove", element, None)
        return element

    def clear(self) -> None:
        """Like ``set.clear``; one ``assign`` (nothing when already empty)."""
        if self._locked:
            self._refuse_locked()
        old = set(self)
        # set.clear also on an empty set: it resets the hash table (slots left by
        # removals), which decides the element a later pop() returns, as in set's
        set.clear(self)
        if old:
            self._record((), "assign", old, set())

    def _bulk(self, operation: Any, *args: Any) -> Any:
        if self._locked:
            self._refuse_locked()
        before = set(self)
        try:
            return operation(self, *args)
        finally:
            # Record the difference, also after an operation that failed part way.
            for element in before - self:
                self._record((element,), "remove", element, None)
            for element in set.difference(self, before):
                self._record((element,), "add", None, element)

    def update(self, *others: Iterable[T]) -> None:
        """Like ``set.update``."""
        self._bulk(set.update, *others)

    def difference_update(self, *others: Iterable[Any]) -> None:
        """Like ``set.difference_update``."""
        self._bulk(set.difference_update, *others)

    def intersection_update(self, *others: Iterable[Any]) -> None:
        """Like ``set.intersection_update``."""
        self._bulk(set.intersection_update, *others)

    def symmetric_difference_update(self, other: Iterable[T]) -> None:
        """Like ``set.symmetric_difference_update``."""
        self._bulk(set.symmetric_difference_update, other)

    def __ior__(self, other: Any) -> Self:  # type: ignore[override,misc]
        result = self._bulk(set.__ior__, other)
        return self if result is not NotImplemented else result

    def __isub__(self, other: Any) -> Self:  # type: ignore[misc]
        result = self._bulk(set.__isub__, other)
        return self if result is not NotImplemented else result

    def __iand__(self, other: Any) -> Self:  # type: ignore[misc]
        result = self._bulk(set.__iand__, other)
        return self if result is not NotImplemented else result

    def __ixor__(self, other: Any) -> Self:  # type: ignore[override,misc]
        result = self._bulk(set.__ixor__, other)
        return self if result is not NotImplemented else result

    def _assign(self, content: Iterable[Any]) -> None:
        """Replace the whole content, recorded as one ``assign``."""
        if self._locked:
            self._refuse_locked()
        old = set(self)
        set.clear(self)
        set.update(self, content)
        self._record((), "assign", old, set(self))
