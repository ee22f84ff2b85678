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

__all__ = ("DEFAULT_HISTORY", "ChangeHistory", "Feed", "Observer", "Tracker")

#: Frames inside this package are left out of captured stacks.
_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep
_new_change = tuple.__new__
_now = time.time

logger = logging.getLogger("retract")

#: Changes kept per root container unless ``history=`` says otherwise.
DEFAULT_HISTORY = 10_000

Observer = Callable[[Change], object]
#: Called with a change's fields as a plain tuple (a ``Change`` is made by the reader).
Feed = Callable[[tuple[Any, ...]], None]


class ChangeHistory(list[Change]):
    """The changes :meth:`~retract.tracking.Tracked.tracking_changes` returns (a list).

    :ivar truncated: how many of the oldest changes the bounded history no longer
        holds (0: it holds every change since the container was made).
    """

    __slots__ = ("truncated",)
    truncated: int


class Tracker:
    """Sequence numbers, history and observers of one root container (not public)."""

    __slots__ = (
        "_root",
        "_sleep_lock",
        "capture_snapshots",
        "capture_stack",
        "capturing",
        "direct",
        "feeds",
        "history",
        "lock",
        "observer_errors",
        "observers",
        "seq",
        "sleepers",
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
        self.history: deque[tuple[Any, ...]] = deque(maxlen=history)
        self.feeds: list[Feed] = []
        #: Subscription queues whose consumer waits for the next change (see wake()).
        self.sleepers: list[Any] = []
        self._sleep_lock = threading.Lock()
        self.observers: list[Observer] = []
        self.wrappers: dict[Observer, Observer] = {}
        self.observer_errors = 0
        self.capture_snapshots = capture_snapshots
        self.capture_stack = capture_stack
        self.capturing = capture_snapshots or capture_stack
        #: Nothing to capture and no observer: a change only goes to history and feeds.
        self.direct = not self.capturing
        #: For writers in several threads (``Tracked.tracking_lock``); never taken here.
        self.lock = threading.RLock()

    def record(self, path: tuple[Any, ...], action: Action, old: Any, new: Any, kind: Kind) -> None:
        """Keep a change and hand it to every feed and observer.

        The history and the feeds get the change's fields as a plain tuple: a ``Change``
        is made from it only when someone reads it (or once, for the observers), which
        keeps the write path short. ``TrackedDict.__setitem__`` and
        ``TrackedList.append`` inline this while :attr:`direct`.
        """
        snapshot = stack = None
        if self.capturing:
            if self.capture_snapshots:
                snapshot = plain(self._root())
            if self.capture_stack:
                frames = traceback.extract_stack(limit=24)
                outside = [frame for frame in frames if not frame.filename.startswith(_PACKAGE)]
                stack = tuple(traceback.format_list(outside[-12:]))
        # Not synchronized (see ``Tracked.tracking_lock``): a lock here would cost a
        # fifth of a write, and still would not make a mutation and its record atomic.
        self.seq = seq = self.seq + 1
        raw = (seq, path, action, old, new, current_actor(), _now(), kind, snapshot, stack)
        self.history.append(raw)
        for feed in self.feeds:
            feed(raw)
        if self.sleepers:
            self.wake()
        if self.observers:
            change = _new_change(Change, raw)
            for observer in self.observers:
                try:
                    observer(change)
                except Exception:
                    self.observer_errors += 1
                    logger.exception("a tracking observer raised; the change stands")

    # -- history ----------------------------------------------------------------------

    def changes(self, most_recent: int | None) -> ChangeHistory:
        """The kept history, oldest first (the ``most_recent`` newest ones only)."""
        history = self.history
        if most_recent is None:
            start = 0
        elif type(most_recent) is not int or most_recent < 0:
            raise ValueError(f"most_recent must be an int >= 0 or None, not {most_recent!r}")
        else:
            start = max(len(history) - most_recent, 0)
        kept = ChangeHistory(_new_change(Change, history[i]) for i in range(start, len(history)))
        kept.truncated = self.truncated
        return kept

    def last(self) -> Change | None:
        """The newest change, or None."""
        history = self.history
        return _new_change(Change, history[-1]) if history else None

    def since(self, cursor: Change | int) -> list[Change]:
        """The changes after ``cursor`` (a Change or its seq), oldest first."""
        seq = cursor.seq if isinstance(cursor, Change) else cursor
        if type(seq) is not int or seq < 0:
            raise ValueError(f"expected a Change or a seq >= 0, not {cursor!r}")
        if seq >= self.seq:
            return []
        history = self.history
        oldest = history[0][0] if history else self.seq + 1
        if seq + 1 < oldest:
            kept = f"#{oldest}-#{self.seq}" if history else "none"
            raise HistoryTruncatedError(
                f"change #{seq + 1} and older are no longer in the history, which keeps the "
                f"last {history.maxlen} changes (now {kept}); create the "
                "container with a larger history= (None: unbounded) to look that far back"
            )
        start = seq + 1 - oldest
        return [_new_change(Change, history[i]) for i in range(start, len(history))]

    @property
    def truncated(self) -> int:
        """How many of the oldest changes fell off the bounded history."""
        history = self.history
        return history[0][0] - 1 if history else self.seq

    # -- feeds (subscriptions) ----------------------------------------------------------

    def add_feed(
        self, feed: Feed, scope: Callable[[], tuple[Any, ...] | None] | None = None
    ) -> Feed:
        """Call ``feed(raw)`` with every change's fields, before the observers.

        A feed must be quick and must not change the tree: subscriptions and
        transactions are feeds. ``scope`` (a subscription on a nested container) limits
        it to that subtree.
        :return: what was registered, for :meth:`remove_feed`.
        """
        registered = feed if scope is None else _scoped_feed(feed, scope)
        self.feeds = [*self.feeds, registered]  # a copy: safe while iterating
        return registered

    def remove_feed(self, registered: Feed) -> None:
        """Stop a feed (nothing if it is already gone)."""
        self.feeds = [f for f in self.feeds if f is not registered]

    def add_sleeper(self, queue: Any) -> None:
        """``queue.kick()`` at the next change (a subscription's consumer waits)."""
        with self._sleep_lock:
            self.sleepers = [*self.sleepers, queue]

    def remove_sleeper(self, queue: Any) -> None:
        """No kick needed any more (nothing if already woken)."""
        with self._sleep_lock:
            self.sleepers = [q for q in self.sleepers if q is not queue]

    def wake(self) -> None:
        """Kick every waiting consumer, once: each registers again when it waits again."""
        with self._sleep_lock:
            sleepers, self.sleepers = self.sleepers, []
        for queue in sleepers:
            queue.kick()

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
        self.direct = False

    def remove_observer(self, observer: Observer) -> None:
        """Stop calling ``observer``.

        :raises ValueError: it is not observing this container.
        """
        try:
            wrapper = self.wrappers.pop(observer)
        except KeyError:
            raise ValueError(f"{observer!r} is not observing this container") from None
        self.observers = [o for o in self.observers if o is not wrapper]
        self.direct = not (self.capturing or self.observers)


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


def _scoped_feed(feed: Feed, scope: Callable[[], tuple[Any, ...] | None]) -> Feed:
    def scoped(raw: tuple[Any, ...]) -> None:
        base = scope()
        if base is not None and raw[1][: len(base)] == base:
            feed(raw)

    return scoped
