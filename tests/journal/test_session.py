"""Sessions and steps: what gets written, when, and how a block's end is recorded."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from retract import (
    InMemoryStorage,
    Journal,
    JournalClosedError,
    MetricsCollector,
    OperationState,
    SessionStateError,
    SessionStatus,
    open_journal,
)

S = SessionStatus
O = OperationState  # noqa: E741


class Boom(Exception):
    """A failure of the user's own code."""


async def test_completed_session_is_recorded_with_context(journal: Journal) -> None:
    """A block that ends normally is COMPLETED, keeps its context and its operations."""
    async with journal.start_session(script="deploy.py", args=["--force"]) as session:
        first = await session.record_operation("fs.move", {"src": "a", "dst": "b"})
        second = await session.record_operation("fs.move", {"src": "c", "dst": "d"})
    record = await journal.get_session(session.session_id)
    assert record is not None
    assert record.status is S.COMPLETED
    assert record.state is S.COMPLETED
    assert record.context == {"script": "deploy.py", "args": ["--force"]}
    assert record.completed_at is not None
    assert record.completed_at >= record.created_at
    assert (first.sequence, second.sequence) == (1, 2)
    assert first.state is O.DONE
    assert [op.op_id for op in await journal.get_operations(session.session_id)] == [
        first.op_id,
        second.op_id,
    ]


async def test_session_is_running_inside_its_block(journal: Journal) -> None:
    """While the block runs, the journal shows the session RUNNING and owned by us."""
    async with journal.start_session() as session:
        record = await journal.get_session(session.session_id)
        assert record is not None
        assert record.status is S.RUNNING
        assert record.owner is not None


async def test_failing_block_is_failed_and_reraises_the_same_exception(journal: Journal) -> None:
    """The original exception object propagates; the session records type and message."""
    error = Boom("disk on fire")
    with pytest.raises(Boom) as caught:
        async with journal.start_session() as session:
            raise error
    assert caught.value is error
    assert not getattr(caught.value, "__notes__", None)
    record = await journal.get_session(session.session_id)
    assert record is not None
    assert record.status is S.FAILED
    assert record.error == "Boom: disk on fire"


async def test_error_without_message_records_the_type(journal: Journal) -> None:
    """An exception with no message is stored as its type name, not an empty string."""
    with pytest.raises(Boom):
        async with journal.start_session() as session:
            raise Boom
    record = await journal.get_session(session.session_id)
    assert record is not None
    assert record.error == "Boom"


async def test_cancelled_block_is_cancelled_not_failed(journal: Journal) -> None:
    """A block cancelled from outside ends CANCELLED."""
    started = asyncio.Event()
    ids: list[str] = []

    async def work() -> None:
        async with journal.start_session() as session:
            ids.append(session.session_id)
            started.set()
            await asyncio.sleep(60)

    task = asyncio.create_task(work())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    record = await journal.get_session(ids[0])
    assert record is not None
    assert record.status is S.CANCELLED
    assert record.error == "CancelledError"


async def test_timeout_ends_the_session_cancelled(journal: Journal) -> None:
    """asyncio.timeout around a session records CANCELLED and still raises TimeoutError."""
    ids: list[str] = []
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05), journal.start_session() as session:
            ids.append(session.session_id)
            await asyncio.sleep(60)
    record = await journal.get_session(ids[0])
    assert record is not None
    assert record.status is S.CANCELLED


async def test_keyboard_interrupt_is_recorded_as_cancelled(journal: Journal) -> None:
    """Ctrl+C reaching the block is a cancellation with a named error, not an empty FAILED."""
    with pytest.raises(KeyboardInterrupt):
        async with journal.start_session() as session:
            raise KeyboardInterrupt
    record = await journal.get_session(session.session_id)
    assert record is not None
    assert (record.status, record.error) == (S.CANCELLED, "KeyboardInterrupt")


async def test_step_writes_intent_before_the_body_and_done_after(journal: Journal) -> None:
    """Inside the body the operation is already INTENT; afterwards it is DONE."""
    async with journal.start_session() as session:
        async with session.step("mail.send", {"to": "ops@example.com"}) as step:
            (op,) = await journal.get_operations(session.session_id)
            assert op.state is O.INTENT
            assert op.op_id == step.op_id
            assert step.sequence == 1
        (op,) = await journal.get_operations(session.session_id)
        assert op.state is O.DONE
        assert op.payload == {"to": "ops@example.com"}


async def test_step_update_is_stored_with_done(journal: Journal) -> None:
    """Fields added during the body (a created id) are stored with the DONE state."""
    async with (
        journal.start_session() as session,
        session.step("db.insert", {"table": "users"}) as step,
    ):
        step.update(row_id=42)
        step.update({"extra": [1, 2]})
        assert step.payload == {"table": "users", "row_id": 42, "extra": [1, 2]}
    (op,) = await journal.get_operations(session.session_id)
    assert op.payload == {"table": "users", "row_id": 42, "extra": [1, 2]}


async def test_failing_step_is_failed_and_the_error_propagates(journal: Journal) -> None:
    """A body that raises marks the step FAILED with the error, then the session FAILED."""
    with pytest.raises(Boom):
        async with journal.start_session() as session, session.step("x.y", {}) as step:
            step.update(partial=True)
            raise Boom("half done")
    (op,) = await journal.get_operations(session.session_id)
    assert (op.state, op.error, op.payload) == (O.FAILED, "Boom: half done", {"partial": True})
    record = await journal.get_session(session.session_id)
    assert record is not None
    assert record.status is S.FAILED


async def test_cancelled_step_body_is_failed_with_cancelled_error(journal: Journal) -> None:
    """A step whose body is cancelled is FAILED (effect unknown) and the session CANCELLED."""
    entered = asyncio.Event()
    ids: list[str] = []

    async def work() -> None:
        async with journal.start_session() as session:
            ids.append(session.session_id)
            async with session.step("slow.op", {}):
                entered.set()
                await asyncio.sleep(60)

    task = asyncio.create_task(work())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    (op,) = await journal.get_operations(ids[0])
    assert (op.state, op.error) == (O.FAILED, "CancelledError")
    record = await journal.get_session(ids[0])
    assert record is not None
    assert record.status is S.CANCELLED


async def test_step_can_be_entered_once(journal: Journal) -> None:
    """Re-entering the same Step object is refused."""
    async with journal.start_session() as session:
        step = session.step("x.y")
        async with step:
            pass
        with pytest.raises(SessionStateError, match="only once"):
            async with step:
                pass


async def test_recording_after_the_block_is_refused(journal: Journal) -> None:
    """A session whose block ended refuses new operations with a clear error."""
    async with journal.start_session() as session:
        pass
    with pytest.raises(SessionStateError, match="has ended"):
        await session.record_operation("x.y", {})
    with pytest.raises(SessionStateError, match="has ended"):
        session.step("x.y")
    assert await journal.get_operations(session.session_id) == []


async def test_session_context_can_be_entered_once(journal: Journal) -> None:
    """The object returned by start_session is single use."""
    context = journal.start_session()
    async with context:
        pass
    with pytest.raises(SessionStateError):
        async with context:
            pass


async def test_record_operations_writes_all_in_order(journal: Journal) -> None:
    """A bulk record is written in one go, numbered in order."""
    async with journal.start_session() as session:
        records = await session.record_operations([("a.b", {"i": i}) for i in range(5)])
        assert await session.record_operations([]) == []
    assert [r.sequence for r in records] == [1, 2, 3, 4, 5]
    assert [op.payload["i"] for op in await journal.get_operations(session.session_id)] == [
        0,
        1,
        2,
        3,
        4,
    ]


async def test_payload_defaults_to_empty(journal: Journal) -> None:
    """An operation without a payload stores an empty dict."""
    async with journal.start_session() as session:
        record = await session.record_operation("a.b")
    assert record.payload == {}


async def test_returned_record_does_not_alias_the_callers_payload(journal: Journal) -> None:
    """Changing the payload after recording changes neither the journal nor the record."""
    payload: dict[str, Any] = {"files": ["a"]}
    async with journal.start_session() as session:
        record = await session.record_operation("a.b", payload)
    payload["files"].append("b")
    assert record.payload == {"files": ["a"]}
    (stored,) = await journal.get_operations(session.session_id)
    assert stored.payload == {"files": ["a"]}


async def test_session_after_journal_close_fails_cleanly() -> None:
    """A journal closed under an open session makes its next write raise JournalClosedError."""
    journal = Journal(InMemoryStorage())
    await journal.open()
    with pytest.raises(JournalClosedError):
        async with journal.start_session() as session:
            await journal.aclose()
            await session.record_operation("a.b", {})


async def test_unopened_journal_explains_itself() -> None:
    """Using a journal outside ``async with`` says how to open it."""
    journal = Journal(InMemoryStorage())
    with pytest.raises(JournalClosedError, match="async with"):
        await journal.list_sessions()
    with pytest.raises(JournalClosedError, match="async with"):
        async with journal.start_session():
            pass


async def test_journal_is_single_use_and_aclose_idempotent() -> None:
    """Aclose twice is fine; reopening a closed journal is refused."""
    journal = Journal(InMemoryStorage())
    async with journal:
        pass
    await journal.aclose()
    with pytest.raises(JournalClosedError, match="cannot be opened again"):
        await journal.open()


async def test_list_sessions_filters_and_validates(journal: Journal) -> None:
    """list_sessions filters by status (names or enums) and rejects unknown names."""
    async with journal.start_session() as ok:
        pass
    with pytest.raises(Boom):
        async with journal.start_session() as bad:
            raise Boom
    assert [s.session_id for s in await journal.list_sessions(status="failed")] == [bad.session_id]
    assert {s.session_id for s in await journal.list_sessions(status=[S.FAILED, "completed"])} == {
        ok.session_id,
        bad.session_id,
    }
    assert len(await journal.list_sessions(limit=1)) == 1
    with pytest.raises(ValueError, match="unknown session status"):
        await journal.list_sessions(status="exploded")
    with pytest.raises(ValueError, match="limit"):
        await journal.list_sessions(limit=-1)


async def test_metrics_count_what_happened() -> None:
    """MetricsCollector keeps unmake's keys and counts sessions, operations and ends."""
    metrics = MetricsCollector()
    async with open_journal(":memory:", metrics=metrics) as journal:
        async with journal.start_session() as session:
            await session.record_operation("a.b", {})
            async with session.step("a.b", {}):
                pass
        with pytest.raises(Boom):
            async with journal.start_session():
                raise Boom
    stats = metrics.get_stats()
    assert stats["session_created"] == 2
    assert stats["operations_recorded"] == 2
    assert stats["sessions_completed"] == 1
    assert stats["sessions_failed"] == 1
    assert {"sessions_undone", "total_undo_time"} <= stats.keys()
