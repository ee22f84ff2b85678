"""The hub of a root container: sequence numbers, bounded history, observers.

Every tracked container tree has one ``Tracker``, held by its root. Recording a change
costs the same whatever the history's length: the history is a ``deque`` with a
``maxlen``, and a cursor is found by arithmetic on sequence numbers, never by a scan.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import traceback
import weakref
from collections import deque
from collections.abc import Callable, Collection
from typing import Any

from .._errors import HistoryTruncatedError
from ._change import Action, Change, Kind, current_actor
from ._plain import plain

__all__ = ("DEFAULT_HISTORY", "Observer", "Tracker")

#: Frames inside this package are left out of captured stacks.
_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep
_new_change = tuple.__new__
_now = time.time

logger = logging.getLogger("retract")

#: Changes kept per root container unless ``history=`` says otherwise.
DEFAULT_HISTORY = 10_000

Observer = Callable[[Change], object]


class Tracker:
    """Sequence numbers, history and observers of one root container (not public)."""

    __slots__ = (
        "_acquire",
        "_release",
        "_root",
        "capture_snapshots",
        "capture_stack",
        "history",
        "observer_errors",
        "observers",
        "seq",
        "transactions",
        "wrappers",
    )

    def __init__(
        self,
        root: Any,
        *,
        history: int | None,
        capture_snapshots: bool,
        capture_stack: bool,
    ) -> None:
        if history is not None and (type(history) is not int or history < 0):
            raise ValueError(f"history must be a number of changes >= 0 or None, not {history!r}")
        # A weak reference: the container holds its tracker, and a strong one back would
        # leave every dropped container to the cyclic garbage collector.
        self._root = weakref.ref(root)
        self.seq = 0
        self.history: deque[Change] = deque(maxlen=history)
        self.observers: list[Observer] = []
        self.wrappers: dict[Observer, Observer] = {}
        self.observer_errors = 0
        self.transactions: list[list[Change]] = []
        self.capture_snapshots = capture_snapshots
        self.capture_stack = capture_stack
        lock = threading.Lock()
        self._acquire, self._release = lock.acquire, lock.release  # bound once: cheaper

    def record(self, path: tuple[Any, ...], action: Action, old: Any, new: Any, kind: Kind) -> None:
        """Make a Change, keep it, and hand it to every observer."""
        snapshot = stack = None
        if self.capture_snapshots:
            snapshot = plain(self._root())
        if self.capture_stack:
            frames = traceback.extract_stack(limit=24)
            outside = [frame for frame in frames if not frame.filename.startswith(_PACKAGE)]
            stack = tuple(traceback.format_list(outside[-12:]))
        self._acquire()  # mutations from other threads get distinct, ordered numbers
        try:
            self.seq = seq = self.seq + 1
            # tuple.__new__ directly: the named tuple's own __new__ is a Python call.
            change = _new_change(
                Change,
                (seq, path, action, old, new, current_actor(), _now(), kind, snapshot, stack),
            )
            self.history.append(change)
        finally:
            self._release()
        if self.transactions:
            for pending in self.transactions:
                pending.append(change)
        for observer in self.observers:
            try:
                observer(change)
            except Exception:
                self.observer_errors += 1
                logger.exception("a tracking observer raised; the change stands")

    # -- history ----------------------------------------------------------------------

    def changes(self, most_recent: int | None) -> list[Change]:
        """The kept history, oldest first (the ``most_recent`` newest ones only)."""
        if most_recent is None:
            return list(self.history)
        if most_recent < 0:
            raise ValueError(f"most_recent must be >= 0, not {most_recent!r}")
        if most_recent == 0:
            return []
        return list(self.history)[-most_recent:]

    def since(self, cursor: Change | int) -> list[Change]:
        """The changes after ``cursor`` (a Change or its seq), oldest first."""
        seq = cursor.seq if isinstance(cursor, Change) else cursor
        if type(seq) is not int or seq < 0:
            raise ValueError(f"expected a Change or a seq >= 0, not {cursor!r}")
        if seq >= self.seq:
            return []
        history = self.history
        oldest = history[0].seq if history else self.seq + 1
        if seq + 1 < oldest:
            kept = f"#{oldest}-#{self.seq}" if history else "none"
            raise HistoryTruncatedError(
                f"change #{seq + 1} and older are no longer in the history, which keeps the "
                f"last {history.maxlen} changes (now {kept}); create the "
                "container with a larger history= (None: unbounded) to look that far back"
            )
        start = seq + 1 - oldest
        return [history[i] for i in range(start, len(history))]

    # -- observers --------------------------------------------------------------------

    def add_observer(
        self,
        observer: Observer,
        *,
        actions: Collection[Action] | None,
        path_prefix: tuple[Any, ...] | None,
        scope: Callable[[], tuple[Any, ...] | None] | None = None,
    ) -> None:
        """Call ``observer`` with every change (or only the matching ones).

        ``scope`` (for an observer added on a nested container) gives that container's
        path now, or None once it left the tree; ``path_prefix`` is then relative to it.
        """
        if not callable(observer):
            raise TypeError(f"an observer must be callable, got {observer!r}")
        if observer in self.wrappers:
            raise ValueError(f"{observer!r} is already observing this container")
        wrapper = observer
        if actions is not None or path_prefix or scope is not None:
            wrapper = _filtered(observer, actions, path_prefix, scope)
        self.wrappers[observer] = wrapper
        self.observers = [*self.observers, wrapper]  # a copy: safe while iterating

    def remove_observer(self, observer: Observer) -> None:
        """Stop calling ``observer``.

        :raises ValueError: it is not observing this container.
        """
        try:
            wrapper = self.wrappers.pop(observer)
        except KeyError:
            raise ValueError(f"{observer!r} is not observing this container") from None
        self.observers = [o for o in self.observers if o is not wrapper]


def _filtered(
    observer: Observer,
    actions: Collection[Action] | None,
    prefix: tuple[Any, ...] | None,
    scope: Callable[[], tuple[Any, ...] | None] | None,
) -> Observer:
    wanted = None if actions is None else frozenset(actions)
    relative = prefix or ()
    size = len(relative)

    def filtered(change: Change) -> object:
        if wanted is not None and change.action not in wanted:
            return None
        if scope is not None:
            # A nested container's path changes when items before it in a list come
            # and go, so it is looked up for each change, not fixed when added.
            base = scope()
            if base is None:  # it left the tree: its changes are no longer this tree's
                return None
            full = base + relative
            if change.path[: len(full)] != full:
                return None
        elif size and change.path[:size] != relative:
            return None
        return observer(change)

    return filtered
