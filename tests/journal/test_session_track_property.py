"""Property: undoing a session that tracked a container gives back what it started as.

Random operations on a tracked tree (dict keys and nested lists and sets, replaced,
deleted, sliced, sorted), some inside a block that fails, journaled through
``session.track``; ``undo_session`` must restore the tree's starting content, whatever
the mix, on the in-memory and the SQLite journal, including when the session's task is
cancelled half-way.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retract import InMemoryStorage, Journal, SessionStatus, SQLiteStorage, TrackedDict

keys = st.sampled_from(["a", "b", "c"])
values = st.integers(0, 9) | st.lists(st.integers(0, 9), max_size=3)
ops = st.lists(
    st.one_of(
        st.tuples(st.just("set"), keys, values),
        st.tuples(st.just("del"), keys, st.none()),
        st.tuples(st.just("append"), st.none(), st.integers(0, 9)),
        st.tuples(st.just("pop"), st.none(), st.none()),
        st.tuples(st.just("slice"), st.integers(0, 3), st.lists(st.integers(0, 9), max_size=3)),
        st.tuples(st.just("sort"), st.none(), st.none()),
        st.tuples(st.just("tag"), st.none(), st.integers(0, 5)),
        st.tuples(st.just("untag"), st.none(), st.integers(0, 5)),
        st.tuples(st.just("clear"), keys, st.none()),
        st.tuples(st.just("pause"), st.none(), st.none()),
    ),
    max_size=30,
)
starts = st.fixed_dictionaries(
    {"items": st.lists(st.integers(0, 9), max_size=4), "tags": st.sets(st.integers(0, 5))},
    optional={"a": st.integers(0, 9), "b": st.lists(st.integers(0, 9), max_size=2)},
)


async def apply(tree: TrackedDict[str, Any], op: tuple[str, Any, Any]) -> None:
    action, where, value = op
    if action == "set":
        tree[where] = value
    elif action == "del":
        tree.pop(where, None)
    elif action == "append":
        tree["items"].append(value)
    elif action == "pop":
        if tree["items"]:
            tree["items"].pop()
    elif action == "slice":
        tree["items"][where : where + 1] = value
    elif action == "sort":
        tree["items"].sort(reverse=True)
    elif action == "tag":
        tree["tags"].add(value)
    elif action == "untag":
        tree["tags"].discard(value)
    elif action == "clear" and isinstance(tree.get(where), list):
        tree[where].clear()
    elif action == "pause":
        await asyncio.sleep(0)


def plain_items(tree: dict[str, Any]) -> dict[str, Any]:
    return {key: (set(v) if isinstance(v, set) else v) for key, v in tree.items()}


async def run(journal: Journal, start: dict[str, Any], steps: list[Any], cancel_at: int) -> None:
    tree: TrackedDict[str, Any] = TrackedDict(start)
    before = tree.to_plain()
    opened: list[str] = []

    async def body() -> None:
        async with journal.start_session() as session:
            opened.append(session.session_id)
            session.track(tree, "tree")
            for index, op in enumerate(steps):
                if index == cancel_at:  # cancelled right here, with the session open
                    current = asyncio.current_task()
                    assert current is not None
                    current.cancel()
                await apply(tree, op)
            await asyncio.sleep(0)

    task = asyncio.create_task(body())
    with contextlib.suppress(asyncio.CancelledError):
        await task
    (session,) = [s for s in await journal.list_sessions() if s.session_id in opened]
    # the cancellation lands at the next await: a pause, or the one at the end
    cancelled = cancel_at < len(steps)
    assert task.cancelled() is cancelled
    assert session.status is (SessionStatus.CANCELLED if cancelled else SessionStatus.COMPLETED)
    operations = await journal.get_operations(session.session_id)
    assert len(operations) == len(tree.tracking_changes())  # every change, journaled
    report = await journal.undo_session(session.session_id)
    assert report.status is SessionStatus.ROLLED_BACK
    assert plain_items(tree.to_plain()) == plain_items(before)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(start=starts, steps=ops, cancel_at=st.integers(0, 40))
def test_undo_restores_a_tracked_tree_in_memory(
    start: dict[str, Any], steps: list[Any], cancel_at: int
) -> None:
    """For any mix of operations (and a cancellation anywhere), undo gives back the start."""

    async def main() -> None:
        async with Journal(InMemoryStorage()) as journal:
            await run(journal, start, steps, cancel_at)

    asyncio.run(main())


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(start=starts, steps=ops, cancel_at=st.integers(0, 40))
def test_undo_restores_a_tracked_tree_on_sqlite(
    start: dict[str, Any], steps: list[Any], cancel_at: int
) -> None:
    """The same holds on the durable SQLite journal."""

    async def main(path: Path) -> None:
        async with Journal(SQLiteStorage(path)) as journal:
            await run(journal, start, steps, cancel_at)

    with TemporaryDirectory() as tmp:
        asyncio.run(main(Path(tmp) / "j.db"))
