"""OperationRegistry: registering, replacing, listing and validating handlers."""

from __future__ import annotations

from typing import Any

import pytest

from retract import InvalidRecordError, OperationRecord, OperationRegistry


class MoveUndo:
    def __init__(self, payload: dict[str, Any]) -> None:
        self.payload = payload

    def undo(self) -> None:
        return None


def test_register_and_handler_both_add_types() -> None:
    """Factories and decorated functions live side by side, listed sorted."""
    registry = OperationRegistry(builtins=False)
    registry.register("fs.move", MoveUndo)

    @registry.handler("mail.send")
    async def unsend(op: OperationRecord) -> None:
        return None

    assert registry.types() == ["fs.move", "mail.send"]
    assert list(registry) == ["fs.move", "mail.send"]
    assert "fs.move" in registry
    assert "db.drop" not in registry
    assert len(registry) == 2
    assert "fs.move" in repr(registry)


def test_decorator_returns_the_function_unchanged() -> None:
    """@registry.handler leaves the decorated function usable as before."""
    registry = OperationRegistry(builtins=False)

    async def unsend(op: OperationRecord) -> None:
        return None

    assert registry.handler("mail.send")(unsend) is unsend


def test_registering_again_replaces() -> None:
    """A second registration of a type replaces the first (unmake compatibility)."""
    registry = OperationRegistry(builtins=False)
    registry.register("fs.move", MoveUndo)
    registry.register("fs.move", MoveUndo)
    assert registry.types() == ["fs.move"]


def test_unregister_and_its_error() -> None:
    """Unregister forgets a type; an unknown type is a KeyError listing the known ones."""
    registry = OperationRegistry(builtins=False)
    registry.register("fs.move", MoveUndo)
    registry.unregister("fs.move")
    assert registry.types() == []
    with pytest.raises(KeyError, match="registered: none"):
        registry.unregister("fs.move")


def test_bad_registrations_are_refused() -> None:
    """Invalid type names and non-callables are rejected at registration."""
    registry = OperationRegistry(builtins=False)
    with pytest.raises(InvalidRecordError):
        registry.register("not valid", MoveUndo)
    with pytest.raises(TypeError, match="callable"):
        registry.register("fs.move", "MoveUndo")  # type: ignore[arg-type]


def test_copy_and_update_are_independent() -> None:
    """copy() gives a separate registry; update() merges another one in."""
    base = OperationRegistry(builtins=False)
    base.register("fs.move", MoveUndo)
    clone = base.copy()
    clone.register("fs.copy", MoveUndo)
    assert base.types() == ["fs.move"]
    base.update(clone)
    assert base.types() == ["fs.copy", "fs.move"]


def test_default_registry_has_the_builtin_handlers() -> None:
    """A new registry knows how to undo every ``session.fs`` and ``session.track`` operation."""
    assert set(OperationRegistry().types()) == {
        "fs.copy",
        "fs.delete",
        "fs.mkdir",
        "fs.move",
        "fs.rmtree",
        "fs.write",
        "tracking.change",
    }
    assert len(OperationRegistry(builtins=False)) == 0
