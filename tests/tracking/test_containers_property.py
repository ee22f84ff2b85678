"""Property: tracked containers behave exactly like the builtins, and their changes replay.

Each state machine runs random operation sequences (every mutating method, good and bad
arguments) on a builtin container (the model) and on its tracked twin, and checks that
both return and raise the same things and end in the same state. Dict and list trees
hold nested dicts and lists, and the operations also reach those children. After every
step the changes recorded so far must be gap-free, replay onto a copy of the original
(``apply_change``) and, as JSON Patch, onto the original JSON; at the end, reverting the
first change must give back the original.

Two differences from the builtins are by design and the model is adjusted for them:
a container stored in a tracked one is a copy (so the model never shares a nested
container between two places either), and an error message that names the type of a
container says ``TrackedList`` where the builtin says ``list`` (Python formats it from
the receiving object's type), so messages are compared with those names normalised.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterator
from typing import Any

import jsonpatch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from retract import Change, ChangeCollector, TrackedDict, TrackedList, TrackedSet
from retract.tracking._base import Tracked

SETTINGS = settings(
    max_examples=60,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

#: Dict keys, with the characters JSON Pointer has to escape.
keys = st.sampled_from(["a", "b", "c", "", "~", "/", "a/b", "~1"])
scalars = st.integers(-3, 9) | st.sampled_from(["x", "y", "z"])
#: Values stored in dicts and lists: scalars, and nested dicts and lists of them.
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3),
    max_leaves=6,
)
indices = st.integers(-7, 7) | st.just(2**64)
slice_bounds = st.none() | st.integers(-7, 7)
steps = st.sampled_from([None, 1, 2, 3, -1, -2, 0])
picks = st.integers(0, 20)
#: What to pass where an iterable is expected: a list, an iterator that fails midway
#: (after yielding the items), or something that is not iterable.
Feed = tuple[str, list[Any]]


def feeds(items: st.SearchStrategy[Any], max_size: int = 4) -> st.SearchStrategy[Feed]:
    return st.tuples(
        st.sampled_from(["list", "list", "list", "tuple", "failing", "not iterable"]),
        st.lists(items, max_size=max_size),
    )


class Boom(Exception):
    """An iterator failing midway."""


def failing(items: list[Any]) -> Iterator[Any]:
    yield from items
    raise Boom("the iterator failed midway")


def make(feed: Feed) -> Any:
    """A fresh argument (deep copies: model and tracked container never share values)."""
    how, items = feed
    if how == "not iterable":
        return 5
    items = copy.deepcopy(items)
    if how == "tuple":
        return tuple(items)
    return failing(items) if how == "failing" else items


def normalise(message: str) -> str:
    return re.sub(r"\bTracked(Dict|List|Set)\b", lambda m: m.group(1).lower(), message)


def outcome(target: Any, operation: Callable[[Any], Any]) -> tuple[str, Any]:
    """What ``operation(target)`` did: returned (which value) or raised (type, message)."""
    try:
        result = operation(target)
    except Exception as error:
        return ("raised", (type(error), normalise(str(error))))
    return ("returned", "<itself>" if result is target else result)


def fresh(value: Any) -> Any:
    """A deep copy in which no container appears twice (as a tracked tree stores it)."""
    if isinstance(value, dict):
        return {key: fresh(item) for key, item in value.items()}
    if isinstance(value, list):
        return [fresh(item) for item in value]
    return value


def paired_containers(
    model: Any, tracked: Any, kind: type
) -> list[tuple[Any, Any, tuple[Any, ...]]]:
    """Every (model node, tracked node, path) of ``kind`` in the two trees, in order."""
    found: list[tuple[Any, Any, tuple[Any, ...]]] = []

    def walk(left: Any, right: Any, path: tuple[Any, ...]) -> None:
        if isinstance(left, kind):
            found.append((left, right, path))
        if isinstance(left, dict):
            for key in left:
                walk(left[key], right[key], (*path, key))
        elif isinstance(left, list):
            for index, (a, b) in enumerate(zip(left, right, strict=True)):
                walk(a, b, (*path, index))

    walk(model, tracked, ())
    return found


def iadd(target: Any, other: Any) -> Any:
    target += other
    return target


#: Lists longer than this are not doubled or multiplied again: repeated, that growth is
#: exponential (a run once reached 100,000 items, and its invariants, quadratic in the
#: size, ran for many minutes). The operations themselves are covered below the limit.
GROWTH_LIMIT = 64


def imul(target: Any, count: Any) -> Any:
    target *= count
    return target


def ior(target: Any, other: Any) -> Any:
    target |= other
    return target


def iand(target: Any, other: Any) -> Any:
    target &= other
    return target


def isub(target: Any, other: Any) -> Any:
    target -= other
    return target


def ixor(target: Any, other: Any) -> Any:
    target ^= other
    return target


def is_int(value: Any) -> bool:
    return isinstance(value, int)


sort_keys = st.sampled_from([None, is_int, len, str.lower, 5])


class TreeMachine(RuleBasedStateMachine):
    """Dict and list operations on any container of a tree (root or nested)."""

    make_root: Callable[..., Any]
    plain_type: type

    def __init__(self) -> None:
        super().__init__()
        self.start(self.plain_type())

    def start(self, initial: Any) -> None:
        self.original = fresh(initial)
        self.model = fresh(initial)
        self.tracked = self.make_root(fresh(initial), history=None)
        self.collector = ChangeCollector()
        self.tracked.tracking_add_observer(self.collector)
        self.replica = self.make_root(fresh(initial), history=None)
        self.document = fresh(initial)
        self.replayed = self.patched = 0

    def both(self, kind: type, pick: int, operation: Callable[[Any], Any]) -> None:
        """Run ``operation`` on the same node of both trees; they must agree."""
        nodes = paired_containers(self.model, self.tracked, kind)
        if not nodes:
            return
        model_node, tracked_node, _ = nodes[pick % len(nodes)]
        expected = outcome(model_node, operation)
        got = outcome(tracked_node, operation)
        assert got == expected
        self.model = fresh(self.model)  # the builtin may now share a child in two places

    # -- dict operations --------------------------------------------------------------

    @rule(pick=picks, key=keys, value=values)
    def dict_setitem(self, pick: int, key: str, value: Any) -> None:
        self.both(dict, pick, lambda d: d.__setitem__(key, copy.deepcopy(value)))

    @rule(pick=picks)
    def dict_setitem_unhashable_key(self, pick: int) -> None:
        self.both(dict, pick, lambda d: d.__setitem__([], 1))

    @rule(pick=picks, key=keys)
    def dict_delitem(self, pick: int, key: str) -> None:
        self.both(dict, pick, lambda d: d.__delitem__(key))

    @rule(pick=picks, key=keys, default=st.none() | values)
    def dict_pop(self, pick: int, key: str, default: Any) -> None:
        if default is None:
            self.both(dict, pick, lambda d: d.pop(key))
        else:
            self.both(dict, pick, lambda d: d.pop(key, copy.deepcopy(default)))

    @rule(pick=picks, key=keys)
    def dict_pop_with_two_defaults(self, pick: int, key: str) -> None:
        self.both(dict, pick, lambda d: d.pop(key, 1, 2))

    @rule(pick=picks)
    def dict_popitem(self, pick: int) -> None:
        self.both(dict, pick, lambda d: d.popitem())

    @rule(pick=picks, key=keys, default=st.none() | values)
    def dict_setdefault(self, pick: int, key: str, default: Any) -> None:
        if default is None:
            self.both(dict, pick, lambda d: d.setdefault(key))
        else:
            self.both(dict, pick, lambda d: d.setdefault(key, copy.deepcopy(default)))

    @rule(pick=picks)
    def dict_clear(self, pick: int) -> None:
        self.both(dict, pick, lambda d: d.clear())

    @rule(
        pick=picks,
        how=st.sampled_from(["mapping", "pairs", "failing pairs", "bad pair", "not iterable"]),
        items=st.dictionaries(keys, values, max_size=3),
        kwargs=st.dictionaries(st.sampled_from(["a", "b", "k"]), values, max_size=2),
    )
    def dict_update(self, pick: int, how: str, items: dict[str, Any], kwargs: Any) -> None:
        def operation(d: Any) -> Any:
            data = copy.deepcopy(items)
            extra = copy.deepcopy(kwargs)
            if how == "mapping":
                return d.update(data, **extra)
            if how == "pairs":
                return d.update(list(data.items()), **extra)
            if how == "failing pairs":
                return d.update(failing(list(data.items())))
            if how == "bad pair":
                return d.update([*data.items(), "abc"])
            return d.update(5)

        self.both(dict, pick, operation)

    @rule(pick=picks, kwargs=st.dictionaries(st.sampled_from(["a", "b", "k"]), values))
    def dict_update_kwargs_only(self, pick: int, kwargs: dict[str, Any]) -> None:
        self.both(dict, pick, lambda d: d.update(**copy.deepcopy(kwargs)))

    @rule(
        pick=picks,
        how=st.sampled_from(["mapping", "pairs", "failing pairs", "not iterable"]),
        items=st.dictionaries(keys, values, max_size=3),
    )
    def dict_ior(self, pick: int, how: str, items: dict[str, Any]) -> None:
        def operation(d: Any) -> Any:
            data = copy.deepcopy(items)
            if how == "mapping":
                return ior(d, data)
            if how == "pairs":
                return ior(d, list(data.items()))
            if how == "failing pairs":
                return ior(d, failing(list(data.items())))
            return ior(d, 5)

        self.both(dict, pick, operation)

    # -- list operations --------------------------------------------------------------

    @rule(pick=picks, index=indices, value=values)
    def list_setitem(self, pick: int, index: int, value: Any) -> None:
        self.both(list, pick, lambda x: x.__setitem__(index, copy.deepcopy(value)))

    @rule(pick=picks, index=st.sampled_from(["0", 1.0, None]))
    def list_setitem_bad_index(self, pick: int, index: Any) -> None:
        self.both(list, pick, lambda x: x.__setitem__(index, 1))

    @rule(pick=picks, start=slice_bounds, stop=slice_bounds, step=steps, feed=feeds(values))
    def list_setslice(
        self, pick: int, start: int | None, stop: int | None, step: int | None, feed: Feed
    ) -> None:
        self.both(list, pick, lambda x: x.__setitem__(slice(start, stop, step), make(feed)))

    @rule(pick=picks, start=slice_bounds, stop=slice_bounds, step=steps)
    def list_setslice_to_itself(
        self, pick: int, start: int | None, stop: int | None, step: int | None
    ) -> None:
        self.both(list, pick, lambda x: x.__setitem__(slice(start, stop, step), x))

    @rule(pick=picks, index=indices)
    def list_delitem(self, pick: int, index: int) -> None:
        self.both(list, pick, lambda x: x.__delitem__(index))

    @rule(pick=picks, start=slice_bounds, stop=slice_bounds, step=steps)
    def list_delslice(
        self, pick: int, start: int | None, stop: int | None, step: int | None
    ) -> None:
        self.both(list, pick, lambda x: x.__delitem__(slice(start, stop, step)))

    @rule(pick=picks, value=values)
    def list_append(self, pick: int, value: Any) -> None:
        self.both(list, pick, lambda x: x.append(copy.deepcopy(value)))

    @rule(pick=picks, feed=feeds(values))
    def list_extend(self, pick: int, feed: Feed) -> None:
        self.both(list, pick, lambda x: x.extend(make(feed)))

    @rule(pick=picks)
    def list_extend_with_itself(self, pick: int) -> None:
        self.both(list, pick, lambda x: x.extend(x) if len(x) <= GROWTH_LIMIT else None)

    @rule(pick=picks, index=indices | st.just(-(2**64)) | st.just("0"), value=values)
    def list_insert(self, pick: int, index: Any, value: Any) -> None:
        self.both(list, pick, lambda x: x.insert(index, copy.deepcopy(value)))

    @rule(pick=picks, value=values, existing=st.integers(0, 9))
    def list_remove(self, pick: int, value: Any, existing: int) -> None:
        def operation(x: Any) -> Any:
            # half the time an item that is there (found by equality, like list's)
            target = x[existing % len(x)] if x and existing % 2 else value
            return x.remove(fresh(target))

        self.both(list, pick, operation)

    @rule(pick=picks, index=st.none() | indices | st.just("0"))
    def list_pop(self, pick: int, index: Any) -> None:
        if index is None:
            self.both(list, pick, lambda x: x.pop())
        else:
            self.both(list, pick, lambda x: x.pop(index))

    @rule(pick=picks, key=sort_keys, reverse=st.booleans())
    def list_sort(self, pick: int, key: Any, reverse: bool) -> None:
        self.both(list, pick, lambda x: x.sort(key=key, reverse=reverse))

    @rule(pick=picks)
    def list_sort_plain(self, pick: int) -> None:
        self.both(list, pick, lambda x: x.sort())

    @rule(pick=picks)
    def list_reverse(self, pick: int) -> None:
        self.both(list, pick, lambda x: x.reverse())

    @rule(pick=picks, feed=feeds(values))
    def list_iadd(self, pick: int, feed: Feed) -> None:
        self.both(list, pick, lambda x: iadd(x, make(feed)))

    @rule(pick=picks, count=st.integers(-1, 3) | st.sampled_from(["2", 2.0]))
    def list_imul(self, pick: int, count: Any) -> None:
        self.both(list, pick, lambda x: imul(x, count) if len(x) <= GROWTH_LIMIT else None)

    @rule(pick=picks)
    def list_clear(self, pick: int) -> None:
        self.both(list, pick, lambda x: x.clear())

    # -- what must hold after every step ----------------------------------------------

    @invariant()
    def same_state(self) -> None:
        assert self.tracked == self.model
        plain = self.tracked.to_plain()
        assert plain == self.model
        assert type(plain) is self.plain_type

    @invariant()
    def every_nested_container_is_tracked_with_its_path(self) -> None:
        for kind in (dict, list):
            for _, node, path in paired_containers(self.model, self.tracked, kind):
                assert isinstance(node, Tracked)
                assert node._path() == path
                assert node._root_tracker()[0] is self.tracked

    @invariant()
    def seq_is_gap_free_and_observed_in_order(self) -> None:
        changes = self.tracked.tracking_changes()
        assert [change.seq for change in changes] == list(range(1, len(changes) + 1))
        assert self.collector.changes == changes

    @invariant()
    def replaying_the_changes_reproduces_the_state(self) -> None:
        for change in self.tracked.changes_since(self.replayed):
            self.replica.apply_change(change)
            self.replayed = change.seq
        assert self.replica.to_plain() == self.model

    @invariant()
    def json_patches_reproduce_the_state(self) -> None:
        for change in self.tracked.changes_since(self.patched):
            self.document = jsonpatch.apply_patch(self.document, change.to_json_patch())
            self.patched = change.seq
        assert self.document == self.model

    def teardown(self) -> None:
        changes = self.tracked.tracking_changes()
        if changes and self.tracked == self.model:
            self.tracked.revert(changes[0])
            assert self.tracked.to_plain() == self.original


class DictMachine(TreeMachine):
    """A TrackedDict tree against a dict."""

    make_root = TrackedDict
    plain_type = dict

    @initialize(initial=st.dictionaries(keys, values, max_size=4))
    def begin(self, initial: dict[str, Any]) -> None:
        self.start(initial)


class ListMachine(TreeMachine):
    """A TrackedList tree against a list."""

    make_root = TrackedList
    plain_type = list

    @initialize(initial=st.lists(values, max_size=5))
    def begin(self, initial: list[Any]) -> None:
        self.start(initial)


elements = st.integers(-2, 6) | st.sampled_from(["a", "b"])
SetFeed = tuple[str, list[Any]]
set_feeds = st.tuples(
    st.sampled_from(["list", "set", "frozenset", "failing", "not iterable"]),
    st.lists(elements, max_size=5),
)


def make_set_arg(feed: SetFeed) -> Any:
    how, items = feed
    if how == "set":
        return set(items)
    if how == "frozenset":
        return frozenset(items)
    return make((how, items))


#: Bulk operations whose argument is the set itself (the builtin special-cases some).
SET_OPERATIONS_WITH_ITSELF: dict[str, Callable[[Any], Any]] = {
    "|=": lambda s: ior(s, s),
    "&=": lambda s: iand(s, s),
    "-=": lambda s: isub(s, s),
    "^=": lambda s: ixor(s, s),
    "update": lambda s: s.update(s),
    "difference_update": lambda s: s.difference_update(s),
    "intersection_update": lambda s: s.intersection_update(s),
    "symmetric_difference_update": lambda s: s.symmetric_difference_update(s),
}


class SetMachine(RuleBasedStateMachine):
    """A TrackedSet against a set."""

    def __init__(self) -> None:
        super().__init__()
        self.start(set())

    def start(self, initial: set[Any]) -> None:
        self.original = set(initial)
        self.model = set(initial)
        self.tracked = TrackedSet(initial, history=None)
        self.collector = ChangeCollector()
        self.tracked.tracking_add_observer(self.collector)
        self.replica = TrackedSet(initial, history=None)
        self.replayed = 0

    @initialize(initial=st.sets(elements, max_size=6))
    def begin(self, initial: set[Any]) -> None:
        self.start(initial)

    def both(self, operation: Callable[[Any], Any]) -> None:
        expected = outcome(self.model, operation)
        assert outcome(self.tracked, operation) == expected

    @rule(element=elements)
    def add(self, element: Any) -> None:
        self.both(lambda s: s.add(element))

    @rule()
    def add_unhashable(self) -> None:
        self.both(lambda s: s.add([]))

    @rule(element=elements)
    def discard(self, element: Any) -> None:
        self.both(lambda s: s.discard(element))

    @rule(element=elements)
    def remove(self, element: Any) -> None:
        self.both(lambda s: s.remove(element))

    @rule()
    def pop(self) -> None:
        self.both(lambda s: s.pop())

    @rule()
    def clear(self) -> None:
        self.both(lambda s: s.clear())

    @rule(
        method=st.sampled_from(
            ["update", "difference_update", "intersection_update", "symmetric_difference_update"]
        ),
        arguments=st.lists(set_feeds, min_size=1, max_size=3),
    )
    def bulk_method(self, method: str, arguments: list[SetFeed]) -> None:
        if method == "symmetric_difference_update":
            arguments = arguments[:1]
        self.both(lambda s: getattr(s, method)(*map(make_set_arg, arguments)))

    @rule(name=st.sampled_from(sorted(SET_OPERATIONS_WITH_ITSELF)))
    def with_itself(self, name: str) -> None:
        self.both(SET_OPERATIONS_WITH_ITSELF[name])

    @rule(operator=st.sampled_from([ior, iand, isub, ixor]), feed=set_feeds)
    def in_place_operator(self, operator: Callable[[Any, Any], Any], feed: SetFeed) -> None:
        self.both(lambda s: operator(s, make_set_arg(feed)))

    @invariant()
    def same_state(self) -> None:
        assert self.tracked == self.model
        assert self.tracked.to_plain() == self.model
        assert type(self.tracked.to_plain()) is set

    @invariant()
    def seq_is_gap_free_and_observed_in_order(self) -> None:
        changes = self.tracked.tracking_changes()
        assert [change.seq for change in changes] == list(range(1, len(changes) + 1))
        assert self.collector.changes == changes

    @invariant()
    def replaying_the_changes_reproduces_the_state(self) -> None:
        new: list[Change] = self.tracked.changes_since(self.replayed)
        for change in new:
            self.replica.apply_change(change)
            self.replayed = change.seq
        assert self.replica == self.model

    def teardown(self) -> None:
        changes = self.tracked.tracking_changes()
        if changes and self.tracked == self.model:
            self.tracked.revert(changes[0])
            assert self.tracked == self.original


def test_set_pop_after_clearing_an_emptied_set_matches_set() -> None:
    """clear() of an already empty set resets it like set's, so pop() picks the same."""
    model, tracked = {0, 3}, TrackedSet({0, 3})
    for container in (model, tracked):
        container.pop()
        container.pop()
        container.clear()
        container.add(1)
        container.add(3)
    assert tracked.pop() == model.pop()


TestTrackedDictAgainstDict = DictMachine.TestCase
TestTrackedDictAgainstDict.settings = SETTINGS
TestTrackedListAgainstList = ListMachine.TestCase
TestTrackedListAgainstList.settings = SETTINGS
TestTrackedSetAgainstSet = SetMachine.TestCase
TestTrackedSetAgainstSet.settings = SETTINGS
