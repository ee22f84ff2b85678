"""Undo: strict reverse order, progress in the journal, resumable, never twice."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from typing import Any

import pytest

from retract import (
    Journal,
    OperationRecord,
    OperationRegistry,
    OperationState,
    SessionNotFoundError,
    SessionStateError,
    SessionStatus,
    UndoErrorGroup,
    UndoFailedError,
    UndoInProgressError,
    UndoSkipped,
    UnknownOperationTypeError,
)

S = SessionStatus
O = OperationState  # noqa: E741


class Boom(Exception):
    """A failing handler."""


class Recorder:
    """A registry whose "t.op" handler logs calls and can be told to fail or skip."""

    def __init__(self) -> None:
        self.registry = OperationRegistry(builtins=False)
        self.calls: list[int] = []
        self.seen: list[OperationRecord] = []
        self.fail: set[int] = set()
        self.skip: set[int] = set()
        self.registry.handler("t.op")(self.undo)

    async def undo(self, op: OperationRecord) -> None:
        self.seen.append(op)
        if op.payload["i"] in self.fail:
            raise Boom(f"cannot undo {op.payload['i']}")
        if op.payload["i"] in self.skip:
            raise UndoSkipped("already gone")
        self.calls.append(op.payload["i"])


async def make_session(journal: Journal, n: int, op_type: str = "t.op") -> str:
    async with journal.start_session(n=n) as session:
        await session.record_operations([(op_type, {"i": i}) for i in range(n)])
    return session.session_id


async def states(journal: Journal, session_id: str) -> list[OperationState]:
    return [op.state for op in await journal.get_operations(session_id)]


async def test_undo_runs_handlers_newest_first(journal: Journal) -> None:
    """Every operation is undone once, in strict reverse order, and the session rolls back."""
    recorder = Recorder()
    session_id = await make_session(journal, 5)
    report = await journal.undo_session(session_id, recorder.registry)
    assert recorder.calls == [4, 3, 2, 1, 0]
    assert (report.status, report.total, report.undone, report.remaining) == (
        S.ROLLED_BACK,
        5,
        5,
        0,
    )
    assert report.complete
    assert await states(journal, session_id) == [O.UNDONE] * 5
    record = await journal.get_session(session_id)
    assert record is not None
    assert (record.status, record.undo_count) == (S.ROLLED_BACK, 1)


async def test_long_sessions_keep_order_across_pages_and_windows(journal: Journal) -> None:
    """Thousands of operations (several pages, growing windows) keep the exact order."""
    recorder = Recorder()
    session_id = await make_session(journal, 2500)
    await journal.undo_session(session_id, recorder.registry)
    assert recorder.calls == list(range(2499, -1, -1))
    assert set(await states(journal, session_id)) == {O.UNDONE}


async def test_missing_handler_undoes_nothing_and_names_types(journal: Journal) -> None:
    """An operation type without a handler stops the undo before anything is touched."""
    recorder = Recorder()
    async with journal.start_session() as session:
        await session.record_operation("t.op", {"i": 0})
        await session.record_operation("mail.send", {})
        await session.record_operation("db.drop", {})
    with pytest.raises(UnknownOperationTypeError) as caught:
        await journal.undo_session(session.session_id, recorder.registry)
    assert caught.value.missing == ["db.drop", "mail.send"]
    assert caught.value.registered == ["t.op"]
    assert "db.drop, mail.send" in str(caught.value)
    assert "registered: t.op" in str(caught.value)
    assert "nothing was undone" in str(caught.value)
    assert recorder.calls == []
    assert await states(journal, session.session_id) == [O.DONE] * 3
    record = await journal.get_session(session.session_id)
    assert record is not None
    assert (record.status, record.undo_count) == (S.COMPLETED, 0)


async def test_unknown_session_lists_recent_ones(journal: Journal) -> None:
    """Undoing an id that does not exist raises SessionNotFoundError with recent ids."""
    session_id = await make_session(journal, 1)
    with pytest.raises(SessionNotFoundError) as caught:
        await journal.undo_session("no-such-id", Recorder().registry)
    assert session_id in str(caught.value)
    assert caught.value.suggestions == [session_id]
    assert isinstance(caught.value, LookupError)
    with pytest.raises(SessionNotFoundError):
        await journal.plan_undo("no-such-id")
    with pytest.raises(SessionNotFoundError):
        await journal.get_operations("no-such-id")


async def test_failed_handler_stops_and_a_rerun_resumes(journal: Journal) -> None:
    """With on_error="stop" the undo stops at the failure; the rerun never repeats an op."""
    recorder = Recorder()
    recorder.fail = {2}
    session_id = await make_session(journal, 5)
    with pytest.raises(UndoFailedError) as caught:
        await journal.undo_session(session_id, recorder.registry)
    error = caught.value
    assert isinstance(error.__cause__, Boom)
    assert error.report.status is S.PARTIALLY_ROLLED_BACK
    assert (error.report.undone, error.report.remaining) == (2, 3)
    assert error.op_id == (await journal.get_operations(session_id))[2].op_id
    assert "#3" in str(error)
    assert "resume" in str(error)
    assert recorder.calls == [4, 3]
    assert await states(journal, session_id) == [O.DONE, O.DONE, O.UNDO_FAILED, O.UNDONE, O.UNDONE]
    failed = (await journal.get_operations(session_id))[2]
    assert failed.error == "Boom: cannot undo 2"

    recorder.fail = set()
    report = await journal.undo_session(session_id, recorder.registry)
    assert recorder.calls == [4, 3, 2, 1, 0]
    assert report.status is S.ROLLED_BACK
    assert (report.total, report.undone) == (3, 3)
    undo_retry = [op for op in recorder.seen if op.payload["i"] == 2]
    assert [op.in_doubt for op in undo_retry] == [False, True]
    record = await journal.get_session(session_id)
    assert record is not None
    assert record.undo_count == 2


async def test_continue_collects_every_failure_in_a_group(journal: Journal) -> None:
    """With on_error="continue" every handler runs and failures come back together."""
    recorder = Recorder()
    recorder.fail = {1, 3}
    session_id = await make_session(journal, 5)
    with pytest.raises(UndoErrorGroup) as caught:
        await journal.undo_session(session_id, recorder.registry, on_error="continue")
    group = caught.value
    operations = await journal.get_operations(session_id)
    assert group.op_ids == (operations[3].op_id, operations[1].op_id)
    assert [str(e) for e in group.exceptions] == ["cannot undo 3", "cannot undo 1"]
    assert group.report is not None
    assert (group.report.undone, group.report.status) == (3, S.PARTIALLY_ROLLED_BACK)
    assert [f.sequence for f in group.report.failed] == [4, 2]
    assert recorder.calls == [4, 2, 0]
    assert await states(journal, session_id) == [
        O.UNDONE,
        O.UNDO_FAILED,
        O.UNDONE,
        O.UNDO_FAILED,
        O.UNDONE,
    ]


async def test_error_group_keeps_op_ids_when_split(journal: Journal) -> None:
    """Splitting the group (as except* does) keeps each exception's operation id."""
    recorder = Recorder()
    recorder.fail = {0}
    session_id = await make_session(journal, 2)

    @recorder.registry.handler("other.op")
    async def failing_type_error(op: OperationRecord) -> None:
        raise TypeError("wrong")

    async with journal.start_session() as session:
        await session.record_operation("t.op", {"i": 0})
        await session.record_operation("other.op", {})
    del session_id
    with pytest.raises(UndoErrorGroup) as caught:
        await journal.undo_session(session.session_id, recorder.registry, on_error="continue")
    type_errors, rest = caught.value.split(TypeError)
    assert isinstance(type_errors, UndoErrorGroup)
    assert isinstance(rest, UndoErrorGroup)
    operations = await journal.get_operations(session.session_id)
    assert type_errors.op_ids == (operations[1].op_id,)
    assert rest.op_ids == (operations[0].op_id,)
    assert type_errors.report is caught.value.report


async def test_skipped_operations_are_settled_not_failed(journal: Journal) -> None:
    """UndoSkipped marks an operation SKIPPED with its reason; the session rolls back."""
    recorder = Recorder()
    recorder.skip = {1}
    session_id = await make_session(journal, 3)
    report = await journal.undo_session(session_id, recorder.registry)
    assert (report.undone, report.skipped, report.status) == (2, 1, S.ROLLED_BACK)
    operations = await journal.get_operations(session_id)
    assert [op.state for op in operations] == [O.UNDONE, O.SKIPPED, O.UNDONE]
    assert operations[1].error == "already gone"


async def test_rolled_back_session_is_not_undone_twice(journal: Journal) -> None:
    """A second undo of a rolled-back session calls no handler and changes nothing."""
    recorder = Recorder()
    session_id = await make_session(journal, 3)
    await journal.undo_session(session_id, recorder.registry)
    report = await journal.undo_session(session_id, recorder.registry)
    assert recorder.calls == [2, 1, 0]
    assert (report.total, report.undone, report.status) == (0, 0, S.ROLLED_BACK)
    record = await journal.get_session(session_id)
    assert record is not None
    assert record.undo_count == 1


async def test_empty_session_rolls_back(journal: Journal) -> None:
    """A session without operations can be undone (nothing to do) and ends ROLLED_BACK."""
    async with journal.start_session() as session:
        pass
    report = await journal.undo_session(session.session_id, Recorder().registry)
    assert (report.total, report.status) == (0, S.ROLLED_BACK)


async def test_handlers_see_the_state_the_operation_had(journal: Journal) -> None:
    """A FAILED step (effect may be partial) reaches its handler with in_doubt set."""
    recorder = Recorder()
    with pytest.raises(Boom):
        async with journal.start_session() as session:
            await session.record_operation("t.op", {"i": 0})
            async with session.step("t.op", {"i": 1}):
                raise Boom("half")
    await journal.undo_session(session.session_id, recorder.registry)
    assert [(op.payload["i"], op.state, op.in_doubt) for op in recorder.seen] == [
        (1, O.FAILED, True),
        (0, O.DONE, False),
    ]


async def test_plan_undo_lists_pending_without_side_effects(journal: Journal) -> None:
    """plan_undo returns what would be undone, newest first, and changes nothing."""
    recorder = Recorder()
    recorder.fail = {1}
    session_id = await make_session(journal, 3)
    with pytest.raises(UndoFailedError):
        await journal.undo_session(session_id, recorder.registry)
    before = await journal.get_operations(session_id)
    plan = await journal.plan_undo(session_id, recorder.registry)
    assert [op.sequence for op in plan.operations] == [2, 1]
    assert plan.ready
    assert len(plan) == 2
    assert plan.session.status is S.PARTIALLY_ROLLED_BACK
    assert await journal.get_operations(session_id) == before
    missing = await journal.plan_undo(session_id, OperationRegistry())
    assert missing.missing_types == ("t.op",)
    assert not missing.ready


async def test_journal_registry_is_the_default(journal: Journal) -> None:
    """Without a registry argument, undo uses the journal's own registry."""
    recorder = Recorder()
    journal.registry = recorder.registry
    session_id = await make_session(journal, 2)
    await journal.undo_session(session_id)
    assert recorder.calls == [1, 0]


async def test_unmake_style_factories_sync_and_async(journal: Journal) -> None:
    """Factories built from the payload, with a plain or async undo(), are both awaited."""
    undone: list[tuple[str, int]] = []

    class SyncUndo:
        def __init__(self, payload: dict[str, Any]) -> None:
            self.i = payload["i"]

        def undo(self) -> None:
            undone.append(("sync", self.i))

    class AsyncUndo:
        def __init__(self, payload: dict[str, Any]) -> None:
            self.i = payload["i"]

        async def undo(self) -> None:
            await asyncio.sleep(0)
            undone.append(("async", self.i))

    registry = OperationRegistry()
    registry.register("sync.op", SyncUndo)
    registry.register("async.op", AsyncUndo)
    async with journal.start_session() as session:
        await session.record_operation("sync.op", {"i": 1})
        await session.record_operation("async.op", {"i": 2})
    await journal.undo_session(session.session_id, registry)
    assert undone == [("async", 2), ("sync", 1)]


async def test_concurrent_undo_of_one_session_is_refused(journal: Journal) -> None:
    """While an undo runs, a second one of the same session raises UndoInProgressError."""
    release = asyncio.Event()
    started = asyncio.Event()
    registry = OperationRegistry()

    @registry.handler("t.op")
    async def slow(op: OperationRecord) -> None:
        started.set()
        await release.wait()

    session_id = await make_session(journal, 2)
    first = asyncio.create_task(journal.undo_session(session_id, registry))
    await started.wait()
    with pytest.raises(UndoInProgressError):
        await journal.undo_session(session_id, registry)
    release.set()
    report = await first
    assert report.status is S.ROLLED_BACK


async def test_undo_of_a_running_session_is_refused(journal: Journal) -> None:
    """A session whose block is still running in a live process cannot be undone."""
    async with journal.start_session() as session:
        await session.record_operation("t.op", {"i": 0})
        with pytest.raises(SessionStateError, match="still running"):
            await journal.undo_session(session.session_id, Recorder().registry)
        plan = await journal.plan_undo(session.session_id, Recorder().registry)
        assert plan.blocker is not None
        assert "still running" in plan.blocker
        assert not plan.ready
    plan = await journal.plan_undo(session.session_id, Recorder().registry)
    assert (plan.blocker, plan.ready) == (None, True)


async def test_undo_on_error_rolls_back_then_reraises(journal: Journal) -> None:
    """undo_on_error=True undoes the session's operations, then re-raises the same error."""
    recorder = Recorder()
    journal.registry = recorder.registry
    error = Boom("step three failed")
    with pytest.raises(Boom) as caught:
        async with journal.start_session(undo_on_error=True) as session:
            await session.record_operation("t.op", {"i": 0})
            async with session.step("t.op", {"i": 1}):
                pass
            raise error
    assert caught.value is error
    assert not getattr(error, "__notes__", None)
    assert recorder.calls == [1, 0]
    record = await journal.get_session(session.session_id)
    assert record is not None
    assert (record.status, record.error) == (S.ROLLED_BACK, "Boom: step three failed")


async def test_undo_on_error_failure_is_noted_on_the_original(journal: Journal) -> None:
    """If the automatic undo fails, the original error still propagates, with a note."""
    recorder = Recorder()
    recorder.fail = {0}
    journal.registry = recorder.registry
    with pytest.raises(Boom, match="original") as caught:
        async with journal.start_session(undo_on_error=True) as session:
            await session.record_operation("t.op", {"i": 0})
            raise Boom("original")
    notes = getattr(caught.value, "__notes__", [])
    assert len(notes) == 1
    assert f"retract undo {session.session_id}" in notes[0]
    record = await journal.get_session(session.session_id)
    assert record is not None
    assert record.status is S.PARTIALLY_ROLLED_BACK


async def test_undo_on_error_also_on_cancellation(journal: Journal) -> None:
    """A cancelled undo_on_error session is rolled back before the cancellation propagates."""
    recorder = Recorder()
    journal.registry = recorder.registry
    ready = asyncio.Event()
    ids: list[str] = []

    async def work() -> None:
        async with journal.start_session(undo_on_error=True) as session:
            ids.append(session.session_id)
            await session.record_operation("t.op", {"i": 0})
            ready.set()
            await asyncio.sleep(60)

    task = asyncio.create_task(work())
    await ready.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert recorder.calls == [0]
    record = await journal.get_session(ids[0])
    assert record is not None
    assert record.status is S.ROLLED_BACK


async def test_successful_undo_on_error_session_is_left_alone(journal: Journal) -> None:
    """undo_on_error does nothing when the block succeeds."""
    recorder = Recorder()
    journal.registry = recorder.registry
    async with journal.start_session(undo_on_error=True) as session:
        await session.record_operation("t.op", {"i": 0})
    assert recorder.calls == []
    record = await journal.get_session(session.session_id)
    assert record is not None
    assert record.status is S.COMPLETED


@pytest.mark.parametrize("max_in_doubt", [1, 4, 1024])
async def test_crash_mid_window_leaves_at_most_the_window_in_doubt(
    journal: Journal, max_in_doubt: int
) -> None:
    """Interrupted after k handlers, at most max_in_doubt operations are left UNDOING."""
    calls: Counter[int] = Counter()
    registry = OperationRegistry()

    class Crash(BaseException):
        """Stands for the process dying inside a handler."""

    @registry.handler("t.op")
    async def handler(op: OperationRecord) -> None:
        calls[op.payload["i"]] += 1
        if sum(calls.values()) == 37:
            raise Crash

    session_id = await make_session(journal, 100)
    with pytest.raises(Crash):
        await journal.undo_session(session_id, registry, max_in_doubt=max_in_doubt)
    result = await states(journal, session_id)
    assert result.count(O.UNDOING) == 0  # a live process gives unstarted ones back
    assert result.count(O.UNDO_FAILED) == 1
    assert result.count(O.UNDONE) == 36
    record = await journal.get_session(session_id)
    assert record is not None
    assert record.status is S.PARTIALLY_ROLLED_BACK


async def test_progress_callback_counts_to_total(journal: Journal) -> None:
    """The progress callback sees (handled, total) after each operation."""
    seen: list[tuple[int, int]] = []
    session_id = await make_session(journal, 4)
    await journal.undo_session(
        session_id, Recorder().registry, progress=lambda done, total: seen.append((done, total))
    )
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"on_error": "ignore"}, "on_error"), ({"max_in_doubt": 0}, "max_in_doubt")],
)
async def test_bad_undo_options_are_refused(
    journal: Journal, kwargs: dict[str, Any], match: str
) -> None:
    """Unknown on_error values and a non-positive window are ValueErrors, before anything."""
    session_id = await make_session(journal, 1)
    with pytest.raises(ValueError, match=match):
        await journal.undo_session(session_id, Recorder().registry, **kwargs)
    assert await states(journal, session_id) == [O.DONE]


async def test_blocking_handlers_run_off_the_event_loop(journal: Journal) -> None:
    """blocking=True runs a plain handler in a worker thread."""
    loop_thread = threading.current_thread()
    threads: list[threading.Thread] = []
    registry = OperationRegistry()

    @registry.handler("t.op", blocking=True)
    def blocking(op: OperationRecord) -> None:
        threads.append(threading.current_thread())

    session_id = await make_session(journal, 2)
    await journal.undo_session(session_id, registry)
    assert len(threads) == 2
    assert all(t is not loop_thread for t in threads)
