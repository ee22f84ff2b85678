"""TrackedAttr: attribute assignments recorded once __init__ has returned."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from retract import ContainerLockedError, TrackedAttr, TrackedList


@dataclass
class Server(TrackedAttr):
    host: str
    port: int = 80
    tags: list[str] = field(default_factory=list)


class Plain(TrackedAttr):
    def __init__(self) -> None:
        self.name = "start"
        self._cache = 1


def test_init_assignments_are_the_starting_state() -> None:
    """Neither a dataclass's __init__ nor a hand-written one records changes."""
    assert Server("db1").tracking_changes() == []
    assert Plain().tracking_changes() == []


def test_assignments_and_deletions_are_recorded() -> None:
    """Replace, add and remove changes carry the attribute name as their path."""
    server = Server("db1")
    server.port = 5432
    server.extra = 1
    del server.extra  # type: ignore[attr-defined]
    changes = [(c.path, c.action, c.old, c.new, c.kind) for c in server.tracking_changes()]
    assert changes == [
        (("port",), "replace", 80, 5432, "object"),
        (("extra",), "add", None, 1, "object"),
        (("extra",), "remove", 1, None, "object"),
    ]


def test_private_names_are_not_tracked() -> None:
    """Attributes starting with an underscore are internal state."""
    obj = Plain()
    obj._cache = 2
    assert obj.tracking_changes() == []


def test_container_attributes_become_tracked_children() -> None:
    """A list attribute is a TrackedList whose changes have the attribute in their path."""
    server = Server("db1")
    assert isinstance(server.tags, TrackedList)
    server.tags.append("blue")
    change = server.last_change()
    assert change is not None
    assert (change.path, change.action, change.kind) == (("tags", 0), "add", "list")


def test_revert_restores_the_attributes() -> None:
    """Reverting the first change restores every attribute, children included."""
    server = Server("db1")
    server.port = 1
    server.tags.append("x")
    server.host = "db2"
    first = server.tracking_changes()[0]
    server.revert(first)
    assert (server.host, server.port, list(server.tags)) == ("db1", 80, [])


def test_attribute_and_object_locks() -> None:
    """A locked attribute (or a locked object) refuses assignment and deletion."""
    server = Server("db1")
    server.lock_attribute("port")
    assert server.attribute_locked("port")
    with pytest.raises(ContainerLockedError, match="unlock_attribute"):
        server.port = 1
    with pytest.raises(ContainerLockedError):
        del server.port
    server.host = "db2"  # other attributes are free
    server.unlock_attribute("port")
    server.port = 1
    server.lock()
    with pytest.raises(ContainerLockedError, match="unlock"):
        server.host = "db3"
    with pytest.raises(ContainerLockedError):
        server.tags.append("x")
    server.unlock()
    server.host = "db3"
    assert (server.host, server.port) == ("db3", 1)


def test_deleting_a_missing_attribute_raises_attribute_error() -> None:
    """Python's own AttributeError, and nothing recorded."""
    server = Server("db1")
    with pytest.raises(AttributeError):
        del server.missing  # type: ignore[attr-defined]
    assert server.tracking_changes() == []


class Captured(TrackedAttr):
    tracking_capture_snapshots = True
    tracking_capture_stack = True
    tracking_history = 2

    def __init__(self) -> None:
        self.port = 80
        self.tags = ["a"]


def test_class_attributes_set_history_snapshots_and_stacks() -> None:
    """tracking_history / _capture_snapshots / _capture_stack act like the arguments."""
    obj = Captured()
    obj.port = 81
    obj.tags.append("b")
    obj.port = 82
    changes = obj.tracking_changes()
    assert [change.new for change in changes] == ["b", 82]
    assert changes.truncated == 1
    assert changes[-1].snapshot == {"port": 82, "tags": ["a", "b"]}
    assert changes[0].snapshot == {"port": 81, "tags": ["a", "b"]}
    assert changes[-1].stack is not None
    assert any(__file__ in line for line in changes[-1].stack)


def test_to_plain_is_a_dict_of_the_public_attributes() -> None:
    """to_plain() copies the public attributes; later changes do not reach the copy."""
    server = Server("db1", tags=["x"])
    copy = server.to_plain()
    assert copy == {"host": "db1", "port": 80, "tags": ["x"]}
    server.tags.append("y")
    assert copy["tags"] == ["x"]
    assert type(copy["tags"]) is list
