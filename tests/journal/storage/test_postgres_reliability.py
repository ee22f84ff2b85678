"""Reliability on PostgreSQL: workers on four hosts, one killed, its sessions taken over.

Four worker processes (``_pg_worker.py``, run with ``sys.executable``), each pretending
to be another host, journal into one database: a few short sessions to their end, then
many concurrent long sessions streaming operations (recorded ones, steps, batches).
Every acknowledged write is reported to a file the moment its ``await`` returns, which
is the lower bound of what the journal must hold. Once every worker is mid-stream one
of them is killed with SIGKILL. Nobody can check its pid from here (another host): its
sessions may only be taken over once their lease expired. The other workers keep their
long sessions open (RUNNING, leases renewed) until the takeover is over, then end them.

No wall-clock assertion is made; waits are polls bounded by ``WAIT_LIMIT`` against a
hang. ``RETRACT_SEED`` fixes the seed (which worker dies, when, and the pauses).
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import random
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest

from retract import OperationRecord, OperationState, SessionRecord, SessionStatus, open_journal
from tests import helpers
from tests.helpers import WorkerProcess, WorkerProcesses

SEED = int(os.environ.get("RETRACT_SEED") or random.SystemRandom().randrange(2**32))
WORKER = Path(__file__).with_name("_pg_worker.py")
#: Guards the waits below against a hang; never an assertion about speed.
WAIT_LIMIT = 120.0
#: Short enough for a quick test, long enough that a renewal every third of it is never
#: late enough on a busy machine to lose a live worker's lease.
LEASE_TIMEOUT = 3.0
WORKERS = 4
SHORT = 4  # sessions per worker that end before the long ones start
LONG = 24  # concurrent long sessions per worker
ACTIONS = 24  # actions per long session: every 4th a step, every 4th a batch of two
READY_AFTER = 4  # actions every long session has journaled before the kill may come
OPS_PER_LONG = sum(2 if action % 4 == 3 else 1 for action in range(ACTIONS))
OPS_PER_SHORT = sum(2 if action % 4 == 3 else 1 for action in range(3))

S = SessionStatus
O = OperationState  # noqa: E741


@pytest.fixture
def spawn(tmp_path: Path, postgres_url: str) -> Iterator[WorkerProcesses]:
    """Start processes sharing ``tmp_path``; any still running at the end is killed, reaped."""
    config = {"url": postgres_url, "lease_timeout": LEASE_TIMEOUT}
    with WorkerProcesses(
        WORKER, tmp_path, seed=SEED, wait_limit=WAIT_LIMIT, config=config
    ) as procs:
        yield procs


async def wait_until(what: str, ready: Callable[[], bool], *watched: WorkerProcess) -> None:
    """Poll until ``ready()``; fail at once if a watched process exits meanwhile."""
    await helpers.wait_until(what, ready, *watched, seed=SEED, wait_limit=WAIT_LIMIT, interval=0.02)


@dataclass(slots=True)
class Reported:
    """What a worker's journal acknowledged, as the worker reported it."""

    started: dict[str, str] = field(default_factory=dict)  # session id -> short | long
    ops: dict[str, dict[int, str]] = field(default_factory=dict)  # sid -> seq -> op id
    done: set[str] = field(default_factory=set)  # op ids committed DONE
    steps: set[str] = field(default_factory=set)  # op ids of steps (an INTENT first)
    ended: set[str] = field(default_factory=set)
    ready: bool = False

    @property
    def op_count(self) -> int:
        return len(self.done)


def read_report(path: Path) -> Reported:
    """Parse ``report-<name>.txt``; a last line without its newline is not counted."""
    reported = Reported()
    try:
        text = path.read_text()
    except FileNotFoundError:
        return reported
    for line in text.split("\n")[:-1]:
        kind, *rest = line.split()
        if kind == "ready":
            reported.ready = True
        elif kind == "start":
            reported.started[rest[0]] = rest[1]
        elif kind == "end":
            reported.ended.add(rest[0])
        else:
            sid, sequence, op_id = rest
            known = reported.ops.setdefault(sid, {}).setdefault(int(sequence), op_id)
            assert known == op_id, f"seed {SEED}: two op ids reported for {sid} #{sequence}"
            if kind == "intent":
                reported.steps.add(op_id)
            else:
                reported.done.add(op_id)
    return reported


async def server_now(admin: Any) -> datetime:
    """The PostgreSQL server's clock, which leases are measured by."""
    now: datetime = await admin.fetchval("SELECT clock_timestamp()")
    return now


def lease_expiry(session: SessionRecord) -> datetime:
    expires = session.lease_expires_at
    assert expires is not None, f"seed {SEED}: {session.session_id} has no lease: {session}"
    return expires


async def test_killed_workers_sessions_are_taken_over_once_its_lease_expires(
    postgres_url: str, tmp_path: Path, spawn: WorkerProcesses
) -> None:
    """One of four workers on other hosts is SIGKILLed mid-stream; the rest never notice.

    Its sessions are not recovered while its lease holds; after it expired two
    recoverers share them exactly (none twice, none missed) and undo them, racing each
    other for every session. Everything a worker saw acknowledged is in the journal;
    each of the dead worker's operations is undone exactly once, by one handler call;
    the other workers' sessions (held RUNNING throughout) end COMPLETED, untouched; in
    every session the sequences are 1..n.
    """
    rng = random.Random(SEED)
    admin = await asyncpg.connect(postgres_url)
    try:
        await admin.execute(
            "CREATE SCHEMA reliability;"
            " CREATE TABLE reliability.undo_log (op_id text NOT NULL, session_id text NOT NULL,"
            " sequence int NOT NULL, state text NOT NULL, pid int NOT NULL,"
            " recoverer text NOT NULL)"
        )
        # Opened first, so that the journal's schema exists before the workers start.
        async with open_journal(postgres_url, lease_timeout=LEASE_TIMEOUT) as journal:
            workers = [
                spawn(
                    "work",
                    f"w{n}",
                    host=f"worker-host-{n}",
                    short=SHORT,
                    long=LONG,
                    actions=ACTIONS,
                    ready_after=READY_AFTER,
                )
                for n in range(WORKERS)
            ]
            victim = workers[rng.randrange(WORKERS)]
            survivors = [worker for worker in workers if worker is not victim]
            reports = {worker.name: tmp_path / f"report-{worker.name}.txt" for worker in workers}

            # -- kill one worker mid-stream ---------------------------------------------
            # Every worker gets ready: its short sessions ended, every long one has
            # journaled READY_AFTER actions (so all have started) and waits. Then all
            # stream at once, and the victim dies after a random number of operations
            # more, below what its sessions will write.
            def ready() -> bool:
                return all(read_report(path).ready for path in reports.values())

            await wait_until("every worker ready", ready, *workers)
            (tmp_path / "stream").touch()
            kill_at = SHORT * OPS_PER_SHORT + rng.randint(
                LONG * READY_AFTER, LONG * OPS_PER_LONG * 3 // 4
            )

            def mid_stream() -> bool:
                return read_report(reports[victim.name]).op_count >= kill_at

            await wait_until("the victim mid-stream", mid_stream, *workers)
            victim.popen.send_signal(signal.SIGKILL)
            returncode = await asyncio.to_thread(victim.popen.wait, WAIT_LIMIT)
            assert returncode == -signal.SIGKILL, f"seed {SEED}: {victim.describe()}"

            # -- before its lease expired: nothing is recovered -------------------------
            running = await journal.list_sessions(status=S.RUNNING)
            orphans = {s.session_id: s for s in running if s.owner and s.owner.host == victim.host}
            assert orphans, f"seed {SEED}: the victim had no RUNNING session left"
            first_expiry = min(lease_expiry(s) for s in orphans.values())
            last_expiry = max(lease_expiry(s) for s in orphans.values())
            # Renewed every third of LEASE_TIMEOUT, the first lease runs out about two
            # thirds of it after the kill at the earliest: ample time for one call.
            early = await journal.recover()
            checked_at = await server_now(admin)
            assert early == [], (
                f"seed {SEED}: recover() took {[s.session_id for s in early]} (of "
                f"{len(orphans)} dead, {len(running) - len(orphans)} live sessions) before "
                f"the dead worker's leases expired (the first at {first_expiry}; the server "
                f"clock read {checked_at} after the call: if later, the check was void)"
            )

            # -- after it expired: two recoverers share the sessions and undo them ------
            recoverers = [
                spawn("recover", "r0", peer="r1"),
                spawn("recover", "r1", peer="r0"),
            ]
            for recoverer in recoverers:
                ready_file = tmp_path / f"ready-{recoverer.name}"
                await wait_until(f"{recoverer.name} ready", ready_file.exists, *recoverers)

            async def expired() -> bool:
                return await server_now(admin) > last_expiry

            deadline = time.monotonic() + WAIT_LIMIT
            while not await expired():
                assert time.monotonic() < deadline, f"seed {SEED}: the leases never expired"
                await asyncio.sleep(0.05)
            (tmp_path / "go").touch()
            for recoverer in recoverers:
                await recoverer.finish()

            # -- the survivors end their sessions --------------------------------------
            (tmp_path / "finish").touch()
            for worker in survivors:
                await worker.finish()

            sessions = {s.session_id: s for s in await journal.list_sessions()}
            operations = {sid: await journal.get_operations(sid) for sid in sessions}
        undo_log = await admin.fetch(
            "SELECT op_id, session_id, sequence, state, recoverer FROM reliability.undo_log"
        )
    finally:
        await admin.close()

    outcome = Outcome(
        reports={name: read_report(path) for name, path in reports.items()},
        orphans=orphans,
        sessions=sessions,
        operations=operations,
        undo_log=[dict(row) for row in undo_log],
        stderr={proc.name: proc.err.read_text(errors="replace") for proc in workers + recoverers},
        results={
            r.name: json.loads((tmp_path / f"result-{r.name}.json").read_text()) for r in recoverers
        },
    )
    print(describe_run(victim, outcome, (first_expiry - checked_at).total_seconds()))
    check_sequences(outcome)
    check_no_lease_lost(survivors + recoverers, outcome)
    for worker in survivors:
        check_survivor(worker, outcome)
    check_victim(victim, outcome)


@dataclass(slots=True)
class Outcome:
    """Everything the checks look at, read once everybody is done."""

    reports: dict[str, Reported]  # worker name -> its report
    orphans: dict[str, SessionRecord]  # the victim's sessions RUNNING right after the kill
    sessions: dict[str, SessionRecord]
    operations: dict[str, list[OperationRecord]]
    undo_log: list[dict[str, Any]]  # one row per handler call
    stderr: dict[str, str]  # process name -> what it wrote to stderr (its log)
    results: dict[str, Any]  # recoverer name -> its result-<name>.json

    def sessions_of(self, worker: WorkerProcess) -> set[str]:
        """The sessions ``worker`` started (an undo makes its undoer their owner)."""
        return {sid for sid, s in self.sessions.items() if s.context["worker"] == worker.name}


def describe_run(victim: WorkerProcess, outcome: Outcome, margin: float) -> str:
    """Where the kill landed and how the takeover went (shown with -s or on failure)."""
    reported = outcome.reports[victim.name]
    at_kill = len(reported.done) - SHORT * OPS_PER_SHORT
    split = {name: len(result["recovered"]) for name, result in outcome.results.items()}
    refused = sum(
        "refused" in entry
        for result in outcome.results.values()
        for entry in result["outcomes"].values()
    )
    in_doubt = sum(row["state"] == O.IN_DOUBT.value for row in outcome.undo_log)
    return (
        f"\nseed {SEED}: killed {victim.name} after {at_kill} of {LONG * OPS_PER_LONG} "
        f"long-session operations; recovered {split}; {len(outcome.undo_log)} handler "
        f"calls, {in_doubt} in doubt; {refused} second undos refused; the early recover() "
        f"ran {margin:.2f} s before the first lease expired"
    )


def expected_ops(session: SessionRecord) -> int:
    """How many operations a session that ran to its end has."""
    if session.context["kind"] == "short":
        return OPS_PER_SHORT
    outer: bool = session.context["index"] % 4 == 0  # streamed inside a step of its own
    return OPS_PER_LONG + outer


def check_sequences(outcome: Outcome) -> None:
    """Every session's sequences are 1..n, each once; no op id appears twice."""
    operations = outcome.operations
    for sid, ops in operations.items():
        sequences = [op.sequence for op in ops]
        assert sequences == list(range(1, len(ops) + 1)), f"seed {SEED}: {sid}: {sequences}"
    op_ids = [op.op_id for ops in operations.values() for op in ops]
    assert len(op_ids) == len(set(op_ids)), f"seed {SEED}: an op id is journaled twice"


def check_no_lease_lost(procs: list[WorkerProcess], outcome: Outcome) -> None:
    """No live process logged losing a session (a lease it failed to renew in time)."""
    signs = ("taken over", "no longer RUNNING", "changed hands")
    for proc in procs:
        logged = outcome.stderr[proc.name]
        assert not any(sign in logged for sign in signs), f"seed {SEED}: {proc.name}: {logged}"


def check_reported_are_journaled(
    name: str, reported: Reported, operations: dict[str, list[OperationRecord]]
) -> None:
    """Nothing lost: each acknowledged session and operation is in the journal as reported."""
    for sid in reported.started:
        assert sid in operations, f"seed {SEED}: {name}'s session {sid} is not in the journal"
    for sid, by_sequence in reported.ops.items():
        journaled = {op.sequence: op.op_id for op in operations[sid]}
        for sequence, op_id in by_sequence.items():
            assert journaled.get(sequence) == op_id, (
                f"seed {SEED}: {name}'s operation {op_id} ({sid} #{sequence}) was acknowledged "
                f"but the journal has {journaled.get(sequence)!r} there"
            )


def check_survivor(worker: WorkerProcess, outcome: Outcome) -> None:
    """A worker that lived: every session COMPLETED, exactly as reported, never undone."""
    undone_sessions = {row["session_id"] for row in outcome.undo_log}
    reported = outcome.reports[worker.name]
    check_reported_are_journaled(worker.name, reported, outcome.operations)
    mine = outcome.sessions_of(worker)
    assert mine == set(reported.started), f"seed {SEED}: {worker.name}'s sessions differ"
    assert reported.ended == mine, f"seed {SEED}: {worker.name} did not end every session"
    kinds = collections.Counter(reported.started.values())
    assert kinds == {"short": SHORT, "long": LONG}, f"seed {SEED}: {worker.name}: {kinds}"
    for sid in mine:
        session = outcome.sessions[sid]
        assert session.status is S.COMPLETED, f"seed {SEED}: {worker.name}: {session}"
        assert session.undo_count == 0, f"seed {SEED}: {worker.name}: {session}"
        assert sid not in undone_sessions, f"seed {SEED}: {sid} of {worker.name} was undone"
        ops = outcome.operations[sid]
        assert {op.op_id for op in ops} == set(reported.ops[sid].values())
        assert all(op.state is O.DONE for op in ops), f"seed {SEED}: {sid}: {ops}"
        assert len(ops) == expected_ops(session), f"seed {SEED}: {sid} has {len(ops)} ops"


def check_victim(victim: WorkerProcess, outcome: Outcome) -> None:
    """The killed worker: its open sessions recovered once and undone exactly once."""
    sessions, operations, undo_log = outcome.sessions, outcome.operations, outcome.undo_log
    reported = outcome.reports[victim.name]
    check_reported_are_journaled(victim.name, reported, operations)
    mine = outcome.sessions_of(victim)
    # the victim was ready: it had started (and reported) every session before the kill
    assert mine == set(reported.started), f"seed {SEED}: the victim's sessions differ"
    short = {sid for sid, kind in reported.started.items() if kind == "short"}
    long = mine - short
    assert len(short) == SHORT
    assert len(long) == LONG
    # the long sessions wait for `finish` before they end: all were open at the kill
    orphans = sorted(outcome.orphans)
    assert set(orphans) == long, f"seed {SEED}: RUNNING after the kill: {orphans}"

    # recovered: all of them, between the two recoverers, none by both
    results = outcome.results
    recovered = {name: set(result["recovered"]) for name, result in results.items()}
    one, other = recovered.values()
    assert one | other == long, (
        f"seed {SEED}: recovered {sorted(one | other)}, expected {sorted(long)}"
    )
    assert not one & other, f"seed {SEED}: recovered by both: {sorted(one & other)}"

    # undone exactly once: one handler call per operation of the long sessions, no other
    calls = collections.Counter(row["op_id"] for row in undo_log)
    twice = {op_id: n for op_id, n in calls.items() if n != 1}
    assert not twice, f"seed {SEED}: handlers ran more than once: {twice}"
    to_undo = {op.op_id for sid in long for op in operations[sid]}
    assert set(calls) == to_undo, (
        f"seed {SEED}: never undone: {sorted(to_undo - set(calls))}; "
        f"undone but not the victim's open sessions': {sorted(set(calls) - to_undo)}"
    )
    for sid in long:
        session = sessions[sid]
        assert session.status is S.ROLLED_BACK, f"seed {SEED}: {session}"
        ops = operations[sid]
        assert all(op.state is O.UNDONE for op in ops), f"seed {SEED}: {sid}: {ops}"
        outcomes = [result["outcomes"][sid] for result in results.values()]
        undone = sum(outcome.get("undone", 0) for outcome in outcomes)
        assert undone == len(ops), f"seed {SEED}: {sid}: {outcomes}"
        assert not any(outcome.get("failed") or outcome.get("remaining") for outcome in outcomes)
    # what reached the handlers: DONE as reported, in doubt only for a step caught open
    handed = {row["op_id"]: row["state"] for row in undo_log}
    assert set(handed.values()) <= {O.DONE.value, O.IN_DOUBT.value}, f"seed {SEED}: {handed}"
    in_doubt = {op_id for op_id, state in handed.items() if state == O.IN_DOUBT.value}
    assert not in_doubt & reported.done, f"seed {SEED}: DONE handed over in doubt"
    doubtful = collections.Counter(
        row["session_id"] for row in undo_log if row["op_id"] in in_doubt
    )
    for sid in long:
        outer = sessions[sid].context["index"] % 4 == 0
        # an outer step (sequence 1) is open till the end; at most one inner step at a time
        assert doubtful[sid] <= 1 + outer, f"seed {SEED}: {sid}: {doubtful[sid]} in doubt"
        if outer:
            first = operations[sid][0]
            assert first.op_id in reported.steps, f"seed {SEED}: {sid}: {first}"
            assert first.op_id in in_doubt, f"seed {SEED}: open step not in doubt: {first}"

    # the short sessions had ended before the kill: left alone
    for sid in short:
        assert sid in reported.ended, f"seed {SEED}: short session {sid} did not end"
        session = sessions[sid]
        assert session.status is S.COMPLETED, f"seed {SEED}: {session}"
        assert all(op.state is O.DONE for op in operations[sid])
        assert len(operations[sid]) == expected_ops(session)
