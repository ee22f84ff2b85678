"""The Storage protocol, checked the same way against every backend.

Each test gets a fresh storage of each kind from the ``storage_factory`` fixture
(SQLite and in-memory; PostgreSQL will join). Nothing here may know which one it has.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest

from retract import (
    JournalClosedError,
    OperationState,
    Owner,
    SessionNotFoundError,
    SessionStatus,
    Storage,
)
from retract.journal._encoding import new_id
from retract.journal._owner import current_owner
from retract.journal.storage import NewOperation, OperationUpdate

S = SessionStatus
O = OperationState  # noqa: E741


@pytest.fixture
async def storage(storage_factory: Callable[[], Storage]) -> AsyncIterator[Storage]:
    """An open storage of each kind."""
    opened = storage_factory()
    await opened.open()
    try:
        yield opened
    finally:
        await opened.aclose()


async def new_session(
    storage: Storage, context: str = '{"a":1}', owner: Owner | None = None
) -> str:
    session_id = new_id()
    await storage.create_session(session_id, context, owner or current_owner(), time.time())
    return session_id


def ops(*states: OperationState, op_type: str = "t.op") -> list[NewOperation]:
    return [
        NewOperation(new_id(), op_type, f'{{"n":{i}}}', state, time.time())
        for i, state in enumerate(states)
    ]


async def test_created_session_reads_back_running_with_owner(storage: Storage) -> None:
    """A created session is RUNNING, with its context, owner and creation time."""
    before = time.time()
    session_id = await new_session(storage)
    record = await storage.get_session(session_id)
    assert record is not None
    assert record.session_id == session_id
    assert record.status is S.RUNNING
    assert record.context == {"a": 1}
    assert record.owner == current_owner()
    assert record.completed_at is None
    assert record.error is None
    assert record.undo_count == 0
    assert before - 1 <= record.created_at.timestamp() <= time.time() + 1


async def test_unknown_session_reads_as_none(storage: Storage) -> None:
    """get_session of an unknown id is None, and it has no operations."""
    assert await storage.get_session("nope") is None
    assert await storage.get_operations("nope") == []
    assert await storage.pending_summary("nope") == (0, set())


async def test_append_numbers_operations_from_one_without_gaps(storage: Storage) -> None:
    """Sequences start at 1 and continue across appends."""
    session_id = await new_session(storage)
    assert await storage.append_operations(session_id, ops(O.DONE, O.DONE)) == [1, 2]
    assert await storage.append_operations(session_id, ops(O.INTENT)) == [3]
    records = await storage.get_operations(session_id)
    assert [r.sequence for r in records] == [1, 2, 3]
    assert [r.state for r in records] == [O.DONE, O.DONE, O.INTENT]
    assert [r.payload for r in records] == [{"n": 0}, {"n": 1}, {"n": 0}]


async def test_sequences_are_per_session(storage: Storage) -> None:
    """Two sessions each count from 1."""
    first, second = await new_session(storage), await new_session(storage)
    assert await storage.append_operations(first, ops(O.DONE)) == [1]
    assert await storage.append_operations(second, ops(O.DONE, O.DONE)) == [1, 2]
    assert await storage.append_operations(first, ops(O.DONE)) == [2]


async def test_append_to_unknown_session_fails_and_writes_nothing(storage: Storage) -> None:
    """Appending to a session that does not exist raises SessionNotFoundError."""
    with pytest.raises(SessionNotFoundError):
        await storage.append_operations("missing", ops(O.DONE))
    assert await storage.get_operations("missing") == []


async def test_failing_request_does_not_sink_concurrent_ones(storage: Storage) -> None:
    """A failing append among concurrent ones fails alone and consumes no sequence."""
    session_id = await new_session(storage)
    results = await asyncio.gather(
        storage.append_operations(session_id, ops(O.DONE)),
        storage.append_operations("missing", ops(O.DONE)),
        storage.append_operations(session_id, ops(O.DONE, O.DONE)),
        return_exceptions=True,
    )
    assert results[0] == [1]
    assert isinstance(results[1], SessionNotFoundError)
    assert results[2] == [2, 3]
    assert await storage.append_operations(session_id, ops(O.DONE)) == [4]


async def test_operation_records_keep_all_fields(storage: Storage) -> None:
    """op_id, type, payload, created_at, state survive the round trip."""
    session_id = await new_session(storage)
    new = NewOperation(new_id(), "mail.send", '{"to":"ops@example.com","n":[1,2]}', O.INTENT, 1e9)
    await storage.append_operations(session_id, [new])
    (record,) = await storage.get_operations(session_id)
    assert record.op_id == new.op_id
    assert record.session_id == session_id
    assert record.op_type == "mail.send"
    assert record.payload == {"to": "ops@example.com", "n": [1, 2]}
    assert record.created_at.timestamp() == pytest.approx(1e9)
    assert record.state is O.INTENT
    assert record.error is None
    assert record.updated_at is None


async def test_update_operations_changes_state_error_and_payload(storage: Storage) -> None:
    """Updates apply state and error; the payload changes only when given."""
    session_id = await new_session(storage)
    await storage.append_operations(session_id, ops(O.INTENT, O.INTENT))
    await storage.update_operations(
        [
            OperationUpdate(session_id, 1, O.DONE, None, '{"id":7}'),
            OperationUpdate(session_id, 2, O.FAILED, "ValueError: boom"),
        ],
        at=2e9,
    )
    first, second = await storage.get_operations(session_id)
    assert (first.state, first.error, first.payload) == (O.DONE, None, {"id": 7})
    assert (second.state, second.error, second.payload) == (O.FAILED, "ValueError: boom", {"n": 1})
    assert first.updated_at is not None
    assert first.updated_at.timestamp() == pytest.approx(2e9)


async def test_update_of_unknown_operation_is_ignored(storage: Storage) -> None:
    """An update naming a missing session or sequence changes nothing and does not fail."""
    session_id = await new_session(storage)
    await storage.append_operations(session_id, ops(O.DONE))
    await storage.update_operations(
        [OperationUpdate(session_id, 5, O.UNDONE), OperationUpdate("nope", 1, O.UNDONE)],
        at=time.time(),
    )
    (record,) = await storage.get_operations(session_id)
    assert record.state is O.DONE


async def test_update_session_sets_terminal_status_and_time(storage: Storage) -> None:
    """A terminal status records completed_at and the error."""
    session_id = await new_session(storage)
    assert await storage.update_session(session_id, status=S.FAILED, at=3e9, error="E: x")
    record = await storage.get_session(session_id)
    assert record is not None
    assert record.status is S.FAILED
    assert record.error == "E: x"
    assert record.completed_at is not None
    assert record.completed_at.timestamp() == pytest.approx(3e9)


async def test_update_session_keeps_error_when_none_is_given(storage: Storage) -> None:
    """error=None leaves the stored error alone."""
    session_id = await new_session(storage)
    await storage.update_session(session_id, status=S.FAILED, at=1.0, error="E: x")
    await storage.update_session(session_id, status=S.UNDOING, at=2.0)
    record = await storage.get_session(session_id)
    assert record is not None
    assert (record.status, record.error) == (S.UNDOING, "E: x")


async def test_update_session_is_a_compare_and_set_on_status(storage: Storage) -> None:
    """With expect_statuses, a session in another status is left unchanged."""
    session_id = await new_session(storage)
    assert not await storage.update_session(
        session_id, status=S.UNDOING, at=1.0, expect_statuses=(S.COMPLETED,)
    )
    assert await storage.update_session(
        session_id, status=S.COMPLETED, at=1.0, expect_statuses=(S.RUNNING,)
    )
    record = await storage.get_session(session_id)
    assert record is not None
    assert record.status is S.COMPLETED


async def test_update_session_is_a_compare_and_set_on_owner(storage: Storage) -> None:
    """With expect_owner, only the current owner's token matches; a claim moves it."""
    session_id = await new_session(storage)
    other = Owner("other-token", 1, "elsewhere", 0.0)
    assert not await storage.update_session(
        session_id, status=S.UNDOING, at=1.0, expect_owner="someone-else"
    )
    assert await storage.update_session(
        session_id, status=S.UNDOING, at=1.0, owner=other, expect_owner=current_owner().token
    )
    record = await storage.get_session(session_id)
    assert record is not None
    assert record.owner == other


async def test_update_session_counts_undos(storage: Storage) -> None:
    """count_undo increments undo_count."""
    session_id = await new_session(storage)
    for _ in range(2):
        await storage.update_session(session_id, status=S.UNDOING, at=1.0, count_undo=True)
    record = await storage.get_session(session_id)
    assert record is not None
    assert record.undo_count == 2


async def test_update_of_unknown_session_returns_false(storage: Storage) -> None:
    """Nothing to change is reported as False, not raised."""
    assert not await storage.update_session("nope", status=S.COMPLETED, at=1.0)


async def test_settle_intents_marks_open_steps_in_doubt(storage: Storage) -> None:
    """Ending a session with settle_intents turns INTENT operations IN_DOUBT, only those."""
    session_id = await new_session(storage)
    await storage.append_operations(session_id, ops(O.INTENT, O.DONE, O.FAILED, O.INTENT))
    await storage.update_session(session_id, status=S.INTERRUPTED, at=1.0, settle_intents=True)
    states = [r.state for r in await storage.get_operations(session_id)]
    assert states == [O.IN_DOUBT, O.DONE, O.FAILED, O.IN_DOUBT]


async def test_settle_intents_only_when_the_session_changed(storage: Storage) -> None:
    """A compare-and-set that fails settles nothing."""
    session_id = await new_session(storage)
    await storage.append_operations(session_id, ops(O.INTENT))
    await storage.update_session(
        session_id, status=S.INTERRUPTED, at=1.0, expect_statuses=(S.UNDOING,), settle_intents=True
    )
    (record,) = await storage.get_operations(session_id)
    assert record.state is O.INTENT


async def test_list_sessions_newest_first_with_limit(storage: Storage) -> None:
    """Sessions come back newest first; limit caps the count."""
    ids = [await new_session(storage) for _ in range(4)]
    listed = [s.session_id for s in await storage.list_sessions()]
    assert listed == ids[::-1]
    assert [s.session_id for s in await storage.list_sessions(limit=2)] == ids[:1:-1]


async def test_list_sessions_filters_by_status(storage: Storage) -> None:
    """Statuses keeps only sessions in those statuses."""
    done, running = await new_session(storage), await new_session(storage)
    await storage.update_session(done, status=S.COMPLETED, at=1.0)
    assert [s.session_id for s in await storage.list_sessions(statuses=[S.COMPLETED])] == [done]
    both = await storage.list_sessions(statuses=[S.COMPLETED, S.RUNNING])
    assert {s.session_id for s in both} == {done, running}


async def test_list_sessions_filters_by_id_prefix(storage: Storage) -> None:
    """id_prefix matches the beginning of session ids."""
    session_id = await new_session(storage)
    await new_session(storage)
    found = await storage.list_sessions(id_prefix=session_id[:13])
    assert [s.session_id for s in found] == [session_id]
    assert await storage.list_sessions(id_prefix="zzzz") == []


async def test_operations_page_walks_backwards(storage: Storage) -> None:
    """Pages come newest first, below ``before``, up to ``limit``."""
    session_id = await new_session(storage)
    await storage.append_operations(session_id, ops(*[O.DONE] * 5))
    first = await storage.operations_page(session_id, before=None, limit=2, pending_only=False)
    assert [r.sequence for r in first] == [5, 4]
    second = await storage.operations_page(session_id, before=4, limit=2, pending_only=False)
    assert [r.sequence for r in second] == [3, 2]
    last = await storage.operations_page(session_id, before=2, limit=2, pending_only=False)
    assert [r.sequence for r in last] == [1]


async def test_operations_page_pending_only_skips_settled(storage: Storage) -> None:
    """pending_only leaves out UNDONE and SKIPPED, keeps everything else."""
    session_id = await new_session(storage)
    await storage.append_operations(
        session_id, ops(O.DONE, O.UNDONE, O.SKIPPED, O.UNDO_FAILED, O.IN_DOUBT, O.UNDOING)
    )
    page = await storage.operations_page(session_id, before=None, limit=10, pending_only=True)
    assert [r.sequence for r in page] == [6, 5, 4, 1]


async def test_pending_summary_counts_and_types(storage: Storage) -> None:
    """The summary counts operations still needing undo and lists their types."""
    session_id = await new_session(storage)
    await storage.append_operations(session_id, ops(O.DONE, O.UNDONE, op_type="a.x"))
    await storage.append_operations(session_id, ops(O.IN_DOUBT, op_type="b.y"))
    assert await storage.pending_summary(session_id) == (2, {"a.x", "b.y"})


async def test_undo_progress_marks_window_then_flips_it(storage: Storage) -> None:
    """Begin marks a range UNDOING (not settled ones); undone flips UNDOING to UNDONE."""
    session_id = await new_session(storage)
    await storage.append_operations(session_id, ops(O.DONE, O.SKIPPED, O.DONE, O.DONE))
    await storage.record_undo_progress(session_id, outcomes=[], undone=None, begin=(2, 4), at=1.0)
    states = [r.state for r in await storage.get_operations(session_id)]
    assert states == [O.DONE, O.SKIPPED, O.UNDOING, O.UNDOING]
    await storage.record_undo_progress(
        session_id,
        outcomes=[OperationUpdate(session_id, 3, O.UNDO_FAILED, "E: no")],
        undone=(2, 4),
        begin=(1, 1),
        at=2.0,
    )
    records = await storage.get_operations(session_id)
    assert [r.state for r in records] == [O.UNDOING, O.SKIPPED, O.UNDO_FAILED, O.UNDONE]
    assert records[2].error == "E: no"


async def test_undo_progress_outcomes_apply_before_the_flip(storage: Storage) -> None:
    """An operation given back its old state is not flipped to UNDONE by the range."""
    session_id = await new_session(storage)
    await storage.append_operations(session_id, ops(O.DONE, O.IN_DOUBT))
    await storage.record_undo_progress(session_id, outcomes=[], undone=None, begin=(1, 2), at=1.0)
    await storage.record_undo_progress(
        session_id,
        outcomes=[OperationUpdate(session_id, 1, O.DONE)],
        undone=(1, 2),
        begin=None,
        at=2.0,
    )
    states = [r.state for r in await storage.get_operations(session_id)]
    assert states == [O.DONE, O.UNDONE]


async def test_undone_flip_clears_the_error(storage: Storage) -> None:
    """An operation that failed before and is now undone loses its old error."""
    session_id = await new_session(storage)
    await storage.append_operations(session_id, ops(O.DONE))
    await storage.update_operations([OperationUpdate(session_id, 1, O.UNDO_FAILED, "E")], 1.0)
    await storage.record_undo_progress(session_id, outcomes=[], undone=None, begin=(1, 1), at=2.0)
    await storage.record_undo_progress(session_id, outcomes=[], undone=(1, 1), begin=None, at=3.0)
    (record,) = await storage.get_operations(session_id)
    assert (record.state, record.error) == (O.UNDONE, None)


async def test_records_are_snapshots_not_aliases(storage: Storage) -> None:
    """Mutating a returned payload does not change what is stored."""
    session_id = await new_session(storage)
    await storage.append_operations(session_id, ops(O.DONE))
    (record,) = await storage.get_operations(session_id)
    record.payload["n"] = 99
    (again,) = await storage.get_operations(session_id)
    assert again.payload == {"n": 0}


async def test_unicode_payload_round_trips(storage: Storage) -> None:
    """Non-ASCII text is stored exactly."""
    session_id = await new_session(storage, context='{"who":"Zoë 🚀"}')
    record = await storage.get_session(session_id)
    assert record is not None
    assert record.context == {"who": "Zoë 🚀"}


async def test_closed_storage_refuses_calls(storage_factory: Callable[[], Storage]) -> None:
    """After aclose every call raises JournalClosedError, and aclose is idempotent."""
    storage = storage_factory()
    await storage.open()
    await storage.aclose()
    await storage.aclose()
    with pytest.raises(JournalClosedError):
        await storage.get_session("x")
    with pytest.raises(JournalClosedError):
        await storage.create_session("x", "{}", current_owner(), 1.0)


async def test_unopened_storage_refuses_calls(storage_factory: Callable[[], Storage]) -> None:
    """Using a storage before open raises JournalClosedError naming the fix."""
    storage = storage_factory()
    with pytest.raises(JournalClosedError, match="async with"):
        await storage.list_sessions()


async def test_storage_cannot_be_opened_twice(storage_factory: Callable[[], Storage]) -> None:
    """A second open() is refused: a storage is opened once."""
    storage = storage_factory()
    await storage.open()
    try:
        with pytest.raises(JournalClosedError):
            await storage.open()
    finally:
        await storage.aclose()
