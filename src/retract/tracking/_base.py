"""What every tracked container shares: its place in the tree, and the tracking API.

A container tree has one :class:`Tracker`, held by its root. A child knows its parent
(and, in a dict, its key; in a list its index is found when needed, since inserts move
it), so a change deep in the tree is recorded with its path from the root.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import TYPE_CHECKING, Any

from .._errors import ContainerLockedError
from ._change import Action, Change, Kind
from ._plain import plain
from ._tracker import DEFAULT_HISTORY, ChangeHistory, Observer, Tracker

if TYPE_CHECKING:
    from ._subscribe import Overflow, Subscription

__all__ = ("Tracked", "detach")

logger = logging.getLogger("retract")

#: Stands for "no value" where None is a value.
MISSING: Any = object()


class Tracked:
    """Mixin of TrackedDict, TrackedList and TrackedSet (the slots are theirs)."""

    __slots__ = ()
    _parent: Tracked | None
    _key: Any
    _tracker: Tracker | None
    _locked: bool
    _kind: Kind

    def _setup(self, history: int | None, capture_snapshots: bool, capture_stack: bool) -> None:
        # The slots are the subclasses' (a dict, list or set layout cannot share them).
        self._parent = None  # type: ignore[misc]
        self._key = None
        self._locked = False  # type: ignore[misc]
        self._tracker = Tracker(  # type: ignore[misc]
            self,
            history=history,
            capture_snapshots=capture_snapshots,
            capture_stack=capture_stack,
        )

    # -- the tree ---------------------------------------------------------------------

    def _root_tracker(self) -> tuple[Tracked, Tracker]:
        node = self
        while node._parent is not None:
            node = node._parent
        tracker = node._tracker
        if tracker is None:  # a detached child: it is a root of its own from now on
            tracker = node._tracker = Tracker(  # type: ignore[misc]
                node, history=DEFAULT_HISTORY, capture_snapshots=False, capture_stack=False
            )
        return node, tracker

    def _path(self) -> tuple[Any, ...]:
        """Keys and indices from the root to this container."""
        parts: list[Any] = []
        node = self
        while (parent := node._parent) is not None:
            if isinstance(parent, list):
                parts.append(_index_of(parent, node))
            else:
                parts.append(node._key)
            node = parent
        parts.reverse()
        return tuple(parts)

    def _record(self, tail: tuple[Any, ...], action: Action, old: Any, new: Any) -> None:
        if self._parent is None:
            tracker = self._tracker
            if tracker is None:
                tracker = self._root_tracker()[1]
            tracker.record(tail, action, old, new, self._kind)
        else:
            tracker = self._root_tracker()[1]
            tracker.record(self._path() + tail, action, old, new, self._kind)

    def _refuse_locked(self) -> None:
        raise ContainerLockedError(
            f"this tracked {self._kind} is locked; call unlock() before changing it"
        )

    def _adopt(self, key: Any, value: Any) -> Any:
        """The value to store: plain containers become tracked children (copies)."""
        if isinstance(value, dict | list | set):
            return _child(value, self, key)
        return value

    # -- history ----------------------------------------------------------------------

    def tracking_changes(self, most_recent: int | None = None) -> ChangeHistory:
        """The kept history of the whole tree, oldest first.

        The history is bounded (``history=`` when the root was made): the list's
        ``truncated`` attribute says how many of the oldest changes it no longer holds.

        :param most_recent: only the newest N changes.
        """
        return self._root_tracker()[1].changes(most_recent)

    def last_change(self) -> Change | None:
        """The newest change of the tree, or None."""
        return self._root_tracker()[1].last()

    def changes_since(self, cursor: Change | int) -> list[Change]:
        """The changes after ``cursor`` (a Change, or its ``seq``), oldest first.

        :raises HistoryTruncatedError: changes right after the cursor are no longer kept.
        """
        return self._root_tracker()[1].since(cursor)

    # -- observers --------------------------------------------------------------------

    def tracking_add_observer(
        self,
        observer: Observer,
        *,
        actions: Collection[Action] | None = None,
        path_prefix: tuple[Any, ...] | None = None,
    ) -> Observer:
        """Call ``observer(change)`` after every mutation of this container's subtree.

        An observer that raises is logged and counted (:attr:`tracking_observer_errors`);
        the mutation stands and the other observers still run.

        An observer added on a nested container follows it when its index in a list
        changes, and is no longer called once it is removed from the tree.

        :param actions: only changes with these actions.
        :param path_prefix: only changes under this path, relative to this container.
        :return: ``observer``, so it can be used as a decorator.
        """
        root, tracker = self._root_tracker()
        if root is self:
            tracker.add_observer(observer, actions=actions, path_prefix=path_prefix)
        else:  # the scope holds this container, so its id stays its own meanwhile
            scope = partial(_path_within, self, root)
            tracker.add_observer(
                observer, actions=actions, path_prefix=path_prefix, scope=scope, where=id(self)
            )
        return observer

    def tracking_remove_observer(self, observer: Observer) -> None:
        """Stop calling ``observer`` (added on this same container).

        :raises ValueError: it is not observing this container.
        """
        root, tracker = self._root_tracker()
        tracker.remove_observer(observer, 0 if root is self else id(self))

    @property
    def tracking_observer_errors(self) -> int:
        """How many times an observer of this tree raised."""
        return self._root_tracker()[1].observer_errors

    def subscribe(self, maxsize: int = 0, overflow: Overflow = "drop_oldest") -> Subscription:
        """An async iterator over the changes of this tree, fed without ever blocking.

        See :class:`~retract.tracking.Subscription`.
        """
        from ._subscribe import Subscription  # noqa: PLC0415  (it imports this module)

        return Subscription(self, maxsize=maxsize, overflow=overflow)

    # -- undo -------------------------------------------------------------------------

    def apply_change(self, change: Change) -> None:
        """Make ``change`` again on this tree (its path is relative to the root).

        Used to replay changes onto a copy, and (with :meth:`Change.inverse`) to revert.
        The application is itself recorded as changes.
        """
        from ._apply import apply  # noqa: PLC0415  (it imports the containers)

        apply(self._root_tracker()[0], change)

    def revert(self, change: Change) -> None:
        """Undo every change from the newest back to ``change`` (inclusive).

        The inverses are applied newest first and recorded like any mutation.

        :raises HistoryTruncatedError: some of those changes are no longer kept.
        """
        root, tracker = self._root_tracker()
        for done in reversed(tracker.since(change.seq - 1)):
            root.apply_change(done.inverse())

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Group changes: if the block raises, every change made in it is reverted.

        The reverting changes are recorded too. Changes that other tasks make to the
        same tree while the block runs (if it awaits) are reverted with it. The block's
        own exception is the one raised; should the rollback itself fail (the tree was
        locked in the block, say), a note on that exception says how far it got.
        """
        root, tracker = self._root_tracker()
        pending: list[tuple[Any, ...]] = []  # the changes' fields, as the tracker keeps them
        feed = tracker.add_feed(pending.append)
        try:
            yield
        except BaseException as error:
            tracker.remove_feed(feed)
            undone = 0
            try:
                for done in reversed(pending):
                    root.apply_change(Change(*done).inverse())
                    undone += 1
            except Exception as failure:
                logger.exception("rolling back a tracked transaction failed")
                error.add_note(
                    f"retract: rolling back the transaction failed after {undone} of "
                    f"{len(pending)} changes ({type(failure).__name__}: {failure}); the "
                    "container is only partly rolled back"
                )
            raise
        tracker.remove_feed(feed)

    # -- locking ----------------------------------------------------------------------

    def lock(self) -> None:
        """Refuse every mutation of this container and its children until unlock()."""
        for node in self._subtree():
            node._locked = True  # type: ignore[misc]

    def unlock(self) -> None:
        """Allow mutations again (of this container and its children)."""
        for node in self._subtree():
            node._locked = False  # type: ignore[misc]

    @property
    def tracking_lock(self) -> threading.RLock:
        """The tree's lock, for code that changes it from several threads at once.

        Tracked containers are not synchronized, like the builtins: each mutation is
        recorded as it happens, and changes from any one thread (the event loop's, or
        a worker's) keep their order. When two threads may change one tree at the same
        time, hold this lock around each change (``with config.tracking_lock:``) so
        that every change's ``old`` value, ``seq`` and place in the history and in the
        subscriptions follow the previous change. It is re-entrant; retract never takes it.
        """
        return self._root_tracker()[1].lock

    @property
    def locked(self) -> bool:
        """Whether mutations are refused."""
        return self._locked

    def _subtree(self) -> Iterator[Tracked]:
        yield self
        values: Iterable[Any]
        if isinstance(self, dict):
            values = self.values()
        elif isinstance(self, list | set):
            values = self
        else:  # a TrackedAttr: its public attributes
            values = [v for k, v in vars(self).items() if not k.startswith("_")]
        for value in values:
            if isinstance(value, Tracked):
                yield from value._subtree()

    def to_plain(self) -> Any:
        """A plain deep copy (dict, list or set) of this container."""
        return plain(self)


def _path_within(node: Tracked, root: Tracked) -> tuple[Any, ...] | None:
    """``node``'s path from ``root`` now, or None if it is no longer in that tree."""
    parts: list[Any] = []
    while node is not root:
        parent = node._parent
        if parent is None:
            return None
        parts.append(_index_of(parent, node) if isinstance(parent, list) else node._key)
        node = parent
    parts.reverse()
    return tuple(parts)


def _index_of(parent: list[Any], child: Any) -> int:
    for index, item in enumerate(parent):
        if item is child:
            return index
    raise LookupError("a tracked child is no longer in its parent list")  # pragma: no cover


def _child(value: Any, parent: Tracked, key: Any) -> Tracked:
    from ._containers import TrackedDict, TrackedList, TrackedSet  # noqa: PLC0415

    kind: type[Tracked]
    if isinstance(value, dict):
        kind = TrackedDict
    elif isinstance(value, list):
        kind = TrackedList
    else:
        kind = TrackedSet
    return kind._nested(value, parent, key)


def detach(value: Any) -> None:
    """A child taken out of its parent stops reporting to it."""
    if isinstance(value, Tracked) and value._parent is not None:
        value._parent = None  # type: ignore[misc]
        value._key = None
