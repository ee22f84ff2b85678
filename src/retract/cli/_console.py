"""What every command shares: exit codes, CLI errors, streams and the journal path."""

from __future__ import annotations

import enum
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from ..journal.storage import is_postgres_url

__all__ = (
    "DB_ENV",
    "CliError",
    "Console",
    "ExitCode",
    "UsageError",
    "is_terminal",
    "journal_path",
)

#: The environment variable that gives the journal path when --db is not given.
DB_ENV = "RETRACT_DB"


class ExitCode(enum.IntEnum):
    """The process exit codes of ``retract`` (also listed in ``--help``)."""

    OK = 0
    #: nothing was changed: unknown id, missing handlers, refused, storage error, ...
    FAILURE = 1
    #: bad command line, or confirmation needed but stdin is not a terminal
    USAGE = 2
    #: an undo ran but did not finish: the session is PARTIALLY_ROLLED_BACK
    PARTIAL = 3
    #: interrupted by Ctrl+C (SIGINT)
    INTERRUPTED = 130


class CliError(Exception):
    """A failure to report as one message on stderr, with an exit code."""

    code = ExitCode.FAILURE


class UsageError(CliError):
    """The command line asks for something impossible (exit code 2)."""

    code = ExitCode.USAGE


@dataclass(slots=True)
class Console:
    """The streams a command talks to, and whether it prints JSON.

    Data goes to :attr:`out`; messages, prompts and progress go to :attr:`err`, so
    that ``--json`` output can be piped as it is.
    """

    out: TextIO
    err: TextIO
    stdin: TextIO
    json: bool = False

    def width(self) -> int | None:
        """The terminal width to clip tables to, or None when stdout is not a terminal."""
        if not is_terminal(self.out):
            return None
        return shutil.get_terminal_size().columns

    def print(self, text: str = "") -> None:
        """Write a line of data to stdout."""
        self.out.write(text + "\n")

    def note(self, text: str) -> None:
        """Write a line of diagnostics to stderr."""
        self.err.write(text + "\n")
        self.err.flush()


def journal_path(db: str | None, *, command: str) -> str:
    """The journal path (or ``postgresql://`` URL) from ``--db`` or ``$RETRACT_DB``, checked.

    Reading commands never create a journal: a path with no file is an error, not a new
    empty journal.

    :raises UsageError: no path given, or ``:memory:`` (a new process's in-memory journal
        is always empty).
    :raises CliError: nothing exists at the path.
    """
    path = db if db is not None else os.environ.get(DB_ENV) or None
    if path is None:
        raise UsageError(
            f"`retract {command}` needs a journal: pass --db PATH (before or after the "
            f"command) or set the {DB_ENV} environment variable"
        )
    if path == ":memory:":
        raise UsageError(
            f"`retract {command}` cannot use an in-memory journal (--db :memory:): it lives "
            "only inside the process that made it (only `retract demo` accepts it)"
        )
    if is_postgres_url(path):
        return path  # a database server: the storage says if there is no journal there
    file = Path(path)
    if not file.exists():
        if not file.parent.is_dir():
            raise CliError(
                f"no journal at {path}: directory {file.parent} does not exist "
                f"(check --db or ${DB_ENV})"
            )
        raise CliError(f"no journal at {path}: the file does not exist (check --db or ${DB_ENV})")
    if file.is_file() and file.stat().st_size == 0:
        # SQLite would happily turn an empty file into a new journal; a reading command
        # must not, and a real journal is never empty.
        raise CliError(f"{path} is an empty file, not a retract journal (check --db or ${DB_ENV})")
    return path


def is_terminal(stream: object) -> bool:
    """Whether ``stream`` is a terminal (False for closed or minimal streams)."""
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if callable(isatty) else False
    except (OSError, ValueError):  # closed
        return False
