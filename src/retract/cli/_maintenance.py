"""The housekeeping commands: ``retract sweep DIR`` and ``retract prune``."""

from __future__ import annotations

import re
from collections.abc import Collection
from datetime import UTC, datetime, timedelta

from ..fs import sweep as sweep_directory
from ..journal import SessionRecord, SessionStatus, open_journal
from ..journal._records import TERMINAL_STATUSES
from . import _json, _render
from ._console import CliError, Console, ExitCode, UsageError, is_terminal

__all__ = ("parse_age", "prune", "sweep")

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")


def parse_age(text: str) -> timedelta:
    """``"30d"``, ``"12h"``, ``"15m"``, ``"90s"``, ``"2w"`` or plain seconds.

    :raises ValueError: anything else (argparse turns it into a usage error).
    """
    match = _AGE.match(text)
    if match is None:
        raise ValueError(
            f"expected an age like 30d, 12h, 15m, 90s or 2w (or seconds), got {text!r}"
        )
    return timedelta(seconds=float(match[1]) * _UNITS[match[2] or "s"])


async def sweep(
    console: Console, directory: str, *, recursive: bool, min_age: timedelta | None
) -> int:
    """Remove the temps that killed retract processes left in ``directory``."""
    seconds = None if min_age is None else min_age.total_seconds()
    report = await sweep_directory(directory, recursive=recursive, min_age=seconds)
    if console.json:
        _json.dump(
            {
                "removed": [str(p) for p in report.removed],
                "restored": [
                    {"from": str(swap), "to": str(target)} for swap, target in report.restored
                ],
                "kept": [
                    {"path": str(p), "reason": report.kept_reasons.get(p)} for p in report.kept
                ],
                "failed": [{"path": str(p), "error": e} for p, e in report.failed],
            },
            console.out,
        )
    else:
        for path in report.removed:
            console.print(f"removed  {path}")
        for swap, target in report.restored:
            console.print(f"restored {target} (from {swap}, left by a folder swap cut short)")
        for path in report.kept:
            reason = report.kept_reasons.get(path, "its writer may still be using it")
            console.print(f"kept     {path} ({reason})")
        for path, error in report.failed:
            console.print(f"FAILED   {path}: {error}")
        removed = len(report.removed)
        console.print(
            f"{removed} abandoned temp{'s' if removed != 1 else ''} removed, "
            f"{len(report.restored)} restored, {len(report.kept)} kept, "
            f"{len(report.failed)} failed"
        )
    return ExitCode.FAILURE if report.failed else ExitCode.OK


async def prune(
    console: Console,
    path: str,
    *,
    older_than: timedelta,
    statuses: Collection[str] | None,
    dry_run: bool,
    yes: bool,
    images_dir: str | None = None,
) -> int:
    """Delete sessions that ended more than ``older_than`` ago, with their images.

    The cutoff is fixed once: a session that ages past it while the prompt waits is not
    pruned unlisted.
    """
    wanted = {SessionStatus(s) for s in statuses} if statuses else set(TERMINAL_STATUSES)
    async with open_journal(path, create=False, images_dir=images_dir) as journal:
        cutoff = datetime.now(UTC) - older_than
        candidates = [s for s in await journal.list_sessions(status=wanted) if _ended(s) < cutoff]
        if dry_run or not candidates:
            _print_sessions(console, candidates, "would prune" if dry_run else "pruned")
            return ExitCode.OK
        if not yes:
            _confirm(console, len(candidates))
        pruned = set(await journal.prune(cutoff, statuses=wanted))
    _print_sessions(console, [s for s in candidates if s.session_id in pruned], "pruned")
    return ExitCode.OK


def _ended(session: SessionRecord) -> datetime:
    return session.completed_at or session.created_at


def _confirm(console: Console, count: int) -> None:
    if not is_terminal(console.stdin):
        raise UsageError(
            f"refusing to prune {count} session(s) without confirmation: stdin is not a "
            "terminal; pass --yes to prune anyway"
        )
    console.err.write(
        f"Prune {count} session{'s' if count != 1 else ''}? They can no longer be undone, "
        "and their before-images are deleted. [y/N] "
    )
    console.err.flush()
    if console.stdin.readline().strip().lower() not in ("y", "yes"):
        raise CliError("not pruned: nothing was changed")


def _print_sessions(console: Console, sessions: list[SessionRecord], verb: str) -> None:
    if console.json:
        _json.dump({verb.replace(" ", "_"): [_json.session_json(s) for s in sessions]}, console.out)
        return
    if sessions:
        console.print(_render.sessions_table(sessions, console.width()))
    count = len(sessions)
    console.print(f"{verb} {count} session{'s' if count != 1 else ''}")
