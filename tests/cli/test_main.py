"""The command line as a whole: parsing, the journal path, opening errors, exit codes."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from retract.cli._main import build_parser

from .conftest import Cli, add_session


def test_help_lists_commands_and_exit_codes(cli: Cli) -> None:
    """``--help`` exits 0 and documents every command and exit code."""
    result = cli("--help")
    assert result.code == 0
    for word in ("sessions", "show", "undo", "recover", "demo", "exit codes", "130"):
        assert word in result.out


def test_version(cli: Cli) -> None:
    """``--version`` prints the version and exits 0."""
    result = cli("--version")
    assert result.code == 0
    assert result.out.startswith("retract ")


def test_no_command_is_a_usage_error(cli: Cli) -> None:
    """Without a command the exit code is 2 and usage goes to stderr."""
    result = cli()
    assert result.code == 2
    assert "usage:" in result.err


def test_missing_db_is_a_usage_error(cli: Cli) -> None:
    """A command that needs a journal says how to give one, exit 2."""
    result = cli("sessions")
    assert result.code == 2
    assert "--db PATH" in result.err
    assert "RETRACT_DB" in result.err
    assert result.out == ""


def test_db_from_environment(cli: Cli, db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``RETRACT_DB`` gives the journal when ``--db`` is absent."""
    session_id = add_session(db, [("t.ok", {})])
    monkeypatch.setenv("RETRACT_DB", str(db))
    result = cli("sessions")
    assert result.code == 0
    assert session_id in result.out


def test_db_after_the_command(cli: Cli, db: Path) -> None:
    """``--db`` is accepted after the command too."""
    session_id = add_session(db, [("t.ok", {})])
    assert session_id in cli("sessions", "--db", str(db)).out


def test_db_option_beats_environment(
    cli: Cli, db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An explicit ``--db`` wins over ``RETRACT_DB``."""
    session_id = add_session(db, [("t.ok", {})])
    monkeypatch.setenv("RETRACT_DB", str(tmp_path / "other.db"))
    assert session_id in cli("--db", str(db), "sessions").out


def test_memory_journal_refused_outside_demo(cli: Cli) -> None:
    """``--db :memory:`` makes no sense for reading commands: exit 2."""
    result = cli("--db", ":memory:", "sessions")
    assert result.code == 2
    assert "in-memory" in result.err


def test_missing_directory_is_one_clear_line(cli: Cli, tmp_path: Path) -> None:
    """A journal in a directory that does not exist: exit 1, one line, no traceback."""
    result = cli("--db", str(tmp_path / "nope" / "j.db"), "sessions")
    assert result.code == 1
    assert result.err.count("\n") == 1
    assert "does not exist" in result.err
    assert "Traceback" not in result.err


def test_missing_file_is_not_created(cli: Cli, tmp_path: Path) -> None:
    """Reading commands never create a journal: a missing file is exit 1."""
    path = tmp_path / "j.db"
    result = cli("--db", str(path), "show", "abc")
    assert result.code == 1
    assert "no journal at" in result.err
    assert not path.exists()


def test_not_a_journal_is_one_clear_line(cli: Cli, tmp_path: Path) -> None:
    """A file that is not a journal: exit 1, one line naming the problem, file untouched."""
    path = tmp_path / "notes.txt"
    path.write_text("hello\n" * 100)
    result = cli("--db", str(path), "sessions")
    assert result.code == 1
    assert result.err.count("\n") == 1
    assert "not a retract journal" in result.err
    assert "Traceback" not in result.err
    assert path.read_text() == "hello\n" * 100


def test_newer_schema_is_one_clear_line(cli: Cli, db: Path) -> None:
    """A journal written by a newer retract: exit 1, says to upgrade."""
    add_session(db)
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA user_version = 999")
    conn.close()
    result = cli("--db", str(db), "sessions")
    assert result.code == 1
    assert "upgrade retract" in result.err
    assert "Traceback" not in result.err


def test_bad_limit_is_a_usage_error(cli: Cli, db: Path) -> None:
    """A negative ``--limit`` is rejected by the parser, exit 2."""
    add_session(db)
    assert cli("--db", str(db), "sessions", "--limit", "-1").code == 2


def test_bad_app_spec_is_a_usage_error(cli: Cli, db: Path) -> None:
    """``--app`` without ``:attr`` is a usage error, exit 2."""
    session_id = add_session(db, [("t.ok", {})])
    result = cli("--db", str(db), "undo", session_id, "--app", "just_a_module")
    assert result.code == 2
    assert "module:attribute" in result.err


def test_unmake_aliases_exist() -> None:
    """``list-sessions`` and ``show-session`` parse like ``sessions`` and ``show``."""
    parser = build_parser()
    assert parser.parse_args(["list-sessions"]).command == "list-sessions"
    assert parser.parse_args(["show-session", "x"]).session_id == "x"


def test_force_is_an_alias_of_yes() -> None:
    """The unmake option ``undo --force`` still means: do not ask."""
    assert build_parser().parse_args(["undo", "x", "--force"]).yes is True


def test_empty_file_is_not_turned_into_a_journal(cli: Cli, tmp_path: Path) -> None:
    """A zero-byte file is refused (exit 1) and stays empty."""
    path = tmp_path / "empty.db"
    path.touch()
    result = cli("--db", str(path), "sessions")
    assert result.code == 1
    assert "empty file" in result.err
    assert path.stat().st_size == 0
