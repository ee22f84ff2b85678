"""The child process of the kill -9 harness, and the effects both sides share.

``test_crash.py`` runs this file with ``sys.executable`` and kills it with SIGKILL at a
random instant. The child journals sessions whose steps have real, checkable effects on
files under a work directory; the parent then recovers the journal and undoes every
session with the handlers below, which revert those effects and check what they find.

Every effect is confined to its session's own directory (``s0/``, ``s1/``, ...), so
sessions that run concurrently never touch the same file and each can be undone on its
own. A session directory starts as :func:`make_layout` leaves it:

* ``counter`` holds ``0``; ``crash.counter`` increments it (temp file, then rename);
* ``log.txt`` is empty; ``crash.append`` appends one line;
* ``a0.txt`` .. ``a3.txt`` exist; ``crash.rename`` renames one of them;
* ``crash.create`` creates ``new-<n>.txt`` in two writes (a kill can leave it partial).

The child reports its progress through a pipe, one byte per event, so that the parent
can land its kill at a chosen point of a session (see ``EVENTS``). Run it as::

    python _crash_worker.py '{"mode": "run", "db": ..., "work": ..., "seed": 1, "fd": 5}'

Modes: ``run`` journals sessions until killed or done; ``undo`` journals sessions to
the end, writes ``U`` and then undoes them newest first with slow-ish handlers that log
every start and end to ``handler_log`` (the parent kills it during that undo).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retract import Journal, OperationRecord, OperationRegistry, Session, open_journal

#: What each progress byte means (the parent keeps a histogram of where kills landed).
EVENTS = {
    b"O": "opening the journal",
    b"R": "journal open",
    b"S": "session started",
    b"I": "before intent write",
    b"B": "in step body",
    b"D": "body done, before DONE write",
    b"N": "before record_operation",
    b"E": "before session end",
    b"F": "after session end",
    b"U": "undo phase begins",
    b"H": "in undo handler",
    b"h": "undo handler returned",
    b"Z": "all done",
}

OP_TYPES = ("crash.create", "crash.append", "crash.rename", "crash.counter", "crash.note")
RENAME_SOURCES = 4


class EffectMismatchError(Exception):
    """An undo handler found the files in a state its operation cannot explain."""


class InjectedError(Exception):
    """Raised on purpose by a step body or a session block."""


# -- the work directory -------------------------------------------------------------


def session_dir(work: Path, index: int) -> Path:
    return work / f"s{index}"


def make_layout(work: Path, sessions: int) -> None:
    """Create the initial state of ``sessions`` session directories under ``work``."""
    for index in range(sessions):
        directory = session_dir(work, index)
        directory.mkdir(parents=True)
        (directory / "counter").write_text("0")
        (directory / "log.txt").write_bytes(b"")
        for k in range(RENAME_SOURCES):
            (directory / f"a{k}.txt").write_text(f"original {index}-{k}\n")


def snapshot(work: Path) -> dict[str, bytes | None]:
    """Every path under ``work`` with its bytes (None for a directory)."""
    state: dict[str, bytes | None] = {}
    for path in sorted(work.rglob("*")):
        state[str(path.relative_to(work))] = None if path.is_dir() else path.read_bytes()
    return state


def describe_difference(before: dict[str, bytes | None], after: dict[str, bytes | None]) -> str:
    """A readable list of what differs between two snapshots."""
    lines = [f"  extra: {p} = {after[p]!r}" for p in sorted(after.keys() - before.keys())]
    lines += [f"  missing: {p}" for p in sorted(before.keys() - after.keys())]
    lines += [
        f"  changed: {p}: {before[p]!r} -> {after[p]!r}"
        for p in sorted(before.keys() & after.keys())
        if before[p] != after[p]
    ]
    return "\n".join(lines)


# -- effects: what a step body does ------------------------------------------------------


def create_content(payload: dict[str, Any]) -> bytes:
    return (f"{payload['token']}\n" * int(payload["repeat"])).encode()


def _write_fd(fd: int, data: bytes) -> None:
    while data:
        written = os.write(fd, data)
        data = data[written:]


async def do_create(payload: dict[str, Any]) -> int:
    """Create the file in two writes with a pause between them (a kill can split it)."""
    content = create_content(payload)
    fd = os.open(payload["path"], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        half = len(content) // 2
        _write_fd(fd, content[:half])
        await asyncio.sleep(0)
        _write_fd(fd, content[half:])
    finally:
        os.close(fd)
    return len(content)


def do_append(payload: dict[str, Any]) -> None:
    fd = os.open(payload["path"], os.O_WRONLY | os.O_APPEND)
    try:
        _write_fd(fd, f"{payload['token']}\n".encode())
    finally:
        os.close(fd)


def do_rename(payload: dict[str, Any]) -> None:
    os.rename(payload["src"], payload["dst"])


def _write_int(path: Path, temp: Path, value: int) -> None:
    temp.write_text(str(value))
    os.replace(temp, path)


async def do_counter(payload: dict[str, Any]) -> None:
    path = Path(payload["path"])
    temp = path.with_name("counter.do.tmp")
    temp.write_text(str(int(payload["before"]) + 1))
    await asyncio.sleep(0)
    os.replace(temp, path)


# -- undo handlers: revert an effect, checking before acting when in doubt ----------------


def _mismatch(op: OperationRecord, what: str) -> EffectMismatchError:
    return EffectMismatchError(
        f"{op.op_type} #{op.sequence} ({op.op_id}, state {op.state.value}, "
        f"in_doubt={op.in_doubt}): {what}; payload {op.payload}"
    )


def undo_create(op: OperationRecord) -> None:
    path = Path(op.payload["path"])
    if op.in_doubt:
        path.unlink(missing_ok=True)  # absent, partial or complete: all are ours
        return
    if not path.exists():
        raise _mismatch(op, "the created file is missing")
    size = path.stat().st_size
    if size != op.payload.get("size") or path.read_bytes() != create_content(op.payload):
        raise _mismatch(op, f"the created file has other content ({size} bytes)")
    path.unlink()


def undo_append(op: OperationRecord) -> None:
    path = Path(op.payload["path"])
    line = f"{op.payload['token']}\n".encode()
    content = path.read_bytes()
    if content.endswith(line):
        os.truncate(path, len(content) - len(line))  # one syscall: a kill cannot split it
    elif not op.in_doubt or line in content:
        raise _mismatch(op, f"the appended line is not the last one: {content[-80:]!r}")


def undo_rename(op: OperationRecord) -> None:
    src, dst = Path(op.payload["src"]), Path(op.payload["dst"])
    if dst.exists() and not src.exists():
        os.rename(dst, src)
    elif not (op.in_doubt and src.exists() and not dst.exists()):
        raise _mismatch(op, f"src exists: {src.exists()}, dst exists: {dst.exists()}")


def undo_counter(op: OperationRecord) -> None:
    path = Path(op.payload["path"])
    before = int(op.payload["before"])
    undo_temp = path.with_name("counter.undo.tmp")
    if op.in_doubt:
        path.with_name("counter.do.tmp").unlink(missing_ok=True)
        undo_temp.unlink(missing_ok=True)
    value = int(path.read_text())
    if value == before + 1:
        _write_int(path, undo_temp, before)
    elif not (op.in_doubt and value <= before):
        # In doubt, "already reverted" is any value up to `before`, not just `before`:
        # an undo window marks several operations UNDOING at once, so a killed run may
        # also have reverted *older* increments of this counter after this one.
        raise _mismatch(op, f"the counter holds {value}")


def undo_note(op: OperationRecord) -> None:
    """Notes have no effect; their handler only gets counted."""


EFFECT_UNDO: dict[str, Callable[[OperationRecord], None]] = {
    "crash.create": undo_create,
    "crash.append": undo_append,
    "crash.rename": undo_rename,
    "crash.counter": undo_counter,
    "crash.note": undo_note,
}


def make_registry(
    on_start: Callable[[OperationRecord], None],
    on_end: Callable[[OperationRecord], None] | None = None,
    *,
    delay: float = 0.0,
    rng: random.Random | None = None,
) -> OperationRegistry:
    """Handlers for every ``crash.*`` type that report each call to ``on_start``.

    :param on_end: called after the effect was reverted (the handler then returns).
    :param delay: pause up to this many seconds before and after the effect, so that a
        kill can land inside a handler.
    """
    registry = OperationRegistry()
    pause = rng or random.Random()

    def make(
        undo: Callable[[OperationRecord], None],
    ) -> Callable[[OperationRecord], Awaitable[None]]:
        async def handler(op: OperationRecord) -> None:
            on_start(op)
            if delay:
                await asyncio.sleep(pause.uniform(0, delay))
            undo(op)
            if delay:
                await asyncio.sleep(pause.uniform(0, delay))
            if on_end is not None:
                on_end(op)

        return handler

    for op_type, undo in EFFECT_UNDO.items():
        registry.handler(op_type)(make(undo))
    return registry


# -- the child ------------------------------------------------------------------------


@dataclass(slots=True)
class Config:
    mode: str
    db: str
    work: str
    seed: int
    fd: int
    sessions: int
    parallel: int
    min_ops: int
    max_ops: int
    fail_rate: float = 0.1
    handler_log: str = ""
    handler_delay: float = 0.0
    max_in_doubt: int | None = None


class Child:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.work = Path(config.work)

    def signal(self, event: bytes) -> None:
        os.write(self.config.fd, event)

    async def main(self) -> None:
        config = self.config
        self.signal(b"O")
        async with open_journal(config.db) as journal:
            self.signal(b"R")
            ids: list[str] = []
            indices = list(range(config.sessions))
            for start in range(0, len(indices), config.parallel):
                group = indices[start : start + config.parallel]
                ids += await asyncio.gather(*(self.session(journal, i) for i in group))
            if config.mode == "undo":
                self.signal(b"U")
                await self.undo(journal, ids)
        self.signal(b"Z")

    async def session(self, journal: Journal, index: int) -> str:
        config = self.config
        failing = config.mode == "run"
        rng = random.Random(config.seed * 1_000 + index)
        directory = session_dir(self.work, index)
        session_id = ""
        try:
            async with journal.start_session(script="crash-worker", index=index) as session:
                session_id = session.session_id
                self.signal(b"S")
                for n in range(rng.randint(config.min_ops, config.max_ops)):
                    await self.operation(session, directory, n, rng, failing=failing)
                if failing and rng.random() < config.fail_rate:
                    raise InjectedError(f"session {index} fails on purpose")
                self.signal(b"E")
        except InjectedError:
            pass
        self.signal(b"F")
        return session_id

    async def operation(
        self, session: Session, directory: Path, n: int, rng: random.Random, *, failing: bool
    ) -> None:
        kind = rng.choice(OP_TYPES)
        sources = sorted(directory.glob("a*.txt"))
        if kind == "crash.rename" and not sources:
            kind = "crash.create"
        if kind == "crash.note":
            self.signal(b"N")
            await session.record_operation(kind, {"n": n})
            return
        token = f"op{n}-{rng.randrange(10**9)}"
        payload: dict[str, Any]
        if kind == "crash.create":
            path = directory / f"new-{n}.txt"
            payload = {"path": str(path), "token": token, "repeat": rng.randint(1, 400)}
        elif kind == "crash.append":
            payload = {"path": str(directory / "log.txt"), "token": token}
        elif kind == "crash.rename":
            src = rng.choice(sources)
            payload = {"src": str(src), "dst": str(directory / f"r{n}-{src.name}")}
        else:
            path = directory / "counter"
            payload = {"path": str(path), "before": int(path.read_text())}
        fail = rng.random() < self.config.fail_rate if failing else False
        fail_after = rng.random() < 0.5
        self.signal(b"I")
        try:
            async with session.step(kind, payload) as step:
                self.signal(b"B")
                if fail and not fail_after:
                    raise InjectedError("fails before its effect")
                if kind == "crash.create":
                    step.update(size=await do_create(payload))
                elif kind == "crash.append":
                    do_append(payload)
                elif kind == "crash.rename":
                    do_rename(payload)
                else:
                    await do_counter(payload)
                if fail:
                    raise InjectedError("fails after its effect")
                self.signal(b"D")
        except InjectedError:
            pass

    async def undo(self, journal: Journal, ids: list[str]) -> None:
        config = self.config
        log = os.open(config.handler_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

        def started(op: OperationRecord) -> None:
            os.write(log, f"start {op.op_id} {int(op.in_doubt)}\n".encode())
            self.signal(b"H")

        def ended(op: OperationRecord) -> None:
            os.write(log, f"end {op.op_id}\n".encode())
            self.signal(b"h")

        registry = make_registry(
            started, ended, delay=config.handler_delay, rng=random.Random(config.seed)
        )
        try:
            for session_id in reversed(ids):
                if config.max_in_doubt is None:
                    await journal.undo_session(session_id, registry)
                else:
                    await journal.undo_session(
                        session_id, registry, max_in_doubt=config.max_in_doubt
                    )
        finally:
            os.close(log)


def main() -> None:
    config = Config(**json.loads(sys.argv[1]))
    asyncio.run(Child(config).main())


if __name__ == "__main__":
    main()
