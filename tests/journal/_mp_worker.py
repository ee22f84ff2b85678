"""A worker process of ``test_multiprocess.py``; not collected by pytest.

Run as ``python _mp_worker.py '<json config>'``. Coordination with the parent goes
through files in ``config["dir"]`` (no clocks): a worker that must start together with
others creates ``ready-<name>`` and waits for ``start``; results are written as JSON to
``result-<name>.json`` just before a clean exit. Any error ends the worker with a
traceback on stderr and a non-zero exit status, which the parent shows.

Modes:

* ``write``: journal ``sessions`` sessions (``parallel`` at a time) of random
  operations; the result maps every session id to ``{sequence: [op_id, state]}``. With
  ``undo_peer``, then wait for that worker's result and undo all of its sessions
  (``undone-<name>.json`` lists the handled op ids per session).
* ``undo-block``: undo session ``session_id``; the first handler creates ``entered``
  and waits for ``release``; the result lists the handled operation ids.
* ``hold``: journal a session with a few operations, then stay inside an open step
  (create ``holding``, wait for ``release``), then finish it.
* ``die``: start ``sessions`` sessions that each stop inside an open step, create
  ``holding`` and wait to be killed.
* ``recover``: call ``recover()`` once everyone has started; the result lists the
  recovered session ids.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

from retract import Journal, OperationRecord, OperationRegistry, Session, open_journal

#: Guards against a parent that never creates the file we wait for (not a measurement).
WAIT_LIMIT = 120.0


async def wait_for(path: Path) -> None:
    deadline = time.monotonic() + WAIT_LIMIT
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear")
        await asyncio.sleep(0.001)


class Worker:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.dir = Path(config["dir"])
        self.name = str(config["name"])
        self.rng = random.Random(config.get("seed", 0))

    async def barrier(self) -> None:
        (self.dir / f"ready-{self.name}").touch()
        await wait_for(self.dir / "start")

    def result(self, value: object, kind: str = "result") -> None:
        path = self.dir / f"{kind}-{self.name}.json"
        temp = path.with_suffix(".tmp")
        temp.write_text(json.dumps(value))
        temp.replace(path)

    async def main(self) -> None:
        mode = self.config["mode"]
        if mode in ("write", "recover"):
            await self.barrier()  # open the journal together: a fresh file races too
        async with open_journal(self.config["db"]) as journal:
            await getattr(self, mode.replace("-", "_"))(journal)

    # -- write ----------------------------------------------------------------------------

    async def write(self, journal: Journal) -> None:
        written: dict[str, dict[int, list[str]]] = {}
        indices = list(range(self.config["sessions"]))
        parallel = self.config["parallel"]
        for start in range(0, len(indices), parallel):
            group = indices[start : start + parallel]
            written.update(await asyncio.gather(*(self.one_session(journal, i) for i in group)))
        self.result(written)
        peer = self.config.get("undo_peer")
        if peer is not None:
            await self.undo_peer(journal, peer)

    async def undo_peer(self, journal: Journal, peer: str) -> None:
        """Undo every session another worker wrote (while the others may still write)."""
        path = self.dir / f"result-{peer}.json"
        await wait_for(path)
        handled: dict[str, list[str]] = {}
        registry = OperationRegistry()

        @registry.handler("mp.note")
        @registry.handler("mp.step")
        async def undo(op: OperationRecord) -> None:
            handled.setdefault(op.session_id, []).append(op.op_id)

        statuses = {}
        for session_id in json.loads(path.read_text()):
            report = await journal.undo_session(session_id, registry)
            statuses[session_id] = report.status.value
        self.result({"handled": handled, "statuses": statuses}, "undone")

    async def one_session(self, journal: Journal, index: int) -> tuple[str, dict[int, list[str]]]:
        rng = random.Random(f"{self.config['seed']}-{self.name}-{index}")
        rows: dict[int, list[str]] = {}

        def add(sequence: int | None, op_id: str, state: str) -> None:
            assert sequence is not None
            assert sequence not in rows, f"sequence {sequence} handed out twice"
            rows[sequence] = [op_id, state]

        async with journal.start_session(worker=self.name, index=index) as session:
            for n in range(rng.randint(1, 10)):
                kind = rng.choice(("record", "records", "step"))
                if kind == "record":
                    op = await session.record_operation("mp.note", {"n": n})
                    add(op.sequence, op.op_id, op.state.value)
                elif kind == "records":
                    for op in await session.record_operations(
                        [("mp.note", {"n": n, "k": k}) for k in range(rng.randint(1, 4))]
                    ):
                        add(op.sequence, op.op_id, op.state.value)
                else:
                    async with session.step("mp.step", {"n": n}) as step:
                        await asyncio.sleep(0)
                    add(step.sequence, step.op_id, "done")
        return session.session_id, rows

    # -- undo-block ---------------------------------------------------------------------

    async def undo_block(self, journal: Journal) -> None:
        handled: list[str] = []
        registry = OperationRegistry()

        @registry.handler("mp.note")
        @registry.handler("mp.step")
        async def undo(op: OperationRecord) -> None:
            if not handled:
                (self.dir / "entered").touch()
                await wait_for(self.dir / "release")
            handled.append(op.op_id)

        report = await journal.undo_session(self.config["session_id"], registry)
        self.result({"handled": handled, "status": report.status.value})

    # -- hold and die ---------------------------------------------------------------------

    async def hold(self, journal: Journal) -> None:
        async with journal.start_session(worker=self.name) as session:
            await session.record_operation("mp.note", {"n": 0})
            async with session.step("mp.step", {"n": 1}):
                (self.dir / "holding").touch()
                await wait_for(self.dir / "release")
        self.result({"session_id": session.session_id})

    async def die(self, journal: Journal) -> None:
        entered = 0
        count = self.config["sessions"]
        forever = asyncio.Event()

        async def one(index: int) -> None:
            nonlocal entered
            async with journal.start_session(worker=self.name, index=index) as session:
                await record_some(session, index)
                async with session.step("mp.step", {"open": True}):
                    entered += 1
                    if entered == count:
                        (self.dir / "holding").touch()
                    await forever.wait()  # until SIGKILL

        await asyncio.gather(*(one(i) for i in range(count)))

    # -- recover --------------------------------------------------------------------------

    async def recover(self, journal: Journal) -> None:
        recovered = await journal.recover()
        self.result([record.session_id for record in recovered])


async def record_some(session: Session, index: int) -> None:
    await session.record_operation("mp.note", {"index": index})
    async with session.step("mp.step", {"index": index}):
        pass


def main() -> None:
    asyncio.run(Worker(json.loads(sys.argv[1])).main())


if __name__ == "__main__":
    main()
