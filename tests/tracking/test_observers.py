"""Observers: called in order after each mutation, filtered, isolated when they raise."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from retract import Change, ChangeCollector, TrackedDict, TrackedList, TrackedSet


class Boom(Exception):
    """An observer failing on purpose."""


def tree() -> TrackedDict[str, Any]:
    return TrackedDict({"a": {"x": 1, "y": [1, 2]}, "b": {"x": 1}}, history=None)


def test_observers_are_called_in_registration_order() -> None:
    """Every observer is called with the change, in the order they were added."""
    calls: list[tuple[str, int]] = []
    config: TrackedDict[str, int] = TrackedDict()
    config.tracking_add_observer(lambda change: calls.append(("first", change.seq)))
    config.tracking_add_observer(lambda change: calls.append(("second", change.seq)))
    config["a"] = 1
    config["b"] = 2
    assert calls == [("first", 1), ("second", 1), ("first", 2), ("second", 2)]


def test_observer_sees_the_mutation_already_made() -> None:
    """An observer is called after the container changed."""
    config: TrackedDict[str, int] = TrackedDict()
    seen: list[dict[str, int]] = []
    config.tracking_add_observer(lambda change: seen.append(dict(config)))
    config["a"] = 1
    assert seen == [{"a": 1}]


def test_observer_gets_the_same_change_as_the_history() -> None:
    """The Change an observer gets is the one kept in the history."""
    collector = ChangeCollector()
    items: TrackedList[int] = TrackedList()
    items.tracking_add_observer(collector)
    items.append(1)
    assert collector.changes == items.tracking_changes()


def test_add_observer_returns_the_observer() -> None:
    """tracking_add_observer returns its argument, so it works as a decorator."""
    config: TrackedDict[str, int] = TrackedDict()
    seen: list[Change] = []

    @config.tracking_add_observer
    def observe(change: Change) -> None:
        seen.append(change)

    config["a"] = 1
    assert len(seen) == 1
    config.tracking_remove_observer(observe)


def test_filter_by_actions() -> None:
    """With actions=, only changes with those actions reach the observer."""
    collector = ChangeCollector()
    config: TrackedDict[str, int] = TrackedDict()
    config.tracking_add_observer(collector, actions={"replace", "remove"})
    config["a"] = 1
    config["a"] = 2
    del config["a"]
    assert [change.action for change in collector.changes] == ["replace", "remove"]


def test_filter_by_path_prefix() -> None:
    """With path_prefix=, only changes at or under that path reach the observer."""
    collector = ChangeCollector()
    root = tree()
    root.tracking_add_observer(collector, path_prefix=("a",))
    root["a"]["x"] = 2
    root["a"]["y"].append(3)
    root["b"]["x"] = 2
    root["c"] = 1
    assert [change.path for change in collector.changes] == [("a", "x"), ("a", "y", 2)]


def test_filter_by_actions_and_path_prefix() -> None:
    """Both filters together: a change must pass each."""
    collector = ChangeCollector()
    root = tree()
    root.tracking_add_observer(collector, actions=["add"], path_prefix=("a",))
    root["a"]["x"] = 2
    root["a"]["z"] = 3
    root["b"]["z"] = 3
    assert [change.path for change in collector.changes] == [("a", "z")]


def test_observer_on_a_child_sees_only_that_subtree() -> None:
    """An observer added on a nested container gets only the changes under it."""
    collector = ChangeCollector()
    root = tree()
    root["a"].tracking_add_observer(collector)
    root["a"]["x"] = 2
    root["b"]["x"] = 2
    root["c"] = 1
    assert [change.path for change in collector.changes] == [("a", "x")]


def test_path_prefix_on_a_child_is_relative_to_the_child() -> None:
    """path_prefix given on a child is under the child; change paths stay root paths."""
    collector = ChangeCollector()
    root = tree()
    root["a"].tracking_add_observer(collector, path_prefix=("y",))
    root["a"]["x"] = 2
    root["a"]["y"][0] = 10
    root["y"] = 1
    assert [change.path for change in collector.changes] == [("a", "y", 0)]


def test_observer_on_a_child_follows_it_when_its_index_changes() -> None:
    """An observer added on a list item keeps getting its changes after inserts before it."""
    collector = ChangeCollector()
    root: TrackedList[Any] = TrackedList([[0], [1]])
    child = root[1]
    child.tracking_add_observer(collector, path_prefix=(0,))
    root.insert(0, "first")
    child[0] = 10
    assert [change.path for change in collector.changes] == [(2, 0)]


def test_observer_on_a_child_ignores_whatever_takes_its_old_index() -> None:
    """After its child moved, the container now at the old index is not observed."""
    collector = ChangeCollector()
    root: TrackedList[Any] = TrackedList([[0], [1]])
    root[1].tracking_add_observer(collector)
    root.insert(0, [])
    root[1].append(5)
    assert collector.changes == []


def test_observer_on_a_child_stops_when_the_child_leaves_the_tree() -> None:
    """A removed child's changes, and the tree's, no longer reach its observers."""
    collector = ChangeCollector()
    root = tree()
    child = root["a"]
    child.tracking_add_observer(collector)
    del root["a"]
    child["x"] = 2
    root["a"] = {"x": 3}
    root["a"]["x"] = 4
    assert [change.path for change in collector.changes] == []


def test_observer_that_raises_is_counted_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    """An observer that raises is counted in tracking_observer_errors and logged."""

    def fail(change: Change) -> None:
        raise Boom(f"cannot handle #{change.seq}")

    config: TrackedDict[str, int] = TrackedDict()
    config.tracking_add_observer(fail)
    with caplog.at_level(logging.ERROR, logger="retract"):
        config["a"] = 1
        config["b"] = 2
    assert config.tracking_observer_errors == 2
    records = [r for r in caplog.records if r.name == "retract"]
    assert len(records) == 2
    assert "observer raised" in records[0].getMessage()
    assert records[0].exc_info is not None
    assert isinstance(records[0].exc_info[1], Boom)


def test_mutation_stands_when_an_observer_raises() -> None:
    """The container is changed (and the change kept) even though an observer raised."""

    def fail(change: Change) -> None:
        raise Boom

    items: TrackedList[int] = TrackedList([1])
    items.tracking_add_observer(fail)
    items.append(2)
    items.extend([3, 4])
    assert items == [1, 2, 3, 4]
    assert len(items.tracking_changes()) == 2


def test_other_observers_run_when_one_raises() -> None:
    """Observers before and after a raising one are all called."""
    before, after = ChangeCollector(), ChangeCollector()

    def fail(change: Change) -> None:
        raise Boom

    tags: TrackedSet[str] = TrackedSet()
    tags.tracking_add_observer(before)
    tags.tracking_add_observer(fail)
    tags.tracking_add_observer(after)
    tags.add("x")
    assert len(before) == 1
    assert len(after) == 1


def test_observer_errors_are_counted_per_tree() -> None:
    """A child reports the root's observer error count."""

    def fail(change: Change) -> None:
        raise Boom

    root = tree()
    root.tracking_add_observer(fail)
    root["a"]["x"] = 5
    assert root["a"].tracking_observer_errors == 1
    assert root.tracking_observer_errors == 1


def test_no_observer_errors_by_default() -> None:
    """A container whose observers never raised reports 0."""
    assert TrackedList().tracking_observer_errors == 0


def test_change_collector_collects_changes_in_order() -> None:
    """ChangeCollector keeps every change, oldest first; len() counts them."""
    collector = ChangeCollector()
    items: TrackedList[int] = TrackedList()
    items.tracking_add_observer(collector)
    items.append(1)
    items.append(2)
    assert len(collector) == 2
    assert [change.seq for change in collector.changes] == [1, 2]


def test_change_collector_as_list_is_a_copy() -> None:
    """as_list() returns a copy that later changes do not extend."""
    collector = ChangeCollector()
    items: TrackedList[int] = TrackedList()
    items.tracking_add_observer(collector)
    items.append(1)
    snapshot = collector.as_list()
    items.append(2)
    assert len(snapshot) == 1
    assert len(collector.as_list()) == 2


def test_change_collector_clear_forgets() -> None:
    """clear() empties the collector; it keeps collecting afterwards."""
    collector = ChangeCollector()
    items: TrackedList[int] = TrackedList()
    items.tracking_add_observer(collector)
    items.append(1)
    collector.clear()
    items.append(2)
    assert [change.seq for change in collector.changes] == [2]


def test_removed_observer_is_not_called() -> None:
    """After tracking_remove_observer, the observer gets no more changes."""
    collector = ChangeCollector()
    config: TrackedDict[str, int] = TrackedDict()
    config.tracking_add_observer(collector)
    config["a"] = 1
    config.tracking_remove_observer(collector)
    config["b"] = 2
    assert len(collector) == 1


def test_removing_a_filtered_observer_by_the_original_callable() -> None:
    """A filtered observer is removed with the callable that was added."""
    collector = ChangeCollector()
    config: TrackedDict[str, int] = TrackedDict()
    config.tracking_add_observer(collector, actions=["add"])
    config.tracking_remove_observer(collector)
    config["a"] = 1
    assert len(collector) == 0


def test_observer_added_on_a_child_is_removed_through_the_root() -> None:
    """Observers belong to the tree: one added on a child can be removed on the root."""
    collector = ChangeCollector()
    root = tree()
    root["a"].tracking_add_observer(collector)
    root.tracking_remove_observer(collector)
    root["a"]["x"] = 2
    assert len(collector) == 0


def test_removing_an_unknown_observer_raises_value_error() -> None:
    """Removing an observer that was never added is a ValueError that names it."""
    collector = ChangeCollector()
    with pytest.raises(ValueError, match="is not observing this container"):
        TrackedDict().tracking_remove_observer(collector)


def test_removing_an_observer_twice_raises_value_error() -> None:
    """The second removal of the same observer is a ValueError."""
    collector = ChangeCollector()
    config: TrackedDict[str, int] = TrackedDict()
    config.tracking_add_observer(collector)
    config.tracking_remove_observer(collector)
    with pytest.raises(ValueError, match="is not observing"):
        config.tracking_remove_observer(collector)


def test_adding_an_observer_twice_raises_value_error() -> None:
    """The same observer cannot be added twice to one container."""
    collector = ChangeCollector()
    root = tree()
    root["a"].tracking_add_observer(collector)
    with pytest.raises(ValueError, match="already observing"):
        root["a"].tracking_add_observer(collector)


def test_one_observer_may_watch_several_containers_of_a_tree() -> None:
    """Added on two children, it gets each one's changes; removed from each in turn."""
    collector = ChangeCollector()
    root: TrackedDict[str, Any] = TrackedDict({"a": {}, "b": {}})
    root["a"].tracking_add_observer(collector)
    root["b"].tracking_add_observer(collector)
    root["a"]["x"] = 1
    root["b"]["y"] = 2
    assert [change.path for change in collector] == [("a", "x"), ("b", "y")]
    with pytest.raises(ValueError, match="several containers of this tree"):
        root.tracking_remove_observer(collector)
    root["a"].tracking_remove_observer(collector)
    root["a"]["x"] = 3
    root["b"]["y"] = 4
    assert [change.new for change in collector] == [1, 2, 4]
    root.tracking_remove_observer(collector)  # the only one left, added on b
    root["b"]["y"] = 5
    assert len(collector) == 3


def test_adding_a_non_callable_observer_raises_type_error() -> None:
    """An observer must be callable."""
    with pytest.raises(TypeError, match="must be callable"):
        TrackedDict().tracking_add_observer(42)  # type: ignore[arg-type]


def test_observer_removing_itself_does_not_skip_the_next_one() -> None:
    """An observer may remove itself while being called; the others still run."""
    config: TrackedDict[str, int] = TrackedDict()
    after = ChangeCollector()

    def once(change: Change) -> None:
        config.tracking_remove_observer(once)

    config.tracking_add_observer(once)
    config.tracking_add_observer(after)
    config["a"] = 1
    config["b"] = 2
    assert [change.seq for change in after.changes] == [1, 2]


def test_observer_added_during_a_call_sees_only_later_changes() -> None:
    """An observer added while observers run starts with the next change."""
    config: TrackedDict[str, int] = TrackedDict()
    late = ChangeCollector()

    def add_late(change: Change) -> None:
        if change.seq == 1:
            config.tracking_add_observer(late)

    config.tracking_add_observer(add_late)
    config["a"] = 1
    config["b"] = 2
    assert [change.seq for change in late.changes] == [2]
