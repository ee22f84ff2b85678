"""``retract demo``: journal a few file changes in one session, undo it, check the files.

It is the first command a newcomer runs, so it narrates each stage and prints what
``retract show`` and ``retract undo`` would print. It works in a fresh temporary
directory (removed afterwards unless ``--keep``)::

    retract-demo-XXXX/
        journal.db              the journal (unless --db says otherwise)
        journal.db.images/      before-images that session.fs keeps for undo
        files/                  the files the session changes

The changes are ``session.fs`` operations, undone by the built-in handlers: the demo
shows what a newcomer's own script would do.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from .._async import run_sync
from .._errors import UndoErrorGroup, UndoFailedError
from ..journal import Journal, UndoReport, open_journal
from . import _demo_files as files
from . import _render
from ._console import Console, ExitCode

__all__ = ("demo",)

_CONFIG = json.dumps({"mode": "release", "retries": 5}, indent=2).encode() + b"\n"


async def demo(console: Console, db: str | None, *, keep: bool) -> int:
    """Run the demo; return OK when every file was restored byte for byte, else FAILURE.

    :param db: the journal to use (``":memory:"`` works too); a new file in the
        temporary directory when None.
    :raises RetractError: the journal at ``db`` cannot be opened.
    """
    root = Path(await run_sync(tempfile.mkdtemp, None, "retract-demo-"))
    try:
        return await _run(console, root, db or str(root / "journal.db"))
    finally:
        if keep:
            console.print(f"\nkept the demo directory: {root}")
        else:
            await run_sync(shutil.rmtree, root)


async def _run(console: Console, root: Path, db: str) -> int:
    say = console.print
    await run_sync(files.seed, root)
    work = root / files.FILES_DIR
    say("retract demo: change some files in one journaled session, then undo the session.\n")
    say(f"  files:   {work}")
    say(f"  journal: {db}\n")

    before = await run_sync(files.snapshot, work)
    say("1. The files before the session (size, first 8 hex digits of their sha256):")
    _indent(console, files.tree(before))

    async with open_journal(db) as journal:
        say("\n2. One session changes them through session.fs. Each change journals its")
        say("   intent before it happens, so even a crash halfway leaves an undoable record;")
        say("   overwritten and deleted files are kept as before-images until a prune.")
        session_id = await _change_files(console, journal, work)
        during = await run_sync(files.snapshot, work)
        say("\n   The files after the session:")
        _indent(console, files.tree(during, before))

        say(f"\n3. What the journal holds (`retract show {session_id[:8]}` prints this):")
        session = await journal.get_session(session_id)
        operations = await journal.get_operations(session_id)
        assert session is not None  # noqa: S101  (we just wrote it)
        _indent(console, _render.session_detail(session, operations, _width(console)).split("\n"))

        say(f"\n4. Undo it (`retract undo {session_id[:8]}`): newest operation first, each")
        say("   checked for drift (a file changed since is refused, not clobbered).")
        plan = await journal.plan_undo(session_id)
        report = await _undo(journal, session_id)
        now = {op.op_id: op for op in await journal.get_operations(session_id)}
        undone = [now[op.op_id] for op in plan.operations]
        _indent(console, _render.report_text(report, undone).split("\n"))

    after = await run_sync(files.snapshot, work)
    say("\n5. The files after undo:")
    _indent(console, files.tree(after, before))
    differences = sorted(
        name for name in set(before) | set(after) if before.get(name) != after.get(name)
    )
    if differences or set(before) != set(after):
        say(f"\nrestored: NO ({', '.join(differences)} differ from before the session)")
        return ExitCode.FAILURE
    say("\nrestored: yes (every file and folder is byte for byte as before the session)")
    say("\nNext: use `session.fs` in your own code, journal other side effects with")
    say("`session.step(...)` and your own undo handlers, and undo with")
    say("`retract --db PATH undo ID`. See docs/fs.md and docs/cli.md.")
    return ExitCode.OK


async def _change_files(console: Console, journal: Journal, work: Path) -> str:
    """The one session: five reversible file operations."""
    async with journal.start_session(command="retract demo", directory=str(work)) as session:
        await session.fs.write_bytes(work / "config.json", _CONFIG, durable=False)
        _step(console, 1, "fs.write", "rewrite config.json (the old file kept for undo)")
        await session.fs.mkdir(work / "archive", durable=False)
        _step(console, 2, "fs.mkdir", "create archive/")
        await session.fs.move(work / "notes.txt", work / "archive" / "notes.txt", durable=False)
        _step(console, 3, "fs.move", "move notes.txt into archive/")
        await session.fs.delete(work / "old.log", durable=False)
        _step(console, 4, "fs.delete", "delete old.log (kept as a before-image until a prune)")
        visits = sum(int(line.split(b",")[1]) for line in files.SEED["data/report.csv"].split()[1:])
        summary = f"visits: {visits}\n"
        await session.fs.write_text(work / "data" / "summary.txt", summary, durable=False)
        _step(console, 5, "fs.write", "create data/summary.txt")
    return session.session_id


async def _undo(journal: Journal, session_id: str) -> UndoReport:
    try:
        return await journal.undo_session(session_id)
    except (UndoFailedError, UndoErrorGroup) as exc:
        # Report what happened; the file check that follows says what was not restored.
        if exc.report is None:  # pragma: no cover - the undo always attaches its report
            raise
        return exc.report


def _step(console: Console, number: int, op_type: str, what: str) -> None:
    console.print(f"   step {number}  {op_type:<9}  {what}")


def _indent(console: Console, lines: list[str]) -> None:
    for line in lines:
        console.print(f"   {line}" if line else "")


def _width(console: Console) -> int | None:
    width = console.width()
    return None if width is None else width - 3
