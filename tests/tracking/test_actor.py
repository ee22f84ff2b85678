"""tracking_actor: who made a change, per task (and per thread), restored on exit."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from retract import Change, TrackedDict, TrackedList, tracking_actor


class Boom(Exception):
    """A block failing on purpose."""


def actors(changes: list[Change]) -> list[str | None]:
    return [change.actor for change in changes]


def test_actor_is_none_by_default() -> None:
    """Changes made outside tracking_actor have no actor."""
    items: TrackedList[int] = TrackedList()
    items.append(1)
    assert actors(items.tracking_changes()) == [None]


def test_actor_is_recorded_inside_the_block() -> None:
    """Changes made inside tracking_actor(name) carry that name; later ones do not."""
    items: TrackedList[int] = TrackedList()
    with tracking_actor("alice"):
        items.append(1)
        items.extend([2, 3])
    items.append(4)
    assert actors(items.tracking_changes()) == ["alice", "alice", None]


def test_nested_blocks_restore_the_outer_actor() -> None:
    """Leaving an inner tracking_actor gives the outer actor back."""
    items: TrackedList[int] = TrackedList()
    with tracking_actor("outer"):
        items.append(1)
        with tracking_actor("inner"):
            items.append(2)
        items.append(3)
    assert actors(items.tracking_changes()) == ["outer", "inner", "outer"]


def test_actor_none_inside_a_block_clears_it() -> None:
    """tracking_actor(None) makes changes anonymous for the block's duration."""
    items: TrackedList[int] = TrackedList()
    with tracking_actor("outer"):
        with tracking_actor(None):
            items.append(1)
        items.append(2)
    assert actors(items.tracking_changes()) == [None, "outer"]


def test_actor_is_restored_when_the_block_raises() -> None:
    """An exception leaving the block still restores the previous actor."""
    items: TrackedList[int] = TrackedList()
    with tracking_actor("outer"):
        with pytest.raises(Boom), tracking_actor("inner"):
            raise Boom
        items.append(1)
    assert actors(items.tracking_changes()) == ["outer"]


def test_actor_applies_to_nested_children() -> None:
    """A change deep in a tree records the actor of the code that made it."""
    root: TrackedDict[str, Any] = TrackedDict({"a": {"b": []}})
    with tracking_actor("bob"):
        root["a"]["b"].append(1)
    assert actors(root.tracking_changes()) == ["bob"]


async def test_concurrent_tasks_each_record_their_own_actor() -> None:
    """Tasks interleaving writes to one container each see their own actor."""
    config: TrackedDict[str, int] = TrackedDict(history=None)

    async def work(name: str) -> None:
        with tracking_actor(name):
            for i in range(20):
                config[f"{name}-{i}"] = i
                await asyncio.sleep(0)

    await asyncio.gather(*(work(name) for name in ("alice", "bob", "carol")))
    changes = config.tracking_changes()
    assert len(changes) == 60
    for change in changes:
        assert change.path[0].startswith(f"{change.actor}-")
    # the writes really interleaved
    assert actors(changes[:3]) == ["alice", "bob", "carol"]


async def test_nesting_inside_concurrent_tasks_restores_each_tasks_actor() -> None:
    """An inner block in one task neither leaks into other tasks nor outlives itself."""
    items: TrackedList[tuple[str, str]] = TrackedList(history=None)

    async def work(name: str) -> None:
        with tracking_actor(name):
            await asyncio.sleep(0)
            with tracking_actor(f"{name}/inner"):
                items.append((name, "inner"))
                await asyncio.sleep(0)
            items.append((name, "outer"))
            await asyncio.sleep(0)
            items.append((name, "outer"))

    await asyncio.gather(work("a"), work("b"))
    for change in items.tracking_changes():
        name, where = change.new
        assert change.actor == (f"{name}/inner" if where == "inner" else name)


async def test_a_task_does_not_change_its_parents_actor() -> None:
    """A child task setting an actor leaves the creating task's actor alone."""
    items: TrackedList[str] = TrackedList()

    async def child() -> None:
        with tracking_actor("child"):
            items.append("child")
            await asyncio.sleep(0)

    with tracking_actor("parent"):
        task = asyncio.create_task(child())
        await asyncio.sleep(0)
        items.append("parent")
        await task
    assert actors(items.tracking_changes()) == ["child", "parent"]


def test_threads_have_their_own_actor() -> None:
    """Another thread does not see (or change) this thread's actor."""
    items: TrackedList[str] = TrackedList(history=None)

    def work() -> None:
        items.append("thread")
        with tracking_actor("thread"):
            items.append("thread")

    with tracking_actor("main"):
        thread = threading.Thread(target=work)
        thread.start()
        thread.join()
        items.append("main")
    assert actors(items.tracking_changes()) == [None, "thread", "main"]
