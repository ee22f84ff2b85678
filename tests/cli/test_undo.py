"""``retract undo``: handlers from --app, dry runs, confirmation, reports, exit codes."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from retract import OperationState, SessionStatus, open_journal
from retract.cli import main

from .conftest import Cli, FakeTerminal, add_session, states

S = SessionStatus
O = OperationState  # noqa: E741

OPS = [("t.ok", {"n": 1}), ("t.skip", {"n": 2}), ("t.ok", {"n": 3})]


def test_undo_with_app_module(cli: Cli, db: Path, handlers: tuple[str, Path]) -> None:
    """``--app module:attr`` imports the registry; every operation is undone, exit 0."""
    session_id = add_session(db, OPS)
    result = cli("--db", str(db), "undo", session_id, "--app", f"{handlers[0]}:registry", "--yes")
    assert result.code == 0, result.err
    assert "rolled back" in result.out
    assert "2 undone, 1 skipped, 0 failed; 0 left to undo" in result.out
    assert states(db, session_id) == (S.ROLLED_BACK, [O.UNDONE, O.SKIPPED, O.UNDONE])


def test_undo_report_lists_operations_newest_first(
    cli: Cli, db: Path, handlers: tuple[str, Path]
) -> None:
    """The text report has one line per operation, in undo order, with its op id."""
    session_id = add_session(db, OPS)
    result = cli("--db", str(db), "undo", session_id, "--app", f"{handlers[0]}:registry", "-y")
    lines = [line.split() for line in result.out.splitlines() if line.startswith("  #")]
    assert [line[:3] for line in lines] == [
        ["#3", "t.ok", "undone"],
        ["#2", "t.skip", "skipped"],
        ["#1", "t.ok", "undone"],
    ]


def test_undo_with_app_file(cli: Cli, db: Path, handlers: tuple[str, Path]) -> None:
    """``--app path/to/file.py:attr`` loads the file; a factory function works too."""
    session_id = add_session(db, OPS)
    app = f"{handlers[1]}:make_registry"
    result = cli("--db", str(db), "undo", session_id[:8], "--app", app, "--yes")
    assert result.code == 0, result.err
    assert states(db, session_id)[0] is S.ROLLED_BACK


def test_undo_with_async_factory(cli: Cli, db: Path, handlers: tuple[str, Path]) -> None:
    """An async factory returning the registry is awaited."""
    session_id = add_session(db, OPS)
    app = f"{handlers[0]}:make_registry_async"
    assert cli("--db", str(db), "undo", session_id, "--app", app, "--yes").code == 0


@pytest.mark.parametrize(
    ("attribute", "message"),
    [("nothing_here", "has no attribute"), ("not_a_registry", "expected an OperationRegistry")],
)
def test_app_that_is_not_a_registry(
    cli: Cli, db: Path, handlers: tuple[str, Path], attribute: str, message: str
) -> None:
    """A missing attribute or a non-registry: exit 1, one line, nothing undone."""
    session_id = add_session(db, OPS)
    result = cli("--db", str(db), "undo", session_id, "--app", f"{handlers[0]}:{attribute}")
    assert result.code == 1
    assert message in result.err
    assert "Traceback" not in result.err
    assert states(db, session_id)[0] is S.COMPLETED


def test_app_module_not_found(cli: Cli, db: Path) -> None:
    """An unknown module or file: exit 1 with a clear message."""
    session_id = add_session(db, OPS)
    result = cli("--db", str(db), "undo", session_id, "--app", "no_such_module_xyz:registry")
    assert result.code == 1
    assert "no module named 'no_such_module_xyz'" in result.err
    result = cli("--db", str(db), "undo", session_id, "--app", "missing/handlers.py:registry")
    assert result.code == 1
    assert "no such file" in result.err


def test_missing_handlers_undo_nothing(cli: Cli, db: Path) -> None:
    """Without handlers for the types: exit 1, the types are named, nothing changes."""
    session_id = add_session(db, OPS)
    result = cli("--db", str(db), "undo", session_id, "--yes")
    assert result.code == 1
    assert "t.ok" in result.err
    assert "t.skip" in result.err
    assert states(db, session_id) == (S.COMPLETED, [O.DONE, O.DONE, O.DONE])


def test_dry_run_changes_nothing(cli: Cli, db: Path, handlers: tuple[str, Path]) -> None:
    """``--dry-run`` prints the plan newest first and leaves every state as it was."""
    session_id = add_session(db, OPS)
    result = cli(
        "--db", str(db), "undo", session_id, "--app", f"{handlers[0]}:registry", "--dry-run"
    )
    assert result.code == 0
    assert "undo would run 3 handlers" in result.out
    assert "nothing was changed" in result.out
    seqs = [line.split()[0] for line in result.out.splitlines() if line.startswith("    ")]
    assert seqs == ["3", "2", "1"]
    assert states(db, session_id) == (S.COMPLETED, [O.DONE, O.DONE, O.DONE])


def test_dry_run_json_reports_missing_types(cli: Cli, db: Path) -> None:
    """``--dry-run --json`` gives the plan and the missing types; exit 1 when some miss."""
    session_id = add_session(db, OPS)
    result = cli("--db", str(db), "undo", session_id, "--dry-run", "--json")
    assert result.code == 1
    plan = result.json()
    assert plan["dry_run"] is True
    assert plan["ready"] is False
    assert plan["missing_types"] == ["t.ok", "t.skip"]
    assert [op["sequence"] for op in plan["operations"]] == [3, 2, 1]
    assert plan["session"]["session_id"] == session_id
    assert states(db, session_id) == (S.COMPLETED, [O.DONE, O.DONE, O.DONE])


def test_refuses_without_yes_when_stdin_is_not_a_terminal(
    cli: Cli, db: Path, handlers: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No terminal to ask and no ``--yes``: exit 2, says to pass --yes, nothing undone."""
    monkeypatch.setattr(sys, "stdin", open(os.devnull))  # noqa: SIM115
    session_id = add_session(db, OPS)
    try:
        result = cli("--db", str(db), "undo", session_id, "--app", f"{handlers[0]}:registry")
    finally:
        sys.stdin.close()
    assert result.code == 2
    assert "--yes" in result.err
    assert states(db, session_id)[0] is S.COMPLETED


@pytest.mark.parametrize(
    "case",
    [("y\n", 0, S.ROLLED_BACK), ("n\n", 1, S.COMPLETED), ("", 1, S.COMPLETED)],
    ids=["yes", "no", "end-of-input"],
)
def test_asks_on_a_terminal(
    cli: Cli,
    db: Path,
    handlers: tuple[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    case: tuple[str, int, SessionStatus],
) -> None:
    """On a terminal it asks on stderr; only yes undoes (no, or end of input, does not)."""
    answer, code, status = case
    monkeypatch.setattr(sys, "stdin", FakeTerminal(answer))
    session_id = add_session(db, OPS)
    result = cli("--db", str(db), "undo", session_id, "--app", f"{handlers[0]}:registry")
    assert f"Undo 3 operations of session {session_id}? [y/N]" in result.err
    assert result.code == code
    assert states(db, session_id)[0] is status


def test_failing_handler_is_a_partial_undo(cli: Cli, db: Path, handlers: tuple[str, Path]) -> None:
    """A handler that fails after others succeeded: exit 3, report names the op and error."""
    session_id = add_session(db, [("t.ok", {}), ("t.fail", {"n": 2}), ("t.ok", {})])
    result = cli("--db", str(db), "undo", session_id, "--app", f"{handlers[0]}:registry", "-y")
    assert result.code == 3
    assert "1 undone, 0 skipped, 1 failed; 2 left to undo" in result.out
    assert "RuntimeError: cannot undo 2" in result.out
    assert "again to resume" in result.out
    assert states(db, session_id) == (S.PARTIALLY_ROLLED_BACK, [O.DONE, O.UNDO_FAILED, O.UNDONE])


def test_on_error_continue_json_report(cli: Cli, db: Path, handlers: tuple[str, Path]) -> None:
    """``--on-error continue --json``: every failure in the report, exit 3."""
    ops = [("t.fail", {"n": 1}), ("t.ok", {}), ("t.fail", {"n": 3})]
    session_id = add_session(db, ops)
    app = f"{handlers[0]}:registry"
    result = cli(
        "--db", str(db), "undo", session_id, "--app", app, "-y", "--on-error", "continue", "--json"
    )
    assert result.code == 3
    report = result.json()
    assert report["dry_run"] is False
    assert report["status"] == "partially_rolled_back"
    assert report["complete"] is False
    assert (report["total"], report["undone"], report["remaining"]) == (3, 1, 2)
    assert [f["sequence"] for f in report["failed"]] == [3, 1]
    assert report["failed"][0]["error"] == "RuntimeError: cannot undo 3"
    assert all(len(f["op_id"]) == 36 for f in report["failed"])


def test_undo_json_report(cli: Cli, db: Path, handlers: tuple[str, Path]) -> None:
    """``undo --json`` prints only the report on stdout; a second undo has nothing to do."""
    session_id = add_session(db, OPS)
    app = f"{handlers[0]}:registry"
    report = cli("--db", str(db), "undo", session_id, "--app", app, "-y", "--json").json()
    assert report["status"] == "rolled_back"
    assert report["complete"] is True
    assert (report["undone"], report["skipped"], report["failed"]) == (2, 1, [])
    assert isinstance(report["duration_seconds"], float)
    again = cli("--db", str(db), "undo", session_id, "--app", app, "--json")
    assert again.code == 0
    assert again.json()["total"] == 0


@pytest.mark.parametrize("confirm", [["-y"], []], ids=["with-yes", "without-yes"])
def test_session_running_elsewhere_is_refused(
    cli: Cli, db: Path, handlers: tuple[str, Path], confirm: list[str]
) -> None:
    """A session running in a live process: exit 1 before any prompt, nothing undone."""

    async def scenario() -> tuple[int, str]:
        async with open_journal(db) as journal, journal.start_session() as session:
            await session.record_operation("t.ok", {})
            app = f"{handlers[0]}:registry"
            # main() runs its own event loop, so it runs in a thread here
            code = await asyncio.to_thread(
                main, ["--db", str(db), "undo", session.session_id, "--app", app, *confirm]
            )
            return code, session.session_id

    code, session_id = asyncio.run(scenario())
    assert code == 1
    assert states(db, session_id) == (S.COMPLETED, [O.DONE])


def test_ctrl_c_during_undo_exits_130_and_records_progress(
    cli: Cli, db: Path, tmp_path: Path
) -> None:
    """SIGINT inside a handler: exit 130; the journal shows a partial, resumable undo."""
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("asyncio.run handles SIGINT only with the default handler installed")
    module = tmp_path / "interrupting.py"
    module.write_text(
        "import asyncio, os, signal\n"
        "from retract import OperationRegistry\n"
        "registry = OperationRegistry()\n"
        "@registry.handler('t.ok')\n"
        "async def ok(op):\n"
        "    pass\n"
        "@registry.handler('t.slow')\n"
        "async def slow(op):\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    await asyncio.sleep(30)\n"
    )
    session_id = add_session(db, [("t.ok", {}), ("t.slow", {}), ("t.ok", {})])
    result = cli("--db", str(db), "undo", session_id, "--app", f"{module}:registry", "--yes")
    assert result.code == 130
    assert "interrupted" in result.err
    assert f"retract undo {session_id}" in result.err
    assert states(db, session_id) == (S.PARTIALLY_ROLLED_BACK, [O.DONE, O.UNDO_FAILED, O.UNDONE])


def test_progress_bar_only_on_a_terminal(
    cli: Cli, db: Path, handlers: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long undo draws a bar on a terminal's stderr, and none when stderr is piped."""
    app = f"{handlers[0]}:registry"
    piped_id = add_session(db, [("t.ok", {"n": n}) for n in range(250)])
    piped = cli("--db", str(db), "undo", piped_id, "--app", app, "-y")
    assert piped.code == 0
    assert "\r" not in piped.err
    assert "undoing" not in piped.err

    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    session_id = add_session(db, [("t.ok", {"n": n}) for n in range(250)])
    assert cli("--db", str(db), "undo", session_id, "--app", app, "-y").code == 0
    drawn = terminal.getvalue()
    assert "undoing 250/250 [" in drawn
    assert drawn.endswith("\r\x1b[K")  # erased before the report
