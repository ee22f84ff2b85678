"""The public surface: every exported name exists, and nothing private leaks."""

from __future__ import annotations

import retract
import retract.export
import retract.fs
import retract.integrations
import retract.journal
import retract.tracking


def test_all_is_a_sorted_tuple_of_existing_names() -> None:
    """``__all__`` is a tuple, and each name in it is importable."""
    modules = (retract, retract.fs, retract.journal, retract.tracking, retract.export)
    for module in (*modules, retract.integrations):
        assert isinstance(module.__all__, tuple)
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.{name}"


def test_public_classes_claim_the_public_module() -> None:
    """Every exported name is defined in a private module and re-exported explicitly."""
    # (pytest rewrites the asserts of a package that registers a plugin, as retract does,
    # which adds "@py_builtins" and "@pytest_ar": not names anyone can import)
    public = {name for name in dir(retract) if not name.startswith("_") and name.isidentifier()}
    assert public <= set(retract.__all__) | {
        "journal",
        "cli",
        "fs",
        "tracking",
        "export",
        "integrations",
        "testing",
    }


def test_design_contract_names_exist() -> None:
    """The names DESIGN.md promises are all importable from the top level."""
    for name in (
        "Journal",
        "SQLiteStorage",
        "InMemoryStorage",
        "OperationRegistry",
        "open_journal",
        "SessionRecord",
        "OperationRecord",
        "SessionStatus",
        "OperationState",
        "UndoErrorGroup",
        "atomic_write",
        "atomic_folder",
        "atomic_write_bytes",
        "atomic_write_text",
        "FileAlreadyExistsError",
        "TrackedDict",
        "TrackedList",
        "TrackedSet",
        "tracking_actor",
    ):
        assert name in retract.__all__
