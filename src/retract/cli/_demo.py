"""``retract demo``: journal a few file changes in one session, undo it, check the files.

It is the first command a newcomer runs, so it narrates each stage and prints what
``retract show`` and ``retract undo`` would print. It works in a fresh temporary
directory (removed afterwards unless ``--keep``)::

    retract-demo-XXXX/
        journal.db              the journal (unless --db says otherwise)
        files/                  the files the session changes
        .retract-demo-backup/   before-images that the undo handlers restore
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

    registry = files.make_registry(root)
    async with open_journal(db, registry=registry) as journal:
        say("\n2. One session changes them. Each change is a step: its intent is journaled")
        say("   before the change happens, so even a crash halfway leaves an undoable record.")
        session_id = await _change_files(console, journal, root)
        during = await run_sync(files.snapshot, work)
        say("\n   The files after the session:")
        _indent(console, files.tree(during, before))

        say(f"\n3. What the journal holds (`retract show {session_id[:8]}` prints this):")
        session = await journal.get_session(session_id)
        operations = await journal.get_operations(session_id)
        assert session is not None  # noqa: S101  (we just wrote it)
        _indent(console, _render.session_detail(session, operations, _width(console)).split("\n"))

        say(f"\n4. Undo it (`retract undo {session_id[:8]}`): handlers run newest step first.")
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
    say("\nNext: journal your own code's side effects with `session.step(...)`, register")
    say("undo handlers, and undo with `retract --db PATH undo ID --app module:registry`.")
    say("See docs/cli.md for every command.")
    return ExitCode.OK


async def _change_files(console: Console, journal: Journal, root: Path) -> str:
    """The one session: four steps, each journaled before its change (intent first)."""
    backup = files.BACKUP_DIR
    work = files.FILES_DIR
    config, notes, log = f"{work}/config.json", f"{work}/notes.txt", f"{work}/old.log"
    archived, summary = f"{work}/archive/notes.txt", f"{work}/data/summary.txt"
    async with journal.start_session(command="retract demo", directory=str(root)) as session:
        payload = {"path": config, "backup": f"{backup}/1-config.json"}
        async with session.step("demo.write", payload):
            await run_sync(files.edit_file, root, config, payload["backup"], _CONFIG)
        _step(console, 1, "demo.write", "edit config.json (its old content kept as a backup)")

        made = await run_sync(files.missing_dirs, root, archived)
        async with session.step("demo.move", {"src": notes, "dst": archived, "make_dirs": made}):
            await run_sync(files.move_file, root, notes, archived, made)
        _step(console, 2, "demo.move", "move notes.txt into archive/")

        payload = {"path": log, "backup": f"{backup}/3-old.log"}
        async with session.step("demo.delete", payload):
            await run_sync(files.delete_file, root, log, payload["backup"])
        _step(console, 3, "demo.delete", f"delete old.log (kept in {backup}/ for undo)")

        visits = sum(int(line.split(b",")[1]) for line in files.SEED["data/report.csv"].split()[1:])
        async with session.step("demo.create", {"path": summary}):
            await run_sync(files.create_file, root, summary, b"visits: %d\n" % visits)
        _step(console, 4, "demo.create", "create data/summary.txt")
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
    console.print(f"   step {number}  {op_type:<11}  {what}")


def _indent(console: Console, lines: list[str]) -> None:
    for line in lines:
        console.print(f"   {line}" if line else "")


def _width(console: Console) -> int | None:
    width = console.width()
    return None if width is None else width - 3
