"""A process of ``test_postgres_reliability.py``; not collected by pytest.

Run as ``python _pg_worker.py '<json config>'`` (by path, with ``sys.executable``).
Coordination with the test goes through files in ``config["dir"]``; no clocks decide
anything here (the polling loops only guard against a test that never answers). Any
error ends the process with a traceback on stderr and a non-zero exit status.

Modes:

* ``work``: pretend to run on host ``config["host"]`` (so that nobody can check our
  pid and only the lease tells whether we live), then journal ``short`` sessions of a
  few operations to their end, then ``long`` concurrent sessions of ``actions``
  actions each (a recorded operation, a step, or a batch of two; every 4th session
  runs all of them inside an outer step of its own): ``ready_after``
  actions, then wait for the file ``stream`` (so that all workers stream at once), then
  the rest; keep those sessions open until the file ``finish`` appears. Everything the
  journal has acknowledged is reported, one line per event, appended to
  ``report-<name>.txt`` right after the awaited call returned (an ``O_APPEND`` write
  that survives a SIGKILL):

  - ``start <sid> short|long``: the session's row is committed;
  - ``intent <sid> <seq> <op_id>``: a step's INTENT row is committed;
  - ``op <sid> <seq> <op_id>``: an operation is committed DONE;
  - ``end <sid>``: the session is committed COMPLETED;
  - ``ready``: every long session has committed ``ready_after`` actions.

* ``recover``: wait for ``go``, call ``recover()`` once and write what it returned
  to ``recovered-<name>.json``; wait for ``recovered-<peer>.json``; then undo, all at
  once, the sessions this process recovered and those its peer recovered (so that two
  processes race for every session), and write the outcome of each to
  ``result-<name>.json``. The undo handler of ``rel.op`` inserts a row into
  ``reliability.undo_log`` (its own asyncpg pool) for every execution.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from retract import (
    Journal,
    OperationRecord,
    OperationRegistry,
    Session,
    UndoInProgressError,
    open_journal,
)
from retract.journal import _owner

#: Guards against a test that never creates the file we wait for (not a measurement).
WAIT_LIMIT = 120.0
#: The one operation type every worker journals and every recoverer can undo.
OP_TYPE = "rel.op"


async def wait_for(path: Path) -> None:
    deadline = time.monotonic() + WAIT_LIMIT
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear")
        await asyncio.sleep(0.01)


def write_json(path: Path, value: object) -> None:
    """Write ``value`` so that a reader never sees half of it."""
    temp = path.with_suffix(".tmp")
    temp.write_text(json.dumps(value))
    temp.replace(path)


class Report:
    """Lines appended with one ``write`` each: what the kernel has survives a SIGKILL."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def line(self, text: str) -> None:
        os.write(self.fd, (text + "\n").encode())


class Writer:
    """The ``work`` mode: one simulated host journaling many sessions at once."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.dir = Path(config["dir"])
        self.name = str(config["name"])
        self.rng = random.Random(f"{config['seed']}-{self.name}")
        self.report = Report(self.dir / f"report-{self.name}.txt")
        self.behind = int(config["long"])  # long sessions not yet at ready_after actions
        self.all_ready = asyncio.Event()
        self.gates: dict[str, asyncio.Future[None]] = {}

    async def gate(self, name: str) -> None:
        """Wait for the file ``name`` (one poller, however many sessions wait)."""
        waiting = self.gates.get(name)
        if waiting is None:
            waiting = self.gates[name] = asyncio.ensure_future(wait_for(self.dir / name))
        await asyncio.shield(waiting)

    async def pause(self) -> None:
        """A short random pause, so that the sessions' writes interleave differently."""
        await asyncio.sleep(self.rng.random() * 0.003)

    async def act(self, session: Session, action: int) -> None:
        """Journal one action and report what the journal acknowledged."""
        sid = session.session_id
        payload = {"worker": self.name, "action": action}
        kind = action % 4
        if kind == 1:
            async with session.step(OP_TYPE, payload) as step:
                self.report.line(f"intent {sid} {step.sequence} {step.op_id}")
                await self.pause()  # the effect, while the intent is all there is
                step.update(done=True)
            self.report.line(f"op {sid} {step.sequence} {step.op_id}")
        elif kind == 3:
            records = await session.record_operations(
                [(OP_TYPE, {**payload, "part": 0}), (OP_TYPE, {**payload, "part": 1})]
            )
            for record in records:
                self.report.line(f"op {sid} {record.sequence} {record.op_id}")
        else:
            record = await session.record_operation(OP_TYPE, payload)
            self.report.line(f"op {sid} {record.sequence} {record.op_id}")

    async def short_session(self, journal: Journal, index: int) -> None:
        async with journal.start_session(worker=self.name, kind="short", index=index) as session:
            self.report.line(f"start {session.session_id} short")
            for action in range(3):
                await self.act(session, action)
                await self.pause()
        self.report.line(f"end {session.session_id}")

    async def long_session(self, journal: Journal, index: int) -> None:
        async with journal.start_session(worker=self.name, kind="long", index=index) as session:
            sid = session.session_id
            self.report.line(f"start {sid} long")
            if index % 4 != 0:
                await self.stream(session)
            else:
                # Every 4th session streams inside a step of its own, still INTENT when
                # the session is held at the end: a dead worker leaves it in doubt.
                payload = {"worker": self.name, "outer": True}
                async with session.step(OP_TYPE, payload) as outer:
                    self.report.line(f"intent {sid} {outer.sequence} {outer.op_id}")
                    await self.stream(session)
                self.report.line(f"op {sid} {outer.sequence} {outer.op_id}")
        self.report.line(f"end {sid}")

    async def stream(self, session: Session) -> None:
        """Journal the actions of a long session, then hold it open until ``finish``."""
        for action in range(int(self.config["actions"])):
            await self.act(session, action)
            if action + 1 == int(self.config["ready_after"]):
                self.behind -= 1
                if self.behind == 0:
                    self.all_ready.set()
                await self.gate("stream")
            await self.pause()
        # Held open (RUNNING, its lease renewed) until the test lets it end.
        await self.gate("finish")

    async def announce(self) -> None:
        await self.all_ready.wait()
        self.report.line("ready")

    async def main(self) -> None:
        # Another host: recover() cannot look at our pid, only at our lease.
        _owner._identity.owner = dataclasses.replace(
            _owner.current_owner(), host=str(self.config["host"]), machine=None
        )
        async with open_journal(
            self.config["url"], lease_timeout=float(self.config["lease_timeout"])
        ) as journal:
            async with asyncio.TaskGroup() as group:
                for index in range(int(self.config["short"])):
                    group.create_task(self.short_session(journal, index))
            async with asyncio.TaskGroup() as group:
                group.create_task(self.announce())
                for index in range(int(self.config["long"])):
                    group.create_task(self.long_session(journal, index))


class Recoverer:
    """The ``recover`` mode: recover sessions of dead owners, then undo them."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.dir = Path(config["dir"])
        self.name = str(config["name"])
        self.rng = random.Random(f"{config['seed']}-{self.name}")

    async def main(self) -> None:
        url = str(self.config["url"])
        pool = await asyncpg.create_pool(url, min_size=1, max_size=4)
        try:
            registry = OperationRegistry(builtins=False)

            @registry.handler(OP_TYPE)
            async def undo(op: OperationRecord) -> None:
                await asyncio.sleep(self.rng.random() * 0.002)
                await pool.execute(
                    "INSERT INTO reliability.undo_log"
                    " (op_id, session_id, sequence, state, pid, recoverer)"
                    " VALUES ($1, $2, $3, $4, $5, $6)",
                    op.op_id,
                    op.session_id,
                    op.sequence,
                    op.state.value,
                    os.getpid(),
                    self.name,
                )

            async with open_journal(
                url, registry=registry, lease_timeout=float(self.config["lease_timeout"])
            ) as journal:
                await self.run(journal)
        finally:
            await pool.close()

    async def run(self, journal: Journal) -> None:
        (self.dir / f"ready-{self.name}").touch()
        await wait_for(self.dir / "go")
        recovered = await journal.recover()
        mine = [record.session_id for record in recovered]
        write_json(
            self.dir / f"recovered-{self.name}.json",
            [
                {"session_id": r.session_id, "status": r.status.value, "error": r.error}
                for r in recovered
            ],
        )
        peer = self.dir / f"recovered-{self.config['peer']}.json"
        await wait_for(peer)
        theirs = [entry["session_id"] for entry in json.loads(peer.read_text())]
        targets = mine + theirs
        self.rng.shuffle(targets)
        outcomes = await asyncio.gather(*(self.undo(journal, sid) for sid in targets))
        write_json(
            self.dir / f"result-{self.name}.json",
            {"recovered": mine, "outcomes": dict(zip(targets, outcomes, strict=True))},
        )

    async def undo(self, journal: Journal, session_id: str) -> dict[str, Any]:
        """Undo one session; another process undoing it already is a normal outcome."""
        try:
            report = await journal.undo_session(session_id)
        except UndoInProgressError as exc:
            return {"refused": str(exc)}
        return {
            "status": report.status.value,
            "total": report.total,
            "undone": report.undone,
            "remaining": report.remaining,
            "failed": len(report.failed),
        }


def main() -> None:
    config = json.loads(sys.argv[1])
    runner = Writer(config) if config["mode"] == "work" else Recoverer(config)
    asyncio.run(runner.main())


if __name__ == "__main__":
    main()
