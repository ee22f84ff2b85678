"""``retract``: the parser, the dispatch to commands, and the exit codes.

Every command runs its async work with ``asyncio.run`` inside :func:`main`. Failures
the user can act on (a bad path, an unknown id, missing handlers) become one line on
stderr and an exit code; only bugs print a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from datetime import timedelta

from .. import __version__
from .._errors import RetractError
from ..journal import SessionStatus
from ..journal._records import TERMINAL_STATUSES
from . import _commands
from ._app import AppLoadError, parse_app
from ._console import DB_ENV, CliError, Console, ExitCode, journal_path
from ._demo import demo
from ._maintenance import parse_age, prune, sweep
from ._undo import UndoOptions, undo

__all__ = ("build_parser", "main")

_EXIT_CODES = """\
exit codes:
  0    success
  1    failure, nothing was changed (unknown or ambiguous id, missing undo handlers,
       session running or being undone elsewhere, journal cannot be opened, ...)
  2    usage error (bad arguments, no journal given, confirmation needed but stdin is
       not a terminal: pass --yes)
  3    partial undo: the undo ran but some operations failed or remain; the session is
       partially_rolled_back, and running undo again resumes
  130  interrupted (Ctrl+C); an interrupted undo records its progress and resumes
"""

_EPILOG = f"""\
the journal:
  --db PATH may come before or after the command; without it, ${DB_ENV} is used.

{_EXIT_CODES}
examples:
  retract demo                               see a session undone, in a temp directory
  retract --db history.db sessions --limit 5
  retract --db history.db show 3f2a          a unique prefix of the id is enough
  retract --db history.db undo 3f2a --app myapp.undo:registry --dry-run
  RETRACT_DB=history.db retract undo 3f2a --app handlers.py:registry --yes
  retract --db history.db undo 3f2a --drift skip   leave files changed since untouched
  retract --db history.db prune --older-than 30d --yes
  retract --db postgresql://host/db watch    follow sessions and undos live
  retract sweep /srv/data --recursive        remove temps of killed writers

JSON output (--json) and every option: see docs/cli.md.
"""


def build_parser() -> argparse.ArgumentParser:
    """The ``retract`` argument parser (exposed for documentation and tests)."""
    # --db is accepted after the command too; SUPPRESS keeps a sub-command's absent
    # --db from overwriting one given before the command.
    db_after = argparse.ArgumentParser(add_help=False)
    db_after.add_argument("--db", metavar="PATH", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    json_flag = argparse.ArgumentParser(add_help=False)
    json_flag.add_argument(
        "--json", action="store_true", help="print JSON on stdout (messages go to stderr)"
    )

    parser = argparse.ArgumentParser(
        prog="retract",
        description="Inspect and undo the sessions of a retract journal.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--db", metavar="PATH", help=f"the journal file (default: ${DB_ENV})")
    parser.add_argument("--version", action="version", version=f"retract {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(
        name: str, help_text: str, *aliases: str, json: bool = True
    ) -> argparse.ArgumentParser:
        parents = [db_after, json_flag] if json else [db_after]
        return commands.add_parser(
            name,
            aliases=list(aliases),
            help=help_text,
            description=help_text,
            parents=parents,
            epilog=_EXIT_CODES,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    sessions = command("sessions", "list sessions, newest first", "list-sessions")
    sessions.add_argument(
        "--limit", type=_count, default=20, metavar="N", help="show at most N (0: all; default 20)"
    )
    sessions.add_argument(
        "--status",
        action="append",
        choices=[s.value for s in SessionStatus],
        metavar="S",
        help="only sessions with status S (repeatable): "
        + ", ".join(s.value for s in SessionStatus),
    )

    show = command("show", "show a session and its operations in order", "show-session")
    show.add_argument("session_id", metavar="ID", help="a session id or a unique prefix of one")

    undo_cmd = command("undo", "undo a session's operations, newest first")
    undo_cmd.add_argument("session_id", metavar="ID", help="a session id or a unique prefix")
    undo_cmd.add_argument(
        "--app",
        type=parse_app,
        metavar="MODULE:ATTR",
        help="the undo handlers: an OperationRegistry (or a function returning one) as "
        "module:attr or path/to/file.py:attr; added to (and overriding) the built-in "
        "session.fs handlers",
    )
    undo_cmd.add_argument(
        "--dry-run", action="store_true", help="print what would be undone; change nothing"
    )
    undo_cmd.add_argument(
        "-y", "--yes", "--force", action="store_true", dest="yes",
        help="do not ask for confirmation (needed when stdin is not a terminal)",
    )  # fmt: skip
    undo_cmd.add_argument(
        "--on-error",
        choices=("stop", "continue"),
        default="stop",
        help="when a handler fails: stop there (default), or continue with the rest",
    )
    undo_cmd.add_argument(
        "--drift",
        choices=("refuse", "skip", "force"),
        default="refuse",
        help="a file changed since its session.fs operation: refuse to undo that step "
        "(default), skip it, or force the restore",
    )

    command("recover", "mark sessions whose process died as interrupted, and list them")

    watch_cmd = command(
        "watch", "print session and operation events as they happen (PostgreSQL journals)"
    )
    watch_cmd.add_argument(
        "session_id", nargs="?", metavar="ID", help="only this session (an id or a unique prefix)"
    )
    watch_cmd.add_argument(
        "--count", type=_count, default=0, metavar="N", help="stop after N events (0: never)"
    )

    prune_cmd = command(
        "prune", "delete ended sessions older than an age, with their before-images"
    )
    prune_cmd.add_argument(
        "--older-than",
        type=_age,
        required=True,
        metavar="AGE",
        help="how long ago the sessions ended: 30d, 12h, 15m, 90s, 2w (or seconds)",
    )
    prune_cmd.add_argument(
        "--status",
        action="append",
        choices=sorted(s.value for s in TERMINAL_STATUSES),
        metavar="S",
        help="only sessions with status S (repeatable); default: every ended status",
    )
    prune_cmd.add_argument(
        "--dry-run", action="store_true", help="list what would be pruned; change nothing"
    )
    prune_cmd.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    prune_cmd.add_argument(
        "--images-dir",
        metavar="DIR",
        help="where the journal's before-images are, if it was opened with images_dir= "
        "(default: PATH.images beside the journal)",
    )

    sweep_cmd = command("sweep", "remove temp files and folders left by killed writers")
    sweep_cmd.add_argument("directory", metavar="DIR", help="the directory to clean")
    sweep_cmd.add_argument(
        "-r", "--recursive", action="store_true", help="also clean its subdirectories"
    )
    sweep_cmd.add_argument(
        "--min-age",
        type=_age,
        metavar="AGE",
        help="also remove temps older than AGE whose pid looks alive (pid reuse, other "
        "hosts); never shorter than your longest write",
    )

    demo_cmd = command(
        "demo", "journal some file changes in a temp directory, undo them, verify", json=False
    )
    demo_cmd.add_argument(
        "--keep", action="store_true", help="keep the temporary directory and print its path"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``retract`` with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version, or a usage error (already printed)
        return exit_.code if isinstance(exit_.code, int) else ExitCode.USAGE
    console = Console(sys.stdout, sys.stderr, sys.stdin, json=getattr(args, "json", False))
    try:
        return _dispatch(args, console)
    except CliError as exc:
        console.note(f"retract: error: {exc}")
        if exc.code == ExitCode.USAGE:
            console.note(f"(see `retract {args.command} --help`)")
        return exc.code
    except BrokenPipeError:
        # `retract sessions | head`: the reader left; say nothing more on a closed pipe.
        _silence_stdout()
        return ExitCode.FAILURE
    except (RetractError, AppLoadError, OSError) as exc:
        console.note(f"retract: error: {exc}")
        return ExitCode.FAILURE
    except KeyboardInterrupt:
        console.note("\nretract: interrupted")
        return ExitCode.INTERRUPTED


def _dispatch(args: argparse.Namespace, console: Console) -> int:
    command: str = args.command
    if command == "demo":
        return asyncio.run(demo(console, args.db, keep=args.keep))
    if command == "sweep":
        return asyncio.run(
            sweep(console, args.directory, recursive=args.recursive, min_age=args.min_age)
        )
    name = {"list-sessions": "sessions", "show-session": "show"}.get(command, command)
    path = journal_path(args.db, command=name)
    if name == "sessions":
        limit = args.limit or None
        return asyncio.run(_commands.sessions(console, path, limit=limit, statuses=args.status))
    if name == "show":
        return asyncio.run(_commands.show(console, path, args.session_id))
    if name == "recover":
        return asyncio.run(_commands.recover(console, path))
    if name == "watch":
        return asyncio.run(
            _commands.watch(console, path, args.session_id, count=args.count or None)
        )
    if name == "prune":
        return asyncio.run(
            prune(
                console,
                path,
                older_than=args.older_than,
                statuses=args.status,
                dry_run=args.dry_run,
                yes=args.yes,
                images_dir=args.images_dir,
            )
        )
    options = UndoOptions(
        args.session_id,
        args.app,
        dry_run=args.dry_run,
        yes=args.yes,
        on_error=args.on_error,
        drift=args.drift,
    )
    return undo(console, path, options)


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's final flush cannot fail."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no real file descriptor (e.g. captured in tests)
        pass


def _age(text: str) -> timedelta:
    try:
        return parse_age(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return value
