"""session.track: a tracked object's changes are journaled and undone with the session."""

from __future__ import annotations

import gc
import uuid
from dataclasses import dataclass
from typing import Any

import pytest

from retract import (
    DriftError,
    Journal,
    OperationState,
    SessionStatus,
    TrackedAttr,
    TrackedDict,
    TrackedSet,
    UndoFailedError,
)


@dataclass
class Settings(TrackedAttr):
    mode: str = "debug"


async def test_changes_are_journaled_in_order_and_undone(journal: Journal) -> None:
    """Each change is a tracking.change operation; undo restores the object."""
    config: TrackedDict[str, Any] = TrackedDict({"mode": "debug", "workers": [1]})
    async with journal.start_session() as session:
        name = session.track(config, f"config-{uuid.uuid4()}")
        config["mode"] = "release"
        config["workers"].append(2)
        await session.record_operation("t.marker", {})
        del config["mode"]
    operations = await journal.get_operations(session.session_id)
    assert name.startswith("config-")
    assert [(op.op_type, op.payload.get("action")) for op in operations] == [
        ("tracking.change", "replace"),
        ("tracking.change", "add"),
        ("t.marker", None),
        ("tracking.change", "remove"),
    ]
    assert all(op.state is OperationState.DONE for op in operations)
    registry = journal.registry.copy()
    registry.handler("t.marker")(lambda op: None)
    report = await journal.undo_session(session.session_id, registry)
    assert report.status is SessionStatus.ROLLED_BACK
    assert config == {"mode": "debug", "workers": [1]}


async def test_undo_on_error_reverts_tracked_changes(journal: Journal) -> None:
    """A failing block rolls the tracked object back before the error propagates."""
    settings = Settings()
    tags = TrackedSet({"a"})
    with pytest.raises(RuntimeError):
        async with journal.start_session(undo_on_error=True) as session:
            session.track(settings)
            session.track(tags)
            settings.mode = "release"
            tags.add("b")
            raise RuntimeError("boom")
    assert settings.mode == "debug"
    assert tags == {"a"}


async def test_changes_after_the_session_are_not_journaled(journal: Journal) -> None:
    """The session stops observing the object when it ends."""
    config: TrackedDict[str, int] = TrackedDict()
    async with journal.start_session() as session:
        session.track(config)
        config["a"] = 1
    config["b"] = 2
    assert len(await journal.get_operations(session.session_id)) == 1


async def test_bad_arguments(journal: Journal) -> None:
    """Only tracked objects, with a non-empty label."""
    config: TrackedDict[str, int] = TrackedDict()
    async with journal.start_session() as session:
        with pytest.raises(TypeError, match="TrackedDict"):
            session.track({"plain": "dict"})
        with pytest.raises(ValueError, match="non-empty str"):
            session.track(config, "")


async def test_tracking_twice_journals_once(journal: Journal) -> None:
    """A second track() of the same object in a session changes nothing."""
    config: TrackedDict[str, int] = TrackedDict()
    async with journal.start_session() as session:
        assert session.track(config, "cfg") == "cfg"
        assert session.track(config, "other") == "cfg"
        config["a"] = 1
    assert len(await journal.get_operations(session.session_id)) == 1
    await journal.undo_session(session.session_id)
    assert config == {}


async def test_a_label_shared_by_two_objects_undoes_the_right_one(journal: Journal) -> None:
    """Undo finds the object by its own token, not by its label."""
    first: TrackedDict[str, int] = TrackedDict({"n": 0})
    second: TrackedDict[str, int] = TrackedDict({"n": 50})
    async with journal.start_session() as one:
        one.track(first, "counter")
        first["n"] = 1
    async with journal.start_session() as two:
        two.track(second, "counter")
        second["n"] = 51
    await journal.undo_session(one.session_id)
    assert (first["n"], second["n"]) == (0, 51)


async def test_a_value_changed_since_is_drift(journal: Journal) -> None:
    """Undo refuses to revert a value changed after the session, unless told to."""
    config: TrackedDict[str, str] = TrackedDict({"mode": "debug"})
    async with journal.start_session() as session:
        session.track(config)
        config["mode"] = "release"
    config["mode"] = "edited"
    with pytest.raises(UndoFailedError) as caught:
        await journal.undo_session(session.session_id)
    assert isinstance(caught.value.__cause__, DriftError)
    assert "the value changed" in str(caught.value.__cause__)
    assert config["mode"] == "edited"
    await journal.undo_session(session.session_id, drift="force")
    assert config["mode"] == "debug"


async def test_a_nested_child_that_leaves_its_tree_still_ends_cleanly(journal: Journal) -> None:
    """Tracking a child that is then replaced keeps what it journaled, and stops."""
    root: TrackedDict[str, Any] = TrackedDict({"a": {"x": 1}})
    child = root["a"]
    async with journal.start_session() as session:
        session.track(child)
        child["x"] = 2
        root["a"] = {"x": 9}  # the tracked child leaves the tree
        child["x"] = 3
    operations = await journal.get_operations(session.session_id)
    assert [op.payload["new"] for op in operations] == [2]


async def test_undo_without_the_live_object_fails_clearly(journal: Journal) -> None:
    """When the object is gone, undo says so instead of guessing."""
    config: TrackedDict[str, int] | None = TrackedDict()
    async with journal.start_session() as session:
        assert config is not None
        session.track(config, f"short-lived-{uuid.uuid4()}")
        config["a"] = 1
    config = None
    gc.collect()  # a tracked tree refers to itself through its tracker
    with pytest.raises(UndoFailedError) as caught:
        await journal.undo_session(session.session_id)
    assert "not alive in this process" in str(caught.value.__cause__)
