"""The kill -9 harness: a journaling child is killed at a random instant, then recovered.

A child process (``_crash_worker.py``) journals sessions whose steps really change
files; the parent kills it with SIGKILL after a random number of progress events plus a
random delay, so kills land while intents, bodies, DONE rows, session ends and undo
progress are being written. The parent then recovers the journal and undoes every
session, and checks what must hold for *every* kill point:

* ``recover()`` marks exactly the dead child's RUNNING (or UNDOING) sessions
  INTERRUPTED and turns their INTENT steps IN_DOUBT, touching nothing else;
* undo hands every operation to its handler exactly once, in doubt exactly when its
  effect is uncertain, never one already UNDONE, and the work directory ends byte for
  byte as it started;
* the SQLite file passes ``PRAGMA integrity_check``, no operation is left INTENT or
  UNDOING, and every session's sequence numbers are 1..n.

``RETRACT_KILL_TRIALS`` sets the number of kills (50 by default; ``nox -s crash`` runs
the long variants with 500). ``RETRACT_SEED`` fixes the seed; a failure names the seed
that reruns its trial alone (the shape of the work is seeded, the kill instant is not).
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import random
import select
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from retract import (
    Journal,
    OperationRecord,
    OperationState,
    SessionRecord,
    SessionStatus,
    open_journal,
)
from tests.journal._crash_worker import EVENTS, make_layout, make_registry, snapshot
from tests.journal._crash_worker import describe_difference as differences

TRIALS = int(os.environ.get("RETRACT_KILL_TRIALS", "50"))
SEED = int(os.environ.get("RETRACT_SEED") or random.SystemRandom().randrange(2**32))
WORKER = Path(__file__).with_name("_crash_worker.py")
#: A child that neither finishes nor reports progress for this long has hung (a bug).
HANG_TIMEOUT = 60.0
#: Trials run side by side (each one is mostly a child process starting up).
LANES = 2


S = SessionStatus
O = OperationState  # noqa: E741

Snapshot = dict[str, tuple[SessionRecord, list[OperationRecord]]]


# -- running and killing the child ---------------------------------------------------------


@dataclass(slots=True)
class ChildRun:
    """What happened to one child: how it ended and what it reported."""

    returncode: int
    killed: bool
    events: bytes
    stdout: str
    stderr: str

    @property
    def phase(self) -> str:
        """Where the kill landed: the last progress event the parent had read."""
        if not self.killed:
            return "not killed (finished first)"
        return EVENTS[self.events[-1:]] if self.events else "before any event"

    def describe(self) -> str:
        return (
            f"child: returncode {self.returncode}, killed {self.killed}, last event "
            f"{self.phase!r}, events {self.events.decode()!r}\n"
            f"child stdout:\n{self.stdout}\nchild stderr:\n{self.stderr}"
        )


def run_child(
    config: dict[str, Any], scratch: Path, *, kill_after: int, delay: float, count_from: bytes
) -> ChildRun:
    """Run the worker; SIGKILL it ``delay`` s after its ``kill_after``-th event.

    Events are counted from the first ``count_from`` event on (inclusive), or from the
    start when ``count_from`` is empty. The child is always reaped.
    """
    read_fd, write_fd = os.pipe()
    out_path, err_path = scratch / "child.out", scratch / "child.err"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, str(WORKER), json.dumps({**config, "fd": write_fd})],
            stdout=out,
            stderr=err,
            pass_fds=(write_fd,),
        )
    os.close(write_fd)
    events = bytearray()
    killed = False
    counted = None if count_from else 0
    try:
        while True:
            ready, _, _ = select.select([read_fd], [], [], HANG_TIMEOUT)
            if not ready:
                raise TimeoutError(f"the child sent no event for {HANG_TIMEOUT}s")
            chunk = os.read(read_fd, 1)
            if not chunk:
                break  # the child exited by itself
            events += chunk
            if counted is None and chunk == count_from:
                counted = 0
            if counted is not None:
                counted += 1
                if counted >= kill_after:
                    if delay:
                        time.sleep(delay)
                    proc.send_signal(signal.SIGKILL)
                    killed = True
                    break
    finally:
        os.close(read_fd)
        if not killed and proc.poll() is None:
            proc.kill()  # only after a hang or an error in this function
        returncode = proc.wait()
    # A kill that came after the child had exited finds nothing to kill.
    killed = killed and returncode == -signal.SIGKILL
    return ChildRun(
        returncode,
        killed,
        bytes(events),
        out_path.read_text(errors="replace"),
        err_path.read_text(errors="replace"),
    )


def kill_delay(rng: random.Random, longest: float) -> float:
    """No delay, a short one (lands in the next write) or a long one (anywhere)."""
    return rng.choice((0.0, rng.uniform(0, 0.002), rng.uniform(0, longest)))


async def run_trials(
    trials: int, trial: Callable[[int, int], Awaitable[str]], *, offset: int
) -> collections.Counter[str]:
    """Run ``trials`` trials, ``LANES`` at a time; return where the kills landed.

    Trial ``i`` uses seed ``SEED + offset + i`` (each test has its own ``offset``). The
    first failure stops the other lanes at their next trial and is raised with the
    ``RETRACT_SEED`` that reruns it as trial 0.
    """
    phases: collections.Counter[str] = collections.Counter()
    failures: list[BaseException] = []
    queue = iter(range(trials))

    async def lane() -> None:
        for index in queue:
            if failures:
                return
            trial_seed = SEED + offset + index
            try:
                phases[await trial(index, trial_seed)] += 1
            except BaseException as exc:
                exc.add_note(
                    f"trial {index} of {trials}, seed {trial_seed}; rerun it alone with "
                    f"RETRACT_SEED={SEED + index} RETRACT_KILL_TRIALS=1 (the kill instant "
                    "is random, the shape of the work is not)"
                )
                failures.append(exc)
                return

    await asyncio.gather(*(lane() for _ in range(LANES)))
    if failures:
        raise failures[0]
    print(f"\nkills by phase ({trials} trials, RETRACT_SEED={SEED}):")
    for phase, count in phases.most_common():
        print(f"  {count:4d}  {phase}")
    return phases


# -- reading and checking the journal --------------------------------------------------------


async def read_journal(journal: Journal) -> Snapshot:
    """Every session with its operations, newest session first."""
    return {
        record.session_id: (record, await journal.get_operations(record.session_id))
        for record in await journal.list_sessions()
    }


def states(snap: Snapshot) -> dict[str, OperationState]:
    return {op.op_id: op.state for _, ops in snap.values() for op in ops}


def check_file(db: Path, tag: str) -> None:
    """With the journal closed: integrity, no unfinished rows, gap-free sequences."""
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)], tag
        unfinished = conn.execute(
            "SELECT op_id, state FROM operations WHERE state IN (?, ?)",
            (O.INTENT.value, O.UNDOING.value),
        ).fetchall()
        assert unfinished == [], f"{tag}: operations left unfinished: {unfinished}"
        by_session: dict[int, list[int]] = collections.defaultdict(list)
        for key, sequence in conn.execute(
            "SELECT session_key, sequence FROM operations ORDER BY session_key, sequence"
        ):
            by_session[key].append(sequence)
        for key, sequences in by_session.items():
            assert sequences == list(range(1, len(sequences) + 1)), (
                f"{tag}: session #{key} has sequences {sequences}"
            )
        total, distinct = conn.execute(
            "SELECT COUNT(*), COUNT(DISTINCT op_id) FROM operations"
        ).fetchone()
        assert total == distinct, f"{tag}: {total - distinct} duplicate op ids"
    finally:
        conn.close()


def check_sequences(snap: Snapshot, tag: str) -> None:
    for session_id, (_, ops) in snap.items():
        sequences = [op.sequence for op in ops]
        assert sequences == list(range(1, len(ops) + 1)), (
            f"{tag}: session {session_id} has sequences {sequences}"
        )


async def check_recover(journal: Journal, before: Snapshot, tag: str) -> Snapshot:
    """Recover; only the dead child's live sessions may change, and only as specified."""
    live = (S.RUNNING, S.UNDOING)
    recovered = await journal.recover()
    after = await read_journal(journal)
    expected = {sid for sid, (record, _) in before.items() if record.status in live}
    assert {r.session_id for r in recovered} == expected, f"{tag}: recovered {recovered}"
    assert after.keys() == before.keys(), tag
    for session_id, (record, ops) in before.items():
        now, ops_now = after[session_id]
        if record.status in live:
            assert now.status is S.INTERRUPTED, f"{tag}: {session_id} is {now.status}"
        else:
            assert now.status is record.status, f"{tag}: {session_id} changed: {now.status}"
        assert [op.op_id for op in ops_now] == [op.op_id for op in ops], tag
        for op, op_now in zip(ops, ops_now, strict=True):
            want = O.IN_DOUBT if op.state is O.INTENT else op.state
            assert op_now.state is want, (
                f"{tag}: {op.op_type} #{op.sequence} of {session_id} was {op.state}, "
                f"is {op_now.state} after recover()"
            )
    assert await journal.recover() == [], f"{tag}: a second recover() found more"
    return after


class HandlerCalls:
    """Counts every handler call per operation, with the in_doubt flag it came with."""

    def __init__(self) -> None:
        self.count: collections.Counter[str] = collections.Counter()
        self.in_doubt: dict[str, bool] = {}

    def __call__(self, op: OperationRecord) -> None:
        self.count[op.op_id] += 1
        self.in_doubt[op.op_id] = op.in_doubt


async def undo_everything(journal: Journal, snap: Snapshot, tag: str) -> HandlerCalls:
    """Undo every session newest first; check the reports and the journal afterwards."""
    calls = HandlerCalls()
    registry = make_registry(calls)
    for session_id, (_, ops) in snap.items():
        pending = [op for op in ops if op.state not in (O.UNDONE, O.SKIPPED)]
        report = await journal.undo_session(session_id, registry)
        assert report.status is S.ROLLED_BACK, f"{tag}: {report}"
        assert (report.total, report.undone, report.remaining) == (len(pending),) * 2 + (0,), (
            f"{tag}: {report}"
        )
    after = await read_journal(journal)
    for session_id, (record, ops) in after.items():
        assert record.status is S.ROLLED_BACK, f"{tag}: {session_id} is {record.status}"
        left = [(op.sequence, op.state.value) for op in ops if op.state is not O.UNDONE]
        assert left == [], f"{tag}: {session_id} has operations not undone: {left}"
    check_sequences(after, tag)
    # Undoing again finds nothing to do and calls no handler.
    again = HandlerCalls()
    for session_id in snap:
        report = await journal.undo_session(session_id, make_registry(again))
        assert (report.status, report.total) == (S.ROLLED_BACK, 0), f"{tag}: {report}"
    assert not again.count, f"{tag}: a second undo called handlers: {again.count}"
    return calls


# -- kill during sessions ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Shape:
    """How much work one child does."""

    sessions: int
    max_parallel: int
    min_ops: int
    max_ops: int
    longest_delay: float

    def events(self) -> int:
        """About how many progress events a child that is never killed sends."""
        per_op = 2.6  # I, B, D for steps; N for notes
        return 3 + self.sessions * (3 + round(per_op * (self.min_ops + self.max_ops) / 2))


SMALL = Shape(sessions=3, max_parallel=3, min_ops=1, max_ops=6, longest_delay=0.02)
LARGE = Shape(sessions=6, max_parallel=4, min_ops=0, max_ops=14, longest_delay=0.05)


def child_config(
    mode: str, db: Path, work: Path, rng: random.Random, shape: Shape
) -> dict[str, Any]:
    """What the worker child is told to do (its own seed drawn from the trial's)."""
    return {
        "mode": mode,
        "db": str(db),
        "work": str(work),
        "seed": rng.randrange(2**31),
        "sessions": shape.sessions,
        "parallel": rng.randint(1, shape.max_parallel),
        "min_ops": shape.min_ops,
        "max_ops": shape.max_ops,
    }


async def kill_during_sessions(tmp_path: Path, index: int, seed: int, shape: Shape) -> str:
    """One trial: kill a child while it journals, recover, undo, check everything."""
    tag = f"trial {index} (seed {seed})"
    rng = random.Random(seed)
    scratch = tmp_path / f"t{index}"
    work, db = scratch / "work", scratch / "journal.db"
    make_layout(work, shape.sessions)
    initial = snapshot(work)
    config = child_config("run", db, work, rng, shape)
    child = await asyncio.to_thread(
        run_child,
        config,
        scratch,
        kill_after=rng.randint(1, shape.events()),
        delay=kill_delay(rng, shape.longest_delay),
        count_from=b"",
    )
    tag = f"{tag} ({child.phase})"
    try:
        assert child.killed or child.returncode == 0, f"{tag}: the child failed"
        async with open_journal(db) as journal:
            before = await read_journal(journal)
            check_sequences(before, tag)
            for session_id, (record, ops) in before.items():
                intents = [op.sequence for op in ops if op.state is O.INTENT]
                if record.status is S.RUNNING:
                    # intent first: only the step in flight, the newest operation, is open
                    assert intents in ([], [len(ops)]), f"{tag}: {session_id}: {intents}"
                else:
                    assert record.status in (S.COMPLETED, S.FAILED), f"{tag}: {record}"
                    assert intents == [], f"{tag}: ended session {session_id}: {intents}"
            recovered = await check_recover(journal, before, tag)
            calls = await undo_everything(journal, recovered, tag)
        expected = states(recovered)
        assert set(calls.count) == set(expected), f"{tag}: handled {calls.count}"
        twice = {op_id: n for op_id, n in calls.count.items() if n != 1}
        assert not twice, f"{tag}: handlers ran more than once: {twice}"
        wrong = {
            op_id: state
            for op_id, state in expected.items()
            if calls.in_doubt[op_id] != (state is not O.DONE)
        }
        assert not wrong, f"{tag}: in_doubt flag wrong for operations in states {wrong}"
        diff = differences(initial, snapshot(work))
        assert not diff, f"{tag}: the work directory was not restored:\n{diff}"
        check_file(db, tag)
    except BaseException as exc:
        exc.add_note(child.describe())
        raise
    return child.phase


async def test_kill_during_sessions_then_recover_and_undo_restores_everything(
    tmp_path: Path,
) -> None:
    """A child killed at a random point of its sessions is recovered and fully undone."""

    async def trial(index: int, seed: int) -> str:
        return await kill_during_sessions(tmp_path, index, seed, SMALL)

    await run_trials(TRIALS, trial, offset=0)


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("RETRACT_KILL_TRIALS") is None, reason="long variant: nox -s crash"
)
async def test_long_kill_during_larger_sessions(tmp_path: Path) -> None:
    """The long variant: more, larger and more concurrent sessions, later kills."""

    async def trial(index: int, seed: int) -> str:
        return await kill_during_sessions(tmp_path, index, seed, LARGE)

    await run_trials(TRIALS, trial, offset=1_000_000)


# -- kill during an undo -----------------------------------------------------------------


@dataclass(slots=True)
class HandlerLog:
    """What the child's undo handlers wrote before the kill: starts and ends per op."""

    started: collections.Counter[str] = field(default_factory=collections.Counter)
    ended: set[str] = field(default_factory=set)

    @classmethod
    def read(cls, path: Path) -> HandlerLog:
        log = cls()
        if path.exists():
            for line in path.read_text().splitlines():
                what, op_id, *_ = line.split()
                if what == "start":
                    log.started[op_id] += 1
                else:
                    log.ended.add(op_id)
        return log


UNDO_SHAPE = Shape(sessions=3, max_parallel=3, min_ops=1, max_ops=10, longest_delay=0.01)


async def kill_during_undo(
    tmp_path: Path,
    index: int,
    seed: int,
    *,
    max_in_doubt: int | None,
    handler_delay: float,
    stats: collections.Counter[str],
) -> str:
    """One trial: the child undoes its sessions and is killed; the parent resumes."""
    tag = f"trial {index} (seed {seed})"
    rng = random.Random(seed)
    shape = UNDO_SHAPE
    scratch = tmp_path / f"t{index}"
    work, db, log_path = scratch / "work", scratch / "journal.db", scratch / "handlers.log"
    make_layout(work, shape.sessions)
    initial = snapshot(work)
    config = child_config("undo", db, work, rng, shape) | {
        "handler_log": str(log_path),
        "handler_delay": handler_delay,
        "max_in_doubt": max_in_doubt,
    }
    ops_expected = shape.sessions * (shape.min_ops + shape.max_ops) // 2
    child = await asyncio.to_thread(
        run_child,
        config,
        scratch,
        kill_after=rng.randint(1, 2 * ops_expected + 2),
        delay=kill_delay(rng, shape.longest_delay),
        count_from=b"U",
    )
    tag = f"{tag} ({child.phase})"
    resume_with_recover = rng.random() < 0.5
    try:
        assert child.killed or child.returncode == 0, f"{tag}: the child failed"
        log = HandlerLog.read(log_path)
        repeated = {op_id: n for op_id, n in log.started.items() if n != 1}
        assert not repeated, f"{tag}: the child ran handlers more than once: {repeated}"
        async with open_journal(db) as journal:
            before = await read_journal(journal)
            check_sequences(before, tag)
            state = states(before)
            undone = {op_id for op_id, s in state.items() if s is O.UNDONE}
            undoing = {op_id for op_id, s in state.items() if s is O.UNDOING}
            started = set(log.started)
            assert set(state.values()) <= {O.DONE, O.UNDOING, O.UNDONE}, f"{tag}: {state}"
            # UNDONE is written only after the handler returned ...
            assert undone <= log.ended, f"{tag}: UNDONE without a finished handler"
            # ... and UNDOING before it starts, so whatever was cut off is in doubt.
            assert started - log.ended <= undoing, f"{tag}: a cut-off handler is not UNDOING"
            assert log.ended - undone <= undoing, f"{tag}: a finished handler lost its mark"
            assert len(undoing) <= (max_in_doubt or 1024), f"{tag}: {len(undoing)} UNDOING"
            check_undo_progress(before, started, tag)
            if resume_with_recover:
                before = await check_recover(journal, before, tag)
            calls = await undo_everything(journal, before, tag)
        assert set(calls.count) == set(state) - undone, (
            f"{tag}: the resumed undo handled {sorted(calls.count)}; pending were "
            f"{sorted(set(state) - undone)}"
        )
        twice = {op_id: n for op_id, n in calls.count.items() if n != 1}
        assert not twice, f"{tag}: handlers ran more than once: {twice}"
        in_doubt = {op_id for op_id, flag in calls.in_doubt.items() if flag}
        assert in_doubt == undoing, (
            f"{tag}: handed over in doubt: {sorted(in_doubt)}; left UNDOING: {sorted(undoing)}"
        )
        diff = differences(initial, snapshot(work))
        assert not diff, f"{tag}: the work directory was not restored:\n{diff}"
        check_file(db, tag)
    except BaseException as exc:
        exc.add_note(child.describe())
        exc.add_note(f"handler log:\n{log_path.read_text() if log_path.exists() else ''}")
        raise
    stats["trials"] += 1
    stats["operations left UNDOING"] += len(undoing)
    stats["... whose handler never started"] += len(undoing - started)
    stats["... whose handler finished"] += len(undoing & log.ended)
    stats["trials resumed through recover()"] += resume_with_recover
    return child.phase


def check_undo_progress(before: Snapshot, started: set[str], tag: str) -> None:
    """Sessions are undone one at a time, newest operation first, progress in order."""
    undoing_sessions = [sid for sid, (record, _) in before.items() if record.status is S.UNDOING]
    assert len(undoing_sessions) <= 1, f"{tag}: several sessions UNDOING: {undoing_sessions}"
    for session_id, (record, ops) in before.items():
        if record.status is S.ROLLED_BACK:
            assert all(op.state is O.UNDONE for op in ops), f"{tag}: {session_id}: {ops}"
        elif record.status is S.COMPLETED:
            assert all(op.state is O.DONE for op in ops), f"{tag}: {session_id}: {ops}"
            assert not started & {op.op_id for op in ops}, f"{tag}: {session_id} was begun"
        else:
            assert record.status is S.UNDOING, f"{tag}: {session_id} is {record.status}"
            # oldest to newest: DONE* UNDOING* UNDONE* (the window is one contiguous run)
            order = [O.DONE, O.UNDOING, O.UNDONE]
            ranks = [order.index(op.state) for op in ops]
            assert ranks == sorted(ranks), f"{tag}: {[op.state.value for op in ops]}"


UNDO_VARIANTS = pytest.mark.parametrize(
    ("max_in_doubt", "handler_delay"),
    [
        # An intent before every handler: at most the one operation whose handler was
        # running (or about to run, or had just returned) comes back in doubt.
        pytest.param(1, 0.002, id="max_in_doubt=1"),
        # The library's default window (up to 1024): progress is committed per window of
        # fast handlers, so operations whose handler never started may also come back
        # in doubt (the whole window is UNDOING), but never an UNDONE one.
        pytest.param(None, 0.0002, id="default-window"),
    ],
)


async def run_undo_trials(
    tmp_path: Path, max_in_doubt: int | None, handler_delay: float, trials: int, offset: int
) -> None:
    """Run ``trials`` kill-during-undo trials and print what the kills hit."""
    stats: collections.Counter[str] = collections.Counter()

    async def trial(index: int, seed: int) -> str:
        return await kill_during_undo(
            tmp_path,
            index,
            seed,
            max_in_doubt=max_in_doubt,
            handler_delay=handler_delay,
            stats=stats,
        )

    await run_trials(trials, trial, offset=offset)
    print(dict(stats))


@UNDO_VARIANTS
async def test_kill_during_undo_then_resume_never_repeats_an_undone_operation(
    tmp_path: Path, max_in_doubt: int | None, handler_delay: float
) -> None:
    """An undo killed mid-way resumes: UNDONE ops are skipped, UNDOING ones come in doubt."""
    await run_undo_trials(tmp_path, max_in_doubt, handler_delay, max(1, TRIALS // 5), 2_000_000)


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("RETRACT_KILL_TRIALS") is None, reason="long variant: nox -s crash"
)
@UNDO_VARIANTS
async def test_long_kill_during_undo(
    tmp_path: Path, max_in_doubt: int | None, handler_delay: float
) -> None:
    """The long variant of the kill-during-undo harness (half as many trials as kills)."""
    await run_undo_trials(tmp_path, max_in_doubt, handler_delay, max(1, TRIALS // 2), 3_000_000)
