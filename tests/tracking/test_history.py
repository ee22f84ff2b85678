"""History: bounded (or not), read by recency or from a cursor, shared by a whole tree."""

from __future__ import annotations

import gc
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retract import (
    HistoryTruncatedError,
    TrackedDict,
    TrackedList,
    TrackedSet,
)
from retract.tracking import DEFAULT_HISTORY
from retract.tracking._tracker import CHUNK


def filled(count: int, history: int | None) -> TrackedList[int]:
    items: TrackedList[int] = TrackedList(history=history)
    for i in range(count):
        items.append(i)
    return items


def seqs(changes: list[Any]) -> list[int]:
    return [change.seq for change in changes]


def test_default_history_keeps_the_newest_default_history_changes() -> None:
    """Without history=, the newest DEFAULT_HISTORY changes are kept."""
    items: TrackedList[int] = TrackedList()
    for i in range(DEFAULT_HISTORY + 5):
        items.append(i)
    changes = items.tracking_changes()
    assert len(changes) == DEFAULT_HISTORY
    assert changes[0].seq == 6
    assert changes[-1].seq == DEFAULT_HISTORY + 5


def test_bounded_history_keeps_only_the_newest_changes() -> None:
    """history=N keeps the N newest changes, oldest first."""
    assert seqs(filled(10, history=3).tracking_changes()) == [8, 9, 10]


def test_tracking_changes_says_how_many_changes_were_truncated() -> None:
    """The list's ``truncated`` counts the oldest changes the history no longer holds."""
    assert filled(10, history=3).tracking_changes().truncated == 7
    assert filled(10, history=3).tracking_changes(most_recent=1).truncated == 7
    assert filled(3, history=3).tracking_changes().truncated == 0
    assert filled(3, history=None).tracking_changes().truncated == 0
    assert filled(4, history=0).tracking_changes().truncated == 4
    assert TrackedDict().tracking_changes().truncated == 0


def test_seq_keeps_counting_after_old_changes_are_dropped() -> None:
    """Dropping old changes never reuses or resets sequence numbers."""
    items = filled(10, history=3)
    items.append(99)
    last = items.last_change()
    assert last is not None
    assert last.seq == 11


def test_history_none_is_unbounded() -> None:
    """history=None keeps every change."""
    assert seqs(filled(DEFAULT_HISTORY + 10, history=None).tracking_changes()) == list(
        range(1, DEFAULT_HISTORY + 11)
    )


def test_history_zero_keeps_nothing() -> None:
    """history=0 records (and numbers) changes but keeps none."""
    items = filled(3, history=0)
    assert items.tracking_changes() == []
    assert items.last_change() is None
    assert items.changes_since(3) == []


@pytest.mark.parametrize("history", [-1, 1.5, True, "10"])
def test_history_must_be_a_count_or_none(history: Any) -> None:
    """A history that is not an int >= 0 or None is refused with ValueError."""
    with pytest.raises(ValueError, match="history must be"):
        TrackedDict(history=history)


@pytest.mark.parametrize("kind", [TrackedDict, TrackedList, TrackedSet])
def test_every_container_takes_history(kind: type[Any]) -> None:
    """TrackedDict, TrackedList and TrackedSet all accept history=."""
    container = kind(history=1)
    assert container.tracking_changes() == []


def test_tracking_changes_most_recent_gives_the_newest_oldest_first() -> None:
    """tracking_changes(most_recent=N) is the N newest changes, oldest first."""
    assert seqs(filled(5, history=None).tracking_changes(most_recent=2)) == [4, 5]


def test_tracking_changes_most_recent_larger_than_history_gives_all_kept() -> None:
    """Asking for more changes than are kept gives every kept change."""
    assert seqs(filled(5, history=3).tracking_changes(most_recent=100)) == [3, 4, 5]


def test_tracking_changes_most_recent_zero_is_empty() -> None:
    """most_recent=0 is an empty list."""
    assert filled(5, history=None).tracking_changes(most_recent=0) == []


def test_tracking_changes_most_recent_negative_raises() -> None:
    """A negative most_recent is a ValueError."""
    with pytest.raises(ValueError, match="most_recent must be an int >= 0"):
        filled(5, history=None).tracking_changes(most_recent=-1)


def test_tracking_changes_is_a_copy() -> None:
    """Changing the returned list does not change the history."""
    items = filled(3, history=None)
    items.tracking_changes().clear()
    assert len(items.tracking_changes()) == 3


def test_last_change_is_none_before_any_change() -> None:
    """A container that never changed has no last change."""
    assert TrackedDict({"a": 1}).last_change() is None


def test_last_change_is_the_newest() -> None:
    """last_change() is the change of the latest mutation."""
    config: TrackedDict[str, int] = TrackedDict()
    config["a"] = 1
    config["a"] = 2
    last = config.last_change()
    assert last is not None
    assert (last.seq, last.path, last.action, last.old, last.new) == (2, ("a",), "replace", 1, 2)


def test_changes_since_a_change_excludes_it() -> None:
    """changes_since(change) is every change after it, oldest first."""
    items = filled(5, history=None)
    second = items.tracking_changes()[1]
    assert seqs(items.changes_since(second)) == [3, 4, 5]


def test_changes_since_a_seq() -> None:
    """changes_since(seq) works like changes_since(the change with that seq)."""
    assert seqs(filled(5, history=None).changes_since(3)) == [4, 5]


def test_changes_since_zero_is_everything() -> None:
    """Seq 0 is the cursor before the first change."""
    assert seqs(filled(3, history=None).changes_since(0)) == [1, 2, 3]


def test_changes_since_the_newest_is_empty() -> None:
    """Nothing happened after the newest change (or after a seq not reached yet)."""
    items = filled(3, history=None)
    assert items.changes_since(3) == []
    assert items.changes_since(50) == []


def test_changes_since_right_at_the_edge_of_the_history() -> None:
    """A cursor just before the oldest kept change still works."""
    assert seqs(filled(5, history=3).changes_since(2)) == [3, 4, 5]


@pytest.mark.parametrize("cursor", [-1, 1.0, "1", None])
def test_changes_since_a_bad_cursor_raises(cursor: Any) -> None:
    """A cursor that is neither a Change nor a seq >= 0 is a ValueError."""
    with pytest.raises(ValueError, match="expected a Change or a seq"):
        filled(3, history=None).changes_since(cursor)


def test_changes_since_a_truncated_cursor_raises_history_truncated_error() -> None:
    """A cursor that fell off the bounded history raises, saying what to do."""
    items = filled(5, history=3)
    with pytest.raises(HistoryTruncatedError) as caught:
        items.changes_since(1)
    message = str(caught.value)
    assert "change #2 and older are no longer in the history" in message
    assert "keeps the last 3 changes (now #3-#5)" in message
    assert "larger history=" in message


def test_history_truncated_error_is_a_lookup_error() -> None:
    """HistoryTruncatedError can be caught as LookupError."""
    with pytest.raises(LookupError):
        filled(5, history=1).changes_since(0)


def test_history_truncated_error_with_nothing_kept() -> None:
    """With history=0 the message says that no change is kept."""
    with pytest.raises(HistoryTruncatedError, match=r"keeps the last 0 changes \(now none\)"):
        filled(3, history=0).changes_since(1)


def test_changes_since_a_change_that_fell_off_raises() -> None:
    """A Change object as cursor is checked the same way as its seq."""
    items = filled(2, history=2)
    first = items.tracking_changes()[0]
    items.append(3)
    items.append(4)
    with pytest.raises(HistoryTruncatedError):
        items.changes_since(first)


def test_revert_past_the_history_raises_and_changes_nothing() -> None:
    """Reverting to a change that is no longer kept raises before undoing anything."""
    items = filled(2, history=2)
    first = items.tracking_changes()[0]
    items.append(3)
    with pytest.raises(HistoryTruncatedError):
        items.revert(first)
    assert items == [0, 1, 3]


def test_nested_child_reads_the_roots_history() -> None:
    """History calls on a nested child act on the root's history."""
    root: TrackedDict[str, Any] = TrackedDict({"child": {"x": 1}}, history=None)
    child = root["child"]
    root["other"] = 1
    child["x"] = 2
    assert child.tracking_changes() == root.tracking_changes()
    assert seqs(child.tracking_changes()) == [1, 2]
    assert child.last_change() == root.last_change()
    assert seqs(child.changes_since(1)) == [2]


def test_nested_child_is_bounded_by_the_roots_history() -> None:
    """A child's changes count against the root's history bound."""
    root: TrackedDict[str, Any] = TrackedDict({"items": []}, history=2)
    for i in range(4):
        root["items"].append(i)
    assert seqs(root["items"].tracking_changes()) == [3, 4]
    with pytest.raises(HistoryTruncatedError):
        root["items"].changes_since(1)


def test_changes_carry_actor_timestamp_and_kind() -> None:
    """A change records its actor (None by default), when it happened and the kind."""
    before = time.time()
    tags: TrackedSet[str] = TrackedSet()
    tags.add("x")
    change = tags.last_change()
    assert change is not None
    assert change.actor is None
    assert before <= change.timestamp <= time.time()
    assert change.kind == "set"


def test_snapshots_and_stacks_are_off_by_default() -> None:
    """Without capture_snapshots / capture_stack, those fields are None."""
    config: TrackedDict[str, int] = TrackedDict()
    config["a"] = 1
    change = config.last_change()
    assert change is not None
    assert change.snapshot is None
    assert change.stack is None


def test_capture_snapshots_stores_the_roots_content_after_each_change() -> None:
    """capture_snapshots=True records the whole tree, as plain values, after the change."""
    root: TrackedDict[str, Any] = TrackedDict({"items": [1]}, capture_snapshots=True)
    root["items"].append(2)
    root["flag"] = True
    first, second = root.tracking_changes()
    assert first.snapshot == {"items": [1, 2]}
    assert type(first.snapshot["items"]) is list
    assert second.snapshot == {"items": [1, 2], "flag": True}


def test_capture_stack_records_where_the_mutation_was_made() -> None:
    """capture_stack=True records a stack that shows the mutating code."""
    items: TrackedList[int] = TrackedList(capture_stack=True)
    items.append(1)
    change = items.last_change()
    assert change is not None
    assert change.stack is not None
    assert "test_capture_stack_records_where_the_mutation_was_made" in change.stack[-1]


@settings(max_examples=150, deadline=None)
@given(bound=st.none() | st.integers(0, 200), count=st.integers(0, 400))
def test_history_across_chunks_keeps_exactly_the_newest(bound: int | None, count: int) -> None:
    """Across sealed chunks and trims, reads see exactly the newest ``bound`` changes."""
    items = filled(count, history=bound)
    kept = count if bound is None else min(bound, count)
    changes = items.tracking_changes()
    assert seqs(changes) == list(range(count - kept + 1, count + 1))
    assert changes.truncated == count - kept
    assert [change.new for change in changes] == list(range(count - kept, count))
    for most_recent in (0, 1, 63, 64, 65, 500):
        expected = seqs(changes)[max(len(changes) - most_recent, 0) :]
        assert seqs(items.tracking_changes(most_recent)) == expected
    for cursor in range(count - kept, count + 1):
        assert seqs(items.changes_since(cursor)) == list(range(cursor + 1, count + 1))
    if count - kept > 0:
        with pytest.raises(HistoryTruncatedError):
            items.changes_since(count - kept - 1)
    last = items.last_change()
    assert (last.seq if last else None) == (count if kept else None)


def test_the_inlined_writes_seal_chunks_of_chunk_changes() -> None:
    """TrackedDict.__setitem__ and TrackedList.append seal every CHUNK (64) changes."""
    assert CHUNK == 64  # the inlined writes test ``seq & 63``
    config: TrackedDict[str, int] = TrackedDict(history=None)
    items: TrackedList[int] = TrackedList(history=None)
    for i in range(CHUNK * 3 + 5):
        config["k"] = i
        items.append(i)
    for tree in (config, items):
        tracker = tree._root_tracker()[1]
        assert [len(chunk) for chunk in tracker.chunks] == [CHUNK] * 3
        assert len(tracker.tail) == 5


def test_a_long_history_is_not_tracked_by_the_garbage_collector() -> None:
    """Sealed chunks of plain values drop out of the GC: a full collection stays cheap."""
    config: TrackedDict[str, Any] = TrackedDict(history=None)
    for i in range(CHUNK * 50):
        config[f"k{i % 7}"] = i
    for _ in range(3):  # a pass may look at a tuple before the tuples in it: 3 levels
        gc.collect()
    tracker = config._root_tracker()[1]
    assert not any(gc.is_tracked(chunk) for chunk in tracker.chunks)
