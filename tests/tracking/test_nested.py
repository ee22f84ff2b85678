"""Trees of tracked containers: paths, detaching, copies, locks, transactions, revert."""

from __future__ import annotations

import asyncio
import copy
import pickle
from collections.abc import Callable
from typing import Any

import pytest

from retract import (
    Change,
    ChangeCollector,
    ContainerLockedError,
    TrackedDict,
    TrackedList,
    TrackedSet,
)
from retract.tracking._change import json_pointer


class Boom(Exception):
    """A block failing on purpose."""


def make_tree() -> TrackedDict[str, Any]:
    return TrackedDict(
        {"users": [{"name": "ann", "tags": ["a"]}, {"name": "bob", "tags": []}], "n": 1},
        history=None,
    )


def last(container: Any) -> Change:
    change = container.last_change()
    assert change is not None
    return change  # type: ignore[no-any-return]


# -- paths ------------------------------------------------------------------------------


def test_change_deep_in_the_tree_has_its_path_from_the_root() -> None:
    """A dict in a list in a dict records its change with keys and indices from the root."""
    root = make_tree()
    root["users"][1]["name"] = "bea"
    change = last(root)
    assert (change.path, change.action, change.old, change.new) == (
        ("users", 1, "name"),
        "replace",
        "bob",
        "bea",
    )
    assert change.kind == "dict"


def test_list_change_deep_in_the_tree_has_its_index() -> None:
    """An append deep in the tree ends its path with the new index."""
    root = make_tree()
    root["users"][0]["tags"].append("b")
    change = last(root)
    assert (change.path, change.action, change.new, change.kind) == (
        ("users", 0, "tags", 1),
        "add",
        "b",
        "list",
    )


def test_set_change_deep_in_the_tree_ends_with_the_element() -> None:
    """A set inside a dict records its element at the end of the path."""
    root: TrackedDict[str, Any] = TrackedDict({"s": {1}})
    root["s"].add(2)
    change = last(root)
    assert (change.path, change.kind) == (("s", 2), "set")


def test_plain_containers_stored_in_become_tracked_copies() -> None:
    """A plain dict, list or set assigned in is stored as a tracked copy."""
    inner: dict[str, Any] = {"x": [1], "s": {1}}
    root: TrackedDict[str, Any] = TrackedDict()
    root["a"] = inner
    assert isinstance(root["a"], TrackedDict)
    assert isinstance(root["a"]["x"], TrackedList)
    assert isinstance(root["a"]["s"], TrackedSet)
    inner["x"].append(2)
    assert root["a"]["x"] == [1]
    assert len(root.tracking_changes()) == 1


def test_a_tracked_container_from_another_tree_is_copied_in() -> None:
    """Storing another tree's container copies it; the other tree is left alone."""
    other: TrackedDict[str, Any] = TrackedDict({"x": [1]})
    root: TrackedDict[str, Any] = TrackedDict()
    root["a"] = other["x"]
    root["a"].append(2)
    assert other == {"x": [1]}
    assert other.tracking_changes() == []
    assert last(root).path == ("a", 1)


def test_initial_content_is_tracked_too() -> None:
    """Containers given to the constructor are tracked children from the start."""
    root: TrackedList[Any] = TrackedList([{"a": [1]}, [2], {3}])
    assert [type(item) for item in root] == [TrackedDict, TrackedList, TrackedSet]
    root[0]["a"].append(2)
    assert last(root).path == (0, "a", 1)


def test_fromkeys_makes_a_tracked_root_with_a_child_per_key() -> None:
    """TrackedDict.fromkeys gives each key its own tracked copy of a container value."""
    root = TrackedDict.fromkeys(["a", "b"], [])
    assert type(root) is TrackedDict
    assert root.tracking_changes() == []
    root["a"].append(1)
    assert root == {"a": [1], "b": []}
    assert last(root).path == ("a", 0)


def test_repr_names_the_tracked_type() -> None:
    """The repr says which tracked container it is."""
    assert repr(TrackedDict({"a": [1]})) == "TrackedDict({'a': TrackedList([1])})"
    assert repr(TrackedSet()) == "TrackedSet()"
    assert repr(TrackedSet({1})) == "TrackedSet({1})"


@pytest.mark.parametrize(
    ("move", "index"),
    [
        (lambda items: items.insert(0, "new"), 2),
        (lambda items: items.__setitem__(slice(0, 0), ["x", "y"]), 3),
        (lambda items: items.__delitem__(0), 0),
        (lambda items: items.reverse(), 2),
        (lambda items: items.sort(key=lambda item: isinstance(item, list)), 3),
        (lambda items: items.extend(["tail"]), 1),
    ],
    ids=["insert before", "slice insert", "delete before", "reverse", "sort", "extend"],
)
def test_child_moved_in_its_list_reports_its_new_index(
    move: Callable[[TrackedList[Any]], object], index: int
) -> None:
    """A child whose index changed reports its changes at the new index."""
    root: TrackedDict[str, Any] = TrackedDict({"items": ["first", [0], "middle", "last"]})
    child = root["items"][1]
    move(root["items"])
    assert root["items"][index] is child
    child.append(1)
    assert last(root).path == ("items", index, 1)


def test_change_values_are_plain_copies_not_live_containers() -> None:
    """A change's old and new are plain copies that later mutations do not touch."""
    root: TrackedDict[str, Any] = TrackedDict()
    root["a"] = {"x": [1]}
    root["a"]["x"].append(2)
    first = root.tracking_changes()[0]
    assert first.new == {"x": [1]}
    assert type(first.new) is dict
    assert type(first.new["x"]) is list


def test_overwrite_keeps_the_old_value() -> None:
    """Replacing a value records the value it replaced (a plain copy)."""
    root: TrackedDict[str, Any] = TrackedDict({"a": {"x": 1}})
    root["a"] = 2
    change = last(root)
    assert (change.action, change.old, change.new) == ("replace", {"x": 1}, 2)


# -- detaching --------------------------------------------------------------------------


DICT_REMOVALS: dict[str, Callable[[TrackedDict[str, Any]], object]] = {
    "del": lambda d: d.__delitem__("child"),
    "pop": lambda d: d.pop("child"),
    "popitem": lambda d: d.popitem(),
    "replace": lambda d: d.__setitem__("child", 0),
    "update": lambda d: d.update(child=0),
    "ior": lambda d: d.__ior__({"child": 0}),
    "clear": lambda d: d.clear(),
}
LIST_REMOVALS: dict[str, Callable[[TrackedList[Any]], object]] = {
    "del": lambda x: x.__delitem__(1),
    "del slice": lambda x: x.__delitem__(slice(1, 2)),
    "del extended slice": lambda x: x.__delitem__(slice(1, None, 2)),
    "pop": lambda x: x.pop(),
    "remove": lambda x: x.remove([1]),
    "replace": lambda x: x.__setitem__(1, 0),
    "slice": lambda x: x.__setitem__(slice(0, 2), []),
    "extended slice": lambda x: x.__setitem__(slice(1, None, 2), [0]),
    "clear": lambda x: x.clear(),
    "imul 0": lambda x: x.__imul__(0),
}


@pytest.mark.parametrize("how", DICT_REMOVALS)
def test_child_removed_from_a_dict_stops_reporting_to_it(how: str) -> None:
    """After removal from a dict, a child's changes no longer reach the old root."""
    root: TrackedDict[str, Any] = TrackedDict({"child": [1]})
    collector = ChangeCollector()
    root.tracking_add_observer(collector)
    child = root["child"]
    DICT_REMOVALS[how](root)
    seen = len(collector)
    child.append(2)
    assert len(collector) == seen
    assert len(root.tracking_changes()) == seen


@pytest.mark.parametrize("how", LIST_REMOVALS)
def test_child_removed_from_a_list_stops_reporting_to_it(how: str) -> None:
    """After removal from a list, a child's changes no longer reach the old root."""
    root: TrackedList[Any] = TrackedList(["first", [1]])
    collector = ChangeCollector()
    root.tracking_add_observer(collector)
    child = root[1]
    LIST_REMOVALS[how](root)
    seen = len(collector)
    child.append(2)
    assert len(collector) == seen


def test_removed_child_becomes_a_root_of_its_own() -> None:
    """A detached child records its own changes from seq 1 with root-relative paths."""
    root = make_tree()
    user = root["users"].pop(0)
    user["tags"].append("z")
    assert [(change.seq, change.path) for change in user.tracking_changes()] == [(1, ("tags", 1))]
    assert user["tags"].tracking_changes() == user.tracking_changes()


def test_child_replaced_in_place_keeps_reporting_through_the_new_value() -> None:
    """After a replace, the new child at the same key reports to the root."""
    root: TrackedDict[str, Any] = TrackedDict({"a": [1]})
    old = root["a"]
    root["a"] = [9]
    old.append(2)
    root["a"].append(10)
    assert [change.path for change in root.tracking_changes()] == [("a",), ("a", 1)]


def test_popped_child_keeps_its_content() -> None:
    """What pop returns is the child itself, content intact."""
    root = make_tree()
    user = root["users"].pop()
    assert user == {"name": "bob", "tags": []}
    assert isinstance(user, TrackedDict)


# -- copies -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "duplicate",
    [copy.copy, copy.deepcopy, lambda value: pickle.loads(pickle.dumps(value))],  # noqa: S301
    ids=["copy", "deepcopy", "pickle"],
)
def test_copies_are_independent_new_roots(duplicate: Callable[[Any], Any]) -> None:
    """copy, deepcopy and pickle give an equal tree with its own empty history."""
    root = make_tree()
    root["n"] = 2
    twin = duplicate(root)
    assert type(twin) is TrackedDict
    assert twin == root
    assert twin.tracking_changes() == []
    twin["users"][0]["tags"].append("b")
    assert root["users"][0]["tags"] == ["a"]
    assert len(root.tracking_changes()) == 1
    assert [change.path for change in twin.tracking_changes()] == [("users", 0, "tags", 1)]


@pytest.mark.parametrize(
    "duplicate",
    [copy.copy, copy.deepcopy, lambda value: pickle.loads(pickle.dumps(value))],  # noqa: S301
    ids=["copy", "deepcopy", "pickle"],
)
def test_copy_of_a_child_is_a_new_root(duplicate: Callable[[Any], Any]) -> None:
    """Copying a nested container gives a root whose changes stay its own."""
    root = make_tree()
    tags = duplicate(root["users"][0]["tags"])
    tags.append("b")
    assert type(tags) is TrackedList
    assert root.tracking_changes() == []
    assert last(tags).path == (1,)


@pytest.mark.parametrize("kind", [TrackedList, TrackedSet])
def test_list_and_set_copies_are_new_roots(kind: type[Any]) -> None:
    """TrackedList and TrackedSet copy and pickle as themselves."""
    original = kind([1, 2])
    for twin in (copy.copy(original), pickle.loads(pickle.dumps(original))):  # noqa: S301
        assert type(twin) is kind
        assert twin == original
        assert twin.tracking_changes() == []


# -- locks ------------------------------------------------------------------------------

DICT_MUTATORS: dict[str, Callable[[Any], object]] = {
    "setitem": lambda d: d.__setitem__("k", 1),
    "setitem existing": lambda d: d.__setitem__("n", 2),
    "delitem": lambda d: d.__delitem__("n"),
    "pop": lambda d: d.pop("n"),
    "pop default": lambda d: d.pop("missing", None),
    "popitem": lambda d: d.popitem(),
    "setdefault": lambda d: d.setdefault("k", 1),
    "clear": lambda d: d.clear(),
    "update": lambda d: d.update(k=1),
    "ior": lambda d: d.__ior__({"k": 1}),
}
LIST_MUTATORS: dict[str, Callable[[Any], object]] = {
    "setitem": lambda x: x.__setitem__(0, 9),
    "setitem slice": lambda x: x.__setitem__(slice(0, 1), [9]),
    "delitem": lambda x: x.__delitem__(0),
    "delitem slice": lambda x: x.__delitem__(slice(0, 1)),
    "append": lambda x: x.append(9),
    "extend": lambda x: x.extend([9]),
    "iadd": lambda x: x.__iadd__([9]),
    "imul": lambda x: x.__imul__(2),
    "insert": lambda x: x.insert(0, 9),
    "remove": lambda x: x.remove(x[0]),
    "pop": lambda x: x.pop(),
    "sort": lambda x: x.sort(reverse=True),
    "reverse": lambda x: x.reverse(),
    "clear": lambda x: x.clear(),
}
SET_MUTATORS: dict[str, Callable[[Any], object]] = {
    "add": lambda s: s.add(9),
    "discard": lambda s: s.discard(1),
    "remove": lambda s: s.remove(1),
    "pop": lambda s: s.pop(),
    "clear": lambda s: s.clear(),
    "update": lambda s: s.update({9}),
    "difference_update": lambda s: s.difference_update({1}),
    "intersection_update": lambda s: s.intersection_update(set()),
    "symmetric_difference_update": lambda s: s.symmetric_difference_update({9}),
    "ior": lambda s: s.__ior__({9}),
    "isub": lambda s: s.__isub__({1}),
    "iand": lambda s: s.__iand__(set()),
    "ixor": lambda s: s.__ixor__({9}),
}
MUTATORS = [
    *((f"dict {name}", "d", operation) for name, operation in DICT_MUTATORS.items()),
    *((f"list {name}", "l", operation) for name, operation in LIST_MUTATORS.items()),
    *((f"set {name}", "s", operation) for name, operation in SET_MUTATORS.items()),
]


def locked_tree() -> TrackedDict[str, Any]:
    return TrackedDict({"d": {"n": 1}, "l": [1, 2], "s": {1, 2}, "n": 1})


@pytest.mark.parametrize(
    ("name", "key", "operation"), MUTATORS, ids=[name for name, _, _ in MUTATORS]
)
def test_locked_child_refuses_every_mutator(
    name: str, key: str, operation: Callable[[Any], object]
) -> None:
    """Once the root is locked, each mutator of a child raises and changes nothing."""
    root = locked_tree()
    root.lock()
    with pytest.raises(ContainerLockedError, match=r"locked; call unlock\(\)"):
        operation(root[key])
    assert root.to_plain() == locked_tree().to_plain()
    assert root.tracking_changes() == []


@pytest.mark.parametrize(
    ("name", "key", "operation"), MUTATORS, ids=[name for name, _, _ in MUTATORS]
)
def test_locked_root_refuses_every_mutator(
    name: str, key: str, operation: Callable[[Any], object]
) -> None:
    """A locked root container (dict, list or set) refuses each of its mutators."""
    container = copy.copy(locked_tree()[key])
    before = container.to_plain()
    container.lock()
    with pytest.raises(ContainerLockedError):
        operation(container)
    assert container.to_plain() == before


@pytest.mark.parametrize(
    ("name", "key", "operation"), MUTATORS, ids=[name for name, _, _ in MUTATORS]
)
def test_unlock_allows_mutations_again(
    name: str, key: str, operation: Callable[[Any], object]
) -> None:
    """After unlock() every mutator works again, on the root's children too."""
    root = locked_tree()
    root.lock()
    root.unlock()
    operation(root[key])  # no ContainerLockedError
    assert not root[key].locked


def test_container_locked_error_is_a_runtime_error() -> None:
    """ContainerLockedError can be caught as RuntimeError."""
    items: TrackedList[int] = TrackedList()
    items.lock()
    with pytest.raises(RuntimeError):
        items.append(1)


def test_locked_property_follows_lock_and_unlock() -> None:
    """The locked property is True between lock() and unlock(), for the root and its children."""
    root = locked_tree()
    states = [(root.locked, root["l"].locked)]
    root.lock()
    states.append((root.locked, root["l"].locked))
    root.unlock()
    states.append((root.locked, root["l"].locked))
    assert states == [(False, False), (True, True), (False, False)]


def test_locking_a_child_leaves_its_parent_open() -> None:
    """lock() on a child locks that subtree only."""
    root = locked_tree()
    root["l"].lock()
    root["n"] = 2
    with pytest.raises(ContainerLockedError):
        root["l"].append(3)


def test_locked_container_can_still_be_read() -> None:
    """Reads and copies work on a locked container."""
    root = locked_tree()
    root.lock()
    assert root["d"]["n"] == 1
    assert root.to_plain()["l"] == [1, 2]
    assert copy.deepcopy(root) == root


def test_locked_container_refuses_revert() -> None:
    """revert() goes through the mutators, so a locked container refuses it."""
    items: TrackedList[int] = TrackedList()
    items.append(1)
    items.lock()
    with pytest.raises(ContainerLockedError):
        items.revert(last(items))
    assert items == [1]


# -- transactions -----------------------------------------------------------------------


def test_transaction_rolls_back_when_the_block_raises() -> None:
    """Every change made in a failing block is reverted, and the error propagates."""
    root = make_tree()
    before = root.to_plain()
    with pytest.raises(Boom), root.transaction():
        root["n"] = 2
        root["users"][0]["tags"].append("b")
        del root["users"][1]
        root["users"].sort(key=len)
        root["new"] = {"x": 1}
        raise Boom
    assert root.to_plain() == before


def test_transaction_keeps_changes_when_the_block_succeeds() -> None:
    """A block that does not raise keeps its changes."""
    root = make_tree()
    with root.transaction():
        root["n"] = 2
    assert root["n"] == 2
    assert len(root.tracking_changes()) == 1


def test_transaction_rollback_is_recorded() -> None:
    """The reverting changes are in the history, after the ones they undo."""
    config: TrackedDict[str, int] = TrackedDict()
    with pytest.raises(Boom), config.transaction():
        config["a"] = 1
        config["b"] = 2
        raise Boom
    assert [(change.action, change.path) for change in config.tracking_changes()] == [
        ("add", ("a",)),
        ("add", ("b",)),
        ("remove", ("b",)),
        ("remove", ("a",)),
    ]


def test_transaction_on_a_child_rolls_back_the_tree() -> None:
    """transaction() on a nested container works on the whole tree."""
    root = make_tree()
    before = root.to_plain()
    with pytest.raises(Boom), root["users"].transaction():
        root["users"].append({"name": "cy"})
        root["n"] = 5
        raise Boom
    assert root.to_plain() == before


def test_failed_inner_transaction_inside_a_successful_outer_one() -> None:
    """An inner transaction that fails is reverted; the outer block's changes stay."""
    config: TrackedDict[str, int] = TrackedDict()
    with config.transaction():
        config["outer"] = 1
        with pytest.raises(Boom), config.transaction():
            config["inner"] = 2
            raise Boom
    assert config == {"outer": 1}


def test_nested_transactions_that_both_fail_roll_everything_back() -> None:
    """An error through two nested transactions reverts both, and is the one raised."""
    config: TrackedDict[str, int] = TrackedDict({"a": 0})
    with pytest.raises(Boom), config.transaction(), config.transaction():
        config["a"] = 1
        raise Boom
    assert config == {"a": 0}
    assert config._root_tracker()[1].feeds == []


def test_outer_transaction_reverts_an_inner_one_that_succeeded() -> None:
    """An outer failure also undoes an inner transaction's kept changes."""
    config: TrackedDict[str, int] = TrackedDict({"a": 0})
    with pytest.raises(Boom), config.transaction():
        config["a"] = 1
        with config.transaction():
            config["a"] = 2
        raise Boom
    assert config == {"a": 0}


async def test_cancelled_task_rolls_its_transaction_back() -> None:
    """Cancellation inside the block (a BaseException) also rolls back."""
    config: TrackedDict[str, int] = TrackedDict({"a": 0})
    started = asyncio.Event()

    async def work() -> None:
        with config.transaction():
            config["a"] = 1
            started.set()
            await asyncio.sleep(10)

    task = asyncio.create_task(work())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert config == {"a": 0}


# -- revert and inverse -----------------------------------------------------------------


def test_revert_a_change_in_the_middle_restores_the_state_before_it() -> None:
    """revert(change) undoes it and everything after, newest first."""
    root: TrackedDict[str, Any] = TrackedDict(history=None)
    states = []
    root["a"] = [1]
    states.append(root.to_plain())
    root["a"].append(2)
    states.append(root.to_plain())
    root["b"] = {"c": 3}
    root["a"][0:1] = [7, 8]
    root["b"]["c"] = 4
    third = root.tracking_changes()[2]
    root.revert(third)
    assert root.to_plain() == states[1]


def test_revert_is_recorded_as_new_changes() -> None:
    """Reverting adds the inverse changes to the history; nothing is erased."""
    items: TrackedList[int] = TrackedList()
    items.append(1)
    items.append(2)
    items.revert(items.tracking_changes()[0])
    assert [(change.seq, change.action) for change in items.tracking_changes()] == [
        (1, "add"),
        (2, "add"),
        (3, "remove"),
        (4, "remove"),
    ]


def test_revert_can_itself_be_reverted() -> None:
    """Reverting the reverting changes brings the reverted state back."""
    items: TrackedList[int] = TrackedList([5])
    items.append(1)
    items.sort()
    after = list(items)
    items.revert(items.tracking_changes()[0])
    assert items == [5]
    items.revert(items.tracking_changes()[2])
    assert items == after


def test_revert_through_a_detached_child() -> None:
    """Changes to a child that was later replaced revert by path from the root."""
    root: TrackedDict[str, Any] = TrackedDict({"a": {"x": 1}})
    root["a"]["x"] = 2
    root["a"] = 5
    root.revert(root.tracking_changes()[0])
    assert root.to_plain() == {"a": {"x": 1}}


@pytest.mark.parametrize(
    ("action", "inverse"),
    [("add", "remove"), ("remove", "add"), ("replace", "replace"), ("splice", "splice")],
)
def test_inverse_swaps_old_and_new(action: Any, inverse: str) -> None:
    """inverse() swaps old and new, turns add into remove and back, keeps the path."""
    change = Change(3, ("a", 0), action, "old", "new", "ann", 1.0, "list")
    undo = change.inverse()
    assert (undo.action, undo.old, undo.new, undo.path) == (inverse, "new", "old", ("a", 0))
    assert (undo.seq, undo.actor, undo.kind) == (3, "ann", "list")
    assert undo.inverse() == change


def test_inverse_of_assign_swaps_whole_contents() -> None:
    """The inverse of an assign puts the old content back."""
    items = TrackedList([3, 1, 2])
    items.sort()
    items.apply_change(last(items).inverse())
    assert items == [3, 1, 2]


def test_change_is_immutable() -> None:
    """A Change cannot be modified."""
    change = Change(1, (), "assign", [], [1], None, 0.0, "list")
    with pytest.raises(AttributeError):
        change.seq = 2  # type: ignore[misc]


def test_apply_change_to_a_container_of_another_kind_raises_lookup_error() -> None:
    """A change whose path leads to the wrong kind of container is refused."""
    root: TrackedDict[str, Any] = TrackedDict({"a": {"x": 1}})
    change = Change(1, ("a", 0), "add", None, 1, None, 0.0, "list")
    with pytest.raises(LookupError, match="is about a list"):
        root.apply_change(change)


# -- JSON Patch -------------------------------------------------------------------------


def test_json_pointer_escapes_tilde_and_slash() -> None:
    """~ becomes ~0 and / becomes ~1 (in that order), as RFC 6901 says."""
    config: TrackedDict[str, int] = TrackedDict()
    config["a/b~c~1"] = 1
    assert last(config).to_json_patch() == [{"op": "add", "path": "/a~1b~0c~01", "value": 1}]


def test_json_pointer_of_the_root_is_empty() -> None:
    """The root's pointer is the empty string; indices are written as numbers."""
    assert json_pointer(()) == ""
    assert json_pointer(("a", 0, "")) == "/a/0/"


def test_json_patch_of_a_replace_and_a_remove() -> None:
    """A replace and a remove map to the RFC 6902 operations of the same name."""
    config: TrackedDict[str, Any] = TrackedDict({"a": {"b": 1}})
    config["a"]["b"] = 2
    assert last(config).to_json_patch() == [{"op": "replace", "path": "/a/b", "value": 2}]
    del config["a"]
    assert last(config).to_json_patch() == [{"op": "remove", "path": "/a"}]


def test_json_patch_of_a_splice_removes_then_adds() -> None:
    """A splice is removals at its start, then additions at consecutive indices."""
    items: TrackedList[Any] = TrackedList([0, 1, 2, 3])
    items[1:3] = ["a", "b", "c"]
    assert last(items).to_json_patch() == [
        {"op": "remove", "path": "/1"},
        {"op": "remove", "path": "/1"},
        {"op": "add", "path": "/1", "value": "a"},
        {"op": "add", "path": "/2", "value": "b"},
        {"op": "add", "path": "/3", "value": "c"},
    ]


def test_json_patch_of_an_assign_replaces_the_container() -> None:
    """An assign replaces the whole container at its path."""
    root: TrackedDict[str, Any] = TrackedDict({"l": [2, 1]})
    root["l"].sort()
    assert last(root).to_json_patch() == [{"op": "replace", "path": "/l", "value": [1, 2]}]


def test_set_changes_have_no_json_patch() -> None:
    """Sets have no JSON form: to_json_patch raises TypeError."""
    tags: TrackedSet[str] = TrackedSet()
    tags.add("x")
    with pytest.raises(TypeError, match="JSON has no sets"):
        last(tags).to_json_patch()


def test_a_rollback_that_fails_keeps_the_blocks_error_with_a_note() -> None:
    """The block's own exception is raised; a note says the rollback stopped partway."""
    config: TrackedDict[str, int] = TrackedDict({"a": 0})
    with pytest.raises(Boom) as raised, config.transaction():
        config["a"] = 1
        config["b"] = 2
        config.lock()
        raise Boom
    notes = raised.value.__notes__
    assert len(notes) == 1
    assert "rolling back the transaction failed after 0 of 2 changes" in notes[0]
    assert "ContainerLockedError" in notes[0]
    assert config == {"a": 1, "b": 2}
    config.unlock()
    assert config._root_tracker()[1].feeds == []
