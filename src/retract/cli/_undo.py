"""``retract undo ID``: plan, confirm, undo, report.

It runs in two event loops on purpose: the first resolves the id, loads the handlers
and plans; then the confirmation prompt waits for a human with no journal open and no
event loop running (so Ctrl+C at the prompt simply stops); the second loop undoes.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Literal

from .._errors import (
    SessionStateError,
    UndoErrorGroup,
    UndoFailedError,
    UnknownOperationTypeError,
)
from ..fs._handlers import DriftPolicy
from ..journal import OperationRecord, OperationRegistry, UndoPlan, UndoReport, open_journal
from . import _json, _render
from ._app import AppSpec, load_target, resolve_registry
from ._console import CliError, Console, ExitCode, UsageError, is_terminal
from ._progress import ProgressBar

__all__ = ("UndoOptions", "undo")

#: Sessions with at most this many operations to undo get one report line per operation.
_DETAIL_LIMIT = 20
_YES = frozenset({"y", "yes"})


@dataclass(frozen=True, slots=True)
class UndoOptions:
    """The options of ``retract undo``."""

    session_id: str
    app: AppSpec | None = None
    dry_run: bool = False
    yes: bool = False
    on_error: Literal["stop", "continue"] = "stop"
    drift: DriftPolicy = "refuse"


def undo(console: Console, path: str, options: UndoOptions) -> int:
    """Undo a session (or, with ``dry_run``, show what an undo would do).

    :return: an :class:`ExitCode`: OK, FAILURE (nothing was undone, including missing
        handlers and a declined prompt), USAGE (confirmation needed but stdin is not a
        terminal), PARTIAL (the undo stopped part way), INTERRUPTED (Ctrl+C).
    :raises RetractError: unknown id, a session that cannot be undone now, storage
        errors; nothing was undone.
    :raises AppLoadError: the ``--app`` target cannot be loaded.
    """
    target = load_target(options.app) if options.app is not None else None
    plan, registry = asyncio.run(_plan(path, options, target))
    full_id = plan.session.session_id
    if options.dry_run:
        if console.json:
            _json.dump(_json.plan_json(plan), console.out)
        else:
            console.print(_render.plan_text(plan, console.width()))
        return ExitCode.OK if plan.ready else ExitCode.FAILURE
    if plan.missing_types:
        raise UnknownOperationTypeError(full_id, plan.missing_types, registry.types())
    if plan.blocker is not None:
        raise SessionStateError(plan.blocker)
    if plan.operations and not options.yes and not _confirm(console, plan):
        console.note(f"not undone: session {full_id} is unchanged")
        return ExitCode.FAILURE
    try:
        return asyncio.run(_undo(console, path, options, plan, registry))
    except KeyboardInterrupt:
        console.note(
            f"\ninterrupted: the undo of session {full_id} stopped; its progress is in the "
            f"journal. Run `retract undo {full_id}` again to resume"
        )
        return ExitCode.INTERRUPTED


async def _plan(
    path: str, options: UndoOptions, target: object
) -> tuple[UndoPlan, OperationRegistry]:
    registry = OperationRegistry()  # the built-in handlers, unless --app replaces them
    if options.app is not None:
        registry.update(await resolve_registry(options.app, target))
    async with open_journal(path, create=False) as journal:
        full_id = await journal.resolve_session_id(options.session_id)
        return await journal.plan_undo(full_id, registry), registry


def _confirm(console: Console, plan: UndoPlan) -> bool:
    """Ask on the terminal; refuse (exit code 2) when nobody can answer."""
    count = len(plan.operations)
    question = (
        f"Undo {count} operation{'s' if count != 1 else ''} of session "
        f"{plan.session.session_id}? [y/N] "
    )
    if not is_terminal(console.stdin):
        raise UsageError(
            f"refusing to undo {count} operation(s) of session {plan.session.session_id} "
            "without confirmation: stdin is not a terminal; pass --yes to undo anyway"
        )
    console.err.write(question)
    console.err.flush()
    # Ctrl+C here propagates: main() reports it with exit code 130, nothing undone.
    return console.stdin.readline().strip().lower() in _YES


async def _undo(
    console: Console,
    path: str,
    options: UndoOptions,
    plan: UndoPlan,
    registry: OperationRegistry,
) -> int:
    full_id = plan.session.session_id
    code = ExitCode.OK
    bar = ProgressBar(console.err)
    async with open_journal(path, registry=registry, create=False) as journal:
        try:
            report = await journal.undo_session(
                full_id, registry, on_error=options.on_error, progress=bar, drift=options.drift
            )
        except (UndoFailedError, UndoErrorGroup) as exc:
            code = ExitCode.PARTIAL
            partial = exc.report
            if partial is None:  # pragma: no cover - the undo always attaches its report
                raise CliError(str(exc)) from exc
            report = partial
        finally:
            bar.close()
        operations = None
        if not console.json and 0 < len(plan.operations) <= _DETAIL_LIMIT:
            # Show each operation's state after the run, in the order undo visited them.
            now = {op.op_id: op for op in await journal.get_operations(full_id)}
            operations = [now.get(op.op_id, op) for op in plan.operations]
    _print_report(console, report, operations)
    return code


def _print_report(
    console: Console, report: UndoReport, operations: list[OperationRecord] | None
) -> None:
    if console.json:
        _json.dump(_json.report_json(report), console.out)
    else:
        console.print(_render.report_text(report, operations))
