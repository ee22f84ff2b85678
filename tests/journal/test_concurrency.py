"""Many sessions, steps and undos at once in one event loop, on every storage.

Group commit batches the rows of concurrent callers into one transaction; these tests
check that batching loses nothing, duplicates nothing and keeps every session's
sequence numbers gap-free 1..n, also when some of the callers are cancelled midway.
``RETRACT_SEED`` fixes the seed (it is printed in every assertion message).
"""

from __future__ import annotations

import asyncio
import collections
import os
import random
from dataclasses import dataclass, field

import pytest

from retract import (
    Journal,
    OperationRecord,
    OperationRegistry,
    OperationState,
    Session,
    SessionStatus,
    UndoInProgressError,
)
from tests.helpers import StorageFactory

SEED = int(os.environ.get("RETRACT_SEED") or random.SystemRandom().randrange(2**32))
SESSIONS = 200

S = SessionStatus
O = OperationState  # noqa: E741


class BoomError(Exception):
    """Raised on purpose inside a step body."""


@dataclass(slots=True)
class Recorded:
    """What one session's code was told it recorded: sequence -> (op_id, state)."""

    index: int
    session_id: str = ""
    rows: dict[int, tuple[str, OperationState]] = field(default_factory=dict)
    block_done: bool = False

    def add(self, sequence: int | None, op_id: str, state: OperationState) -> None:
        assert sequence is not None
        assert sequence not in self.rows, f"seed {SEED}: sequence {sequence} handed out twice"
        self.rows[sequence] = (op_id, state)


async def record_mix(
    session: Session, recorded: Recorded, rng: random.Random, *, check_visible: bool
) -> None:
    """Journal a random mix of operations, noting what each call returned."""
    journal = session.journal
    for n in range(rng.randint(1, 8)):
        kind = rng.choice(("record", "records", "step", "failing-step"))
        if kind == "record":
            op = await session.record_operation("conc.note", {"i": recorded.index, "n": n})
            recorded.add(op.sequence, op.op_id, O.DONE)
            if check_visible:
                # each caller resumes only once its own row is committed (and readable)
                ops = await journal.get_operations(session.session_id)
                assert op.op_id in {o.op_id for o in ops}, f"seed {SEED}: not yet visible"
        elif kind == "records":
            batch = [("conc.note", {"i": recorded.index, "n": n, "k": k}) for k in range(3)]
            for op in await session.record_operations(batch):
                recorded.add(op.sequence, op.op_id, O.DONE)
        else:
            fail = kind == "failing-step"
            try:
                async with session.step("conc.step", {"i": recorded.index, "n": n}) as step:
                    await asyncio.sleep(0)
                    if fail:
                        recorded.add(step.sequence, step.op_id, O.FAILED)
                        raise BoomError
                    step.update(finished=True)
                recorded.add(step.sequence, step.op_id, O.DONE)
            except BoomError:
                pass
        await asyncio.sleep(0)


async def check_rows(journal: Journal, recorded: Recorded) -> list[str]:
    """The journal holds exactly what the session was told; return its op ids."""
    ops = await journal.get_operations(recorded.session_id)
    tag = f"seed {SEED}, session {recorded.index}"
    assert [op.sequence for op in ops] == list(range(1, len(ops) + 1)), tag
    assert {op.sequence: (op.op_id, op.state) for op in ops} == recorded.rows, tag
    for op in ops:
        if op.op_type == "conc.step" and op.state is O.DONE:
            assert op.payload == {"i": recorded.index, "n": op.payload["n"], "finished": True}
    return [op.op_id for op in ops]


async def test_200_concurrent_sessions_lose_and_duplicate_nothing(
    storage_factory: StorageFactory,
) -> None:
    """200 sessions gathered in one loop: every row once, gap-free, all COMPLETED."""

    async def one(index: int) -> Recorded:
        recorded = Recorded(index)
        async with journal.start_session(script="concurrency", index=index) as session:
            recorded.session_id = session.session_id
            await record_mix(
                session, recorded, random.Random(SEED + index), check_visible=index % 10 == 0
            )
        return recorded

    async with Journal(storage_factory()) as journal:
        results = await asyncio.gather(*(one(i) for i in range(SESSIONS)))
        sessions = await journal.list_sessions()
        assert len(sessions) == SESSIONS, f"seed {SEED}"
        assert {s.session_id for s in sessions} == {r.session_id for r in results}
        assert {s.status for s in sessions} == {S.COMPLETED}, f"seed {SEED}"
        op_ids = [op_id for r in results for op_id in await check_rows(journal, r)]
    assert len(op_ids) == len(set(op_ids)), f"seed {SEED}: duplicate op ids"
    assert len(op_ids) == sum(len(r.rows) for r in results)


async def test_concurrent_records_in_one_session_get_distinct_gap_free_sequences(
    storage_factory: StorageFactory,
) -> None:
    """record_operation, record_operations and steps gathered in ONE session interleave."""
    recorded = Recorded(0)

    async def one_record(n: int) -> None:
        op = await session.record_operation("conc.note", {"n": n})
        recorded.add(op.sequence, op.op_id, O.DONE)

    async def three_records(n: int) -> None:
        batch = [("conc.note", {"n": n, "k": k}) for k in range(3)]
        ops = await session.record_operations(batch)
        # one call is one transaction: its rows are consecutive
        assert [op.sequence for op in ops] == list(range(ops[0].sequence, ops[0].sequence + 3))
        for op in ops:
            recorded.add(op.sequence, op.op_id, O.DONE)

    async def one_step(n: int) -> None:
        async with session.step("conc.step", {"i": 0, "n": n}) as step:
            await asyncio.sleep(0)
            step.update(finished=True)
        recorded.add(step.sequence, step.op_id, O.DONE)

    calls = [one_record] * 100 + [three_records] * 20 + [one_step] * 30
    random.Random(SEED).shuffle(calls)
    async with Journal(storage_factory()) as journal:
        async with journal.start_session(script="one-session") as session:
            recorded.session_id = session.session_id
            await asyncio.gather(*(call(n) for n, call in enumerate(calls)))
        assert len(recorded.rows) == 100 + 20 * 3 + 30
        assert sorted(recorded.rows) == list(range(1, 191))
        await check_rows(journal, recorded)


async def test_cancelled_sessions_among_concurrent_ones_leave_a_consistent_journal(
    storage_factory: StorageFactory,
) -> None:
    """Cancelling random sessions mid-way: CANCELLED, no INTENT left, sequences gap-free."""
    rng = random.Random(SEED)
    recorded = [Recorded(i) for i in range(SESSIONS)]

    async def one(rec: Recorded) -> None:
        async with journal.start_session(script="cancel", index=rec.index) as session:
            rec.session_id = session.session_id
            await record_mix(session, rec, random.Random(SEED + rec.index), check_visible=False)
            rec.block_done = True

    async with Journal(storage_factory()) as journal:
        tasks = [asyncio.ensure_future(one(rec)) for rec in recorded]
        loop = asyncio.get_running_loop()
        for task in tasks:
            if rng.random() < 0.5:
                loop.call_later(
                    rng.choice((0, rng.uniform(0, 0.005), rng.uniform(0, 0.1))), task.cancel
                )
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        by_index = {s.context["index"]: s for s in await journal.list_sessions()}
        cancelled = 0
        op_ids: list[str] = []
        for rec, outcome in zip(recorded, outcomes, strict=True):
            tag = f"seed {SEED}, session {rec.index}"
            session = by_index.get(rec.index)
            if session is None:
                # cancelled before start_session was entered: nothing was written
                assert isinstance(outcome, asyncio.CancelledError), tag
                continue
            rec.session_id = session.session_id
            ops = await journal.get_operations(rec.session_id)
            assert [op.sequence for op in ops] == list(range(1, len(ops) + 1)), tag
            assert O.INTENT not in {op.state for op in ops}, tag
            op_ids += [op.op_id for op in ops]
            if outcome is None or rec.block_done:
                # not cancelled, or cancelled only while its end was being written
                assert session.status is S.COMPLETED, f"{tag}: {session}"
                await check_rows(journal, rec)
                continue
            assert isinstance(outcome, asyncio.CancelledError), f"{tag}: {outcome!r}"
            assert session.status is S.CANCELLED, f"{tag}: {session}"
            cancelled += 1
            # every call that returned is there; at most the one in flight is extra
            stored = {op.sequence: op for op in ops}
            for sequence, (op_id, state) in rec.rows.items():
                assert stored[sequence].op_id == op_id, tag
                if state is O.DONE:
                    assert stored[sequence].state is O.DONE, tag
            extra = sorted(stored.keys() - rec.rows.keys())
            assert len(extra) <= 3, f"{tag}: unexpected rows {extra}"  # record_operations
            for sequence in extra:
                # a step cut off by the cancellation is FAILED (body unknown) or in doubt
                assert stored[sequence].state in (O.DONE, O.FAILED, O.IN_DOUBT), tag
        assert len(op_ids) == len(set(op_ids)), f"seed {SEED}: duplicate op ids"
    print(f"{cancelled} of {SESSIONS} sessions cancelled mid-way")


async def test_concurrent_undos_of_different_sessions_run_every_handler_once(
    storage_factory: StorageFactory,
) -> None:
    """Undoing 200 sessions at once: each handler once, newest first, all ROLLED_BACK."""
    calls: collections.Counter[str] = collections.Counter()
    order: dict[str, list[int]] = collections.defaultdict(list)
    registry = OperationRegistry()

    @registry.handler("conc.note")
    @registry.handler("conc.step")
    async def undo(op: OperationRecord) -> None:
        calls[op.op_id] += 1
        order[op.session_id].append(op.sequence)
        await asyncio.sleep(0)

    async def one(index: int) -> Recorded:
        recorded = Recorded(index)
        async with journal.start_session(script="undo", index=index) as session:
            recorded.session_id = session.session_id
            await record_mix(session, recorded, random.Random(SEED + index), check_visible=False)
        return recorded

    async with Journal(storage_factory(), registry) as journal:
        results = await asyncio.gather(*(one(i) for i in range(SESSIONS)))
        reports = await asyncio.gather(*(journal.undo_session(r.session_id) for r in results))
        for recorded, report in zip(results, reports, strict=True):
            tag = f"seed {SEED}, session {recorded.index}"
            assert report.status is S.ROLLED_BACK, f"{tag}: {report}"
            assert report.undone == len(recorded.rows), f"{tag}: {report}"
            assert order[recorded.session_id] == sorted(recorded.rows, reverse=True), tag
            ops = await journal.get_operations(recorded.session_id)
            assert {op.state for op in ops} == {O.UNDONE}, tag
        expected = {op_id for r in results for op_id, _ in r.rows.values()}
        assert set(calls) == expected, f"seed {SEED}"
        assert set(calls.values()) == {1}, f"seed {SEED}: a handler ran twice"


async def test_second_concurrent_undo_of_a_session_in_one_process_is_refused(
    storage_factory: StorageFactory,
) -> None:
    """While one undo of a session runs, another in the same loop raises and changes nothing."""
    calls: collections.Counter[str] = collections.Counter()
    entered = asyncio.Event()
    release = asyncio.Event()
    registry = OperationRegistry()

    @registry.handler("conc.note")
    async def undo(op: OperationRecord) -> None:
        calls[op.op_id] += 1
        entered.set()
        await release.wait()

    async with Journal(storage_factory(), registry) as journal:
        async with journal.start_session(script="twice") as session:
            for n in range(5):
                await session.record_operation("conc.note", {"n": n})
        first = asyncio.ensure_future(journal.undo_session(session.session_id))
        await entered.wait()
        with pytest.raises(UndoInProgressError):
            await journal.undo_session(session.session_id)
        assert sum(calls.values()) == 1
        release.set()
        report = await first
        assert report.status is S.ROLLED_BACK
        assert report.undone == 5
        assert set(calls.values()) == {1}
        assert len(calls) == 5
