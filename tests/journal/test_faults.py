"""Fault injection: a storage that fails its N-th call, for every N.

The promises checked: the caller sees the storage error before the side effect it was
about to journal (intent first), no operation is ever half-recorded, and an undo
interrupted by a storage failure can be finished later with every handler completed
exactly once.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from typing import Any

import pytest

from retract import (
    Journal,
    OperationRecord,
    OperationRegistry,
    OperationState,
    SessionStatus,
    Storage,
    StorageError,
)
from tests.helpers import StorageFactory

S = SessionStatus
O = OperationState  # noqa: E741

_CALLS = (
    "create_session",
    "update_session",
    "append_operations",
    "update_operations",
    "record_undo_progress",
    "get_session",
    "list_sessions",
    "get_operations",
    "operations_page",
    "pending_summary",
)


class FailingStorage:
    """Wraps a storage; its ``fail_at``-th call (counting from 1) raises StorageError."""

    def __init__(self, inner: Storage) -> None:
        self.inner = inner
        self.calls = 0
        self.fail_at: int | None = None

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.inner, name)
        if name not in _CALLS:
            return attribute

        async def call(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            if self.calls == self.fail_at:
                raise StorageError(f"injected failure of {name} (call {self.calls})")
            return await attribute(*args, **kwargs)

        return call


async def test_side_effects_never_run_ahead_of_their_intent(
    storage_factory: StorageFactory,
) -> None:
    """Whichever call fails, every effect that happened has its operation in the journal."""
    n = 0
    while True:
        n += 1
        storage = FailingStorage(storage_factory())
        effects: list[int] = []
        async with Journal(storage) as journal:
            storage.calls, storage.fail_at = 0, n
            try:
                async with journal.start_session() as session:
                    for i in range(3):
                        async with session.step("t.op", {"i": i}):
                            effects.append(i)
            except StorageError:
                pass
            failed = storage.calls >= n
            storage.fail_at = None
            sessions = await journal.list_sessions()
            recorded = {
                op.payload["i"]: op
                for s in sessions
                for op in await journal.get_operations(s.session_id)
            }
        for i in effects:
            assert i in recorded, (n, effects, recorded)
            assert recorded[i].state in (O.DONE, O.IN_DOUBT, O.INTENT), recorded[i]
        for op in recorded.values():
            assert op.payload == {"i": op.payload["i"]}  # never half-written
            assert op.op_type == "t.op"
        if not failed:
            assert effects == [0, 1, 2]
            break
    assert n > 5


async def test_failed_intent_write_means_the_body_never_runs(
    storage_factory: StorageFactory,
) -> None:
    """When the intent cannot be written the step raises before its body."""
    storage = FailingStorage(storage_factory())
    async with Journal(storage) as journal:
        ran = False
        with pytest.raises(StorageError, match="append_operations"):
            async with journal.start_session() as session:
                storage.calls, storage.fail_at = 0, 1
                async with session.step("t.op", {"i": 0}):
                    ran = True
        storage.fail_at = None
        assert not ran
        assert await journal.get_operations(session.session_id) == []
        record = await journal.get_session(session.session_id)
        assert record is not None
        assert record.status is S.FAILED
        assert record.error is not None
        assert "injected failure" in record.error


async def test_failed_done_write_leaves_the_step_in_doubt(storage_factory: StorageFactory) -> None:
    """If DONE cannot be written, the session's end marks the step IN_DOUBT (truthful)."""
    storage = FailingStorage(storage_factory())
    async with Journal(storage) as journal:
        with pytest.raises(StorageError, match="update_operations"):
            async with journal.start_session() as session, session.step("t.op", {"i": 0}):
                storage.calls, storage.fail_at = 0, 1
        storage.fail_at = None
        (op,) = await journal.get_operations(session.session_id)
        assert op.state is O.IN_DOUBT


async def test_storage_failure_during_undo_can_be_finished_later(
    storage_factory: StorageFactory,
) -> None:
    """Whichever call of an undo fails, a later undo finishes it.

    Every handler completes; one runs again only when the write recording its outcome is
    what failed, and then it is told so (``op.in_doubt``): never for an UNDONE operation.
    """
    n = 0
    while True:
        n += 1
        completed: Counter[int] = Counter()
        repeats: list[bool] = []
        registry = OperationRegistry()

        @registry.handler("t.op")
        async def handler(
            op: OperationRecord, completed: Counter[int] = completed, repeats: list[bool] = repeats
        ) -> None:
            if completed[op.payload["i"]]:
                repeats.append(op.in_doubt)
            completed[op.payload["i"]] += 1

        storage = FailingStorage(storage_factory())
        async with Journal(storage, registry) as journal:
            async with journal.start_session() as session:
                await session.record_operations([("t.op", {"i": i}) for i in range(6)])
            storage.calls, storage.fail_at = 0, n
            with contextlib.suppress(StorageError):
                await journal.undo_session(session.session_id, max_in_doubt=2)
            failed = storage.calls >= n
            storage.fail_at = None
            states = [op.state for op in await journal.get_operations(session.session_id)]
            assert set(states) <= {O.DONE, O.UNDONE, O.UNDOING, O.UNDO_FAILED}, states
            record = await journal.get_session(session.session_id)
            assert record is not None
            report = await journal.undo_session(session.session_id)
            assert report.status is S.ROLLED_BACK
            assert all(
                op.state is O.UNDONE for op in await journal.get_operations(session.session_id)
            )
        assert sorted(completed) == list(range(6))
        assert all(count <= 2 for count in completed.values()), (n, completed, states)
        assert all(repeats), (n, completed, states)
        if not failed:
            break
    assert n > 3
