"""The hub of a root container: sequence numbers, bounded history, observers.

Every tracked container tree has one ``Tracker``, held by its root. Recording a change
costs the same whatever the history's length: a change's fields are appended, as a
plain tuple, to an open chunk (a list); every 64 changes the chunk is sealed into a
tuple, and the oldest chunks the bound no longer needs are dropped. Sealed chunks hold
only tuples of immutable values, so the garbage collector stops tracking them: a full
collection visits one object per 64 changes instead of one per change, which would
otherwise make a long history cost every collection (and the event loop) milliseconds.
A cursor is found by bisection over the chunks, never by a scan of the changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
import traceback
import weakref
from bisect import bisect_right
from collections.abc import Callable, Collection
from typing import Any, NamedTuple

from .._errors import HistoryTruncatedError
from ._change import Action, Change, Kind, current_actor

__all__ = ("DEFAULT_HISTORY", "ChangeHistory", "Feed", "Observer", "Tracker")

#: Frames inside this package are left out of captured stacks.
_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep
_new_change = tuple.__new__
_now = time.time

logger = logging.getLogger("retract")

#: Changes kept per root container unless ``history=`` says otherwise.
DEFAULT_HISTORY = 10_000
#: Changes per sealed chunk of history. The inlined writes (``TrackedDict.__setitem__``,
#: ``TrackedList.append``) seal when ``seq & 63 == 0``: keep them in step.
CHUNK = 64

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
        "_edits",
        "_registry",
        "_root",
        "bound",
        "capture_snapshots",
        "capture_stack",
        "capturing",
        "chunks",
        "direct",
        "feed",
        "feeds",
        "keep",
        "lock",
        "observer_errors",
        "observers",
        "seq",
        "sleepers",
        "tail",
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
        self.bound = history
        self.keep = None if history is None else -(-history // CHUNK)  # chunks, rounded up
        self.chunks: list[tuple[tuple[Any, ...], ...]] = []  # sealed, oldest first
        self.tail: list[tuple[Any, ...]] = []  # the open chunk
        self.feeds: list[Feed] = []
        #: What a write calls: None (no feed), the one feed, or one calling them all.
        self.feed: Feed | None = None
        #: Consumers waiting for the next change: (future, its loop's thread id).
        self.sleepers: list[tuple[asyncio.Future[None], int]] = []
        #: Guards changes to the feeds, sleepers and observers lists (which writers
        #: read without it: each change replaces the list, never edits it).
        self._registry = threading.RLock()
        self._edits = 0
        self.observers: list[Observer] = []
        self.wrappers: dict[tuple[Observer, int], Observer] = {}
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
            root = self._root()
            if self.capture_snapshots and root is not None:
                snapshot = root.to_plain()
            if self.capture_stack:
                frames = traceback.extract_stack(limit=24)
                outside = [frame for frame in frames if not frame.filename.startswith(_PACKAGE)]
                stack = tuple(traceback.format_list(outside[-12:]))
        # Not synchronized (see ``Tracked.tracking_lock``): a lock here would cost a
        # fifth of a write, and still would not make a mutation and its record atomic.
        self.seq = seq = self.seq + 1
        raw = (seq, path, action, old, new, current_actor(), _now(), kind, snapshot, stack)
        self.tail.append(raw)
        if not seq % CHUNK:
            self.seal()
        feed = self.feed
        if feed is not None:
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

    def seal(self) -> None:
        """Freeze the open chunk, and drop the chunks the bound no longer needs."""
        chunks = self.chunks
        chunks.append(tuple(self.tail))
        self.tail = []
        # Keep just enough chunks to hold the newest `bound` changes without the open one.
        if self.keep is not None and len(chunks) > self.keep:
            del chunks[: len(chunks) - self.keep]

    def _view(self) -> _View:
        """A consistent picture of the history, even while another thread writes.

        The open chunk is read first: if it is sealed meanwhile, the chunks read after
        hold its changes too, and the copies are dropped.
        """
        tail = self.tail[:]
        chunks = self.chunks[:]
        if chunks and tail and tail[0][0] <= chunks[-1][-1][0]:
            sealed = chunks[-1][-1][0]
            tail = [raw for raw in tail if raw[0] > sealed]
        if tail:
            newest = tail[-1][0]
        elif chunks:
            newest = chunks[-1][-1][0]
        else:
            newest = self.seq
        stored = sum(map(len, chunks)) + len(tail)
        kept = stored if self.bound is None else min(stored, self.bound)
        return _View(chunks, tail, newest, newest - kept + 1)

    def changes(self, most_recent: int | None) -> ChangeHistory:
        """The kept history, oldest first (the ``most_recent`` newest ones only)."""
        view = self._view()
        after = view.oldest - 1
        if most_recent is not None:
            if type(most_recent) is not int or most_recent < 0:
                raise ValueError(f"most_recent must be an int >= 0 or None, not {most_recent!r}")
            after = max(after, view.newest - most_recent)
        kept = ChangeHistory(view.after(after))
        kept.truncated = view.oldest - 1
        return kept

    def last(self) -> Change | None:
        """The newest change, or None."""
        view = self._view()
        if view.oldest > view.newest:
            return None
        raw = view.tail[-1] if view.tail else view.chunks[-1][-1]
        return _new_change(Change, raw)

    def since(self, cursor: Change | int) -> list[Change]:
        """The changes after ``cursor`` (a Change or its seq), oldest first."""
        seq = cursor.seq if isinstance(cursor, Change) else cursor
        if type(seq) is not int or seq < 0:
            raise ValueError(f"expected a Change or a seq >= 0, not {cursor!r}")
        view = self._view()
        if seq >= view.newest:
            return []
        if seq + 1 < view.oldest:
            kept = f"#{view.oldest}-#{view.newest}" if view.oldest <= view.newest else "none"
            raise HistoryTruncatedError(
                f"change #{seq + 1} and older are no longer in the history, which keeps the "
                f"last {self.bound} changes (now {kept}); create the "
                "container with a larger history= (None: unbounded) to look that far back"
            )
        return view.after(seq)

    @property
    def truncated(self) -> int:
        """How many of the oldest changes fell off the bounded history."""
        return self._view().oldest - 1

    # -- feeds and sleepers -----------------------------------------------------------

    def _replace(self, name: str, edit: Callable[[list[Any]], list[Any]]) -> None:
        """Set list attribute ``name`` to ``edit(it)``, safely against every thread.

        Under the lock against other threads; and should a garbage collection run a
        finalizer that edits the list while the new one is made, it is made again, so
        that a removal is never undone by a stale copy.
        """
        with self._registry:
            while True:
                edits = self._edits
                updated = edit(getattr(self, name))
                feed = _fan_out(updated) if name == "feeds" else None
                if edits == self._edits:
                    setattr(self, name, updated)
                    if name == "feeds":
                        self.feed = feed
                    self._edits += 1
                    return

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
        self._replace("feeds", lambda feeds: [*feeds, registered])
        return registered

    def remove_feed(self, registered: Feed) -> None:
        """Stop a feed (nothing if it is already gone)."""
        self._replace("feeds", lambda feeds: [f for f in feeds if f is not registered])

    def add_sleeper(self, sleeper: tuple[asyncio.Future[None], int]) -> None:
        """Resolve ``sleeper``'s future at the next change (a consumer waits)."""
        self._replace("sleepers", lambda sleepers: [*sleepers, sleeper])

    def remove_sleeper(self, sleeper: tuple[asyncio.Future[None], int]) -> None:
        """That consumer no longer waits (nothing if it was woken already)."""
        self._replace("sleepers", lambda sleepers: [s for s in sleepers if s is not sleeper])

    def wake(self) -> None:
        """Wake every waiting consumer, once: each registers again if it waits again."""
        with self._registry:
            sleepers, self.sleepers = self.sleepers, []
            self._edits += 1
        thread = threading.get_ident()
        for future, owner in sleepers:
            if owner == thread:
                _resolve(future)
            else:  # asyncio is not thread-safe: through the future's loop
                with contextlib.suppress(RuntimeError):  # that loop is closed
                    future.get_loop().call_soon_threadsafe(_resolve, future)

    # -- observers --------------------------------------------------------------------

    def add_observer(
        self,
        observer: Observer,
        *,
        actions: Collection[Action] | None,
        path_prefix: tuple[Any, ...] | None,
        scope: Callable[[], tuple[Any, ...] | None] | None = None,
        where: int = 0,
    ) -> None:
        """Call ``observer`` with every change (or only the matching ones).

        ``scope`` (for an observer added on a nested container) gives that container's
        path now, or None once it left the tree; ``path_prefix`` is then relative to it.
        ``where`` tells the containers of a tree apart (the ``id`` of a nested one, 0
        for the root), so that one observer may watch several of them.
        """
        if not callable(observer):
            raise TypeError(f"an observer must be callable, got {observer!r}")
        if (observer, where) in self.wrappers:
            raise ValueError(f"{observer!r} is already observing this container")
        wrapper = observer
        if actions is not None or path_prefix or scope is not None:
            wrapper = _filtered(observer, actions, path_prefix, scope)
        with self._registry:
            self.wrappers[observer, where] = wrapper
            self._replace("observers", lambda observers: [*observers, wrapper])
            self.direct = False

    def remove_observer(self, observer: Observer, where: int = 0) -> None:
        """Stop calling ``observer`` (added with the same ``where``).

        :raises ValueError: it is not observing this container.
        """
        with self._registry:
            key = (observer, where)
            if key not in self.wrappers:
                # Added on another container of the tree: fine, if on one only.
                keys = [k for k in self.wrappers if k[0] == observer]
                if len(keys) != 1:
                    several = " but several containers of this tree; remove it from each"
                    raise ValueError(
                        f"{observer!r} is not observing this container" + (several if keys else "")
                    )
                key = keys[0]
            wrapper = self.wrappers.pop(key)
            self._replace("observers", lambda observers: [o for o in observers if o is not wrapper])
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


def _last_seq(chunk: tuple[tuple[Any, ...], ...]) -> int:
    return chunk[-1][0]  # type: ignore[no-any-return]


def _fan_out(feeds: list[Feed]) -> Feed | None:
    if not feeds:
        return None
    if len(feeds) == 1:
        return feeds[0]  # most often a subscription's deque.append: no Python frame

    def fan_out(raw: tuple[Any, ...]) -> None:
        for feed in feeds:
            feed(raw)

    return fan_out


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        with contextlib.suppress(RuntimeError):  # its loop is closed: nobody waits
            future.set_result(None)


class _View(NamedTuple):
    """The history at one moment (see ``Tracker._view``)."""

    chunks: list[tuple[tuple[Any, ...], ...]]
    tail: list[tuple[Any, ...]]
    newest: int  # the newest change's seq
    oldest: int  # the oldest kept change's seq (newest + 1: none kept)

    def after(self, seq: int) -> list[Change]:
        """The kept changes after ``seq``, oldest first."""
        seq = max(seq, self.oldest - 1)
        chunks = self.chunks
        first = bisect_right(chunks, seq, key=_last_seq)  # the first chunk reaching past
        raws: list[tuple[Any, ...]] = []
        for chunk in chunks[first : first + 1]:
            raws.extend(raw for raw in chunk if raw[0] > seq)
        for chunk in chunks[first + 1 :]:
            raws.extend(chunk)
        raws.extend(raw for raw in self.tail if raw[0] > seq)
        return [_new_change(Change, raw) for raw in raws]
