"""Plain-text rendering of sessions, operations, undo plans and reports.

Every function takes ``width``: the terminal width to clip long cells to, or None (output
that is not a terminal) to print cells in full, so that piped output loses nothing.
Times are shown in UTC, like the JSON output.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from ..journal import (
    JournalEvent,
    OperationRecord,
    SessionEvent,
    SessionRecord,
    SessionStatus,
    UndoPlan,
    UndoReport,
)

__all__ = (
    "clip",
    "compact",
    "context_summary",
    "event_line",
    "operations_table",
    "plan_text",
    "report_text",
    "session_detail",
    "sessions_table",
    "table",
    "when",
)

_ELLIPSIS = "…"
_LIVE = (SessionStatus.RUNNING, SessionStatus.UNDOING)
# Below this many characters a clipped cell says too little; let the line wrap instead.
_MIN_CELL = 16


def when(moment: datetime | None) -> str:
    """``2024-05-01 12:03:04Z`` (UTC, to the second), or ``-``."""
    if moment is None:
        return "-"
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def clip(text: str, width: int | None) -> str:
    """The first line of ``text``, cut to ``width`` characters with an ellipsis."""
    first, newline, _ = text.partition("\n")
    if newline:
        first += f" {_ELLIPSIS}"
    if width is not None and len(first) > width:
        return first[: max(width - 1, 0)] + _ELLIPSIS
    return first


def compact(value: Any) -> str:
    """Compact JSON, as stored in the journal."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def describe(op: OperationRecord) -> str:
    """A ``session.fs`` operation in words (its paths); any other payload as JSON.

    ``--json`` output always carries the whole payload.
    """
    p = op.payload
    try:
        if op.op_type == "fs.write":
            how = "replaced; old kept" if p.get("existed") else "new file"
            return f"{p['path']} ({how})"
        if op.op_type in ("fs.move", "fs.copy"):
            return f"{p['src']} -> {p['dst']}" + (" (replaced; old kept)" if p["replaced"] else "")
        if op.op_type == "fs.delete":
            return f"{p['path']} (kept until pruned)"
        if op.op_type in ("fs.rmtree", "fs.mkdir"):
            return f"{p['path']}/"
    except (KeyError, TypeError):
        pass  # someone else's operation under an fs.* name: show it as it is
    return compact(p)


def context_summary(context: Mapping[str, Any]) -> str:
    """``script=deploy.py args=["--force"]``: strings bare, everything else as JSON."""
    parts = [
        f"{key}={value if isinstance(value, str) else compact(value)}"
        for key, value in context.items()
    ]
    return " ".join(parts) or "-"


def table(
    headers: Sequence[str],
    rows: Iterable[Sequence[str]],
    *,
    right: Collection[int] = (),
    width: int | None = None,
) -> list[str]:
    """Aligned columns under upper-case headers; the last column is clipped to fit.

    :param right: indexes of columns to align right (numbers).
    """
    cells = [list(headers)] + [list(row) for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers) - 1)]
    lines: list[str] = []
    for row in cells:
        parts = [row[i].rjust(w) if i in right else row[i].ljust(w) for i, w in enumerate(widths)]
        prefix = "  ".join(parts)
        last = row[-1]
        if width is not None:
            room = width - len(prefix) - 2
            last = clip(last, room) if room >= _MIN_CELL else clip(last, None)
        else:
            last = clip(last, None)
        lines.append(f"{prefix}  {last}".rstrip() if parts else last)
    return lines


def sessions_table(sessions: Sequence[SessionRecord], width: int | None) -> str:
    """The ``sessions`` listing, newest first as given."""
    if not sessions:
        return "no sessions"
    # The error column is clipped on terminals so that the context stays visible.
    error_width = None if width is None else 40
    rows = [
        (
            s.session_id,
            s.status.value,
            when(s.created_at),
            clip(s.error or "-", error_width),
            context_summary(s.context),
        )
        for s in sessions
    ]
    return "\n".join(table(("ID", "STATUS", "CREATED", "ERROR", "CONTEXT"), rows, width=width))


def operations_table(operations: Sequence[OperationRecord], width: int | None) -> list[str]:
    """Operations with their sequence, state, type, compact payload and error."""
    rows = [
        (
            str(op.sequence),
            op.state.value,
            op.op_type,
            describe(op) + (f"  error: {op.error}" if op.error else ""),
        )
        for op in operations
    ]
    return table(("SEQ", "STATE", "TYPE", "PAYLOAD"), rows, right={0}, width=width)


def session_detail(
    session: SessionRecord, operations: Sequence[OperationRecord], width: int | None
) -> str:
    """What ``show`` prints: the session's fields, then its operations in order."""
    owner = session.owner
    fields = [
        ("session", session.session_id),
        ("status", session.status.value),
        ("created", when(session.created_at)),
        ("completed", when(session.completed_at)),
        ("undo runs", str(session.undo_count)),
        ("owner", f"pid {owner.pid} on {owner.host}" if owner is not None else "-"),
    ]
    if session.lease_expires_at is not None and session.status in _LIVE:
        fields.append(("lease", f"until {when(session.lease_expires_at)}"))
    fields += [
        ("error", session.error or "-"),
        ("context", context_summary(session.context)),
    ]
    # Continuation lines of a multi-line value (a long error) stay in the value column.
    lines = [f"{name:<10} {value}".replace("\n", "\n" + " " * 11) for name, value in fields]
    lines.append("")
    if operations:
        lines.append(f"operations ({len(operations)}, in order):")
        lines += ["  " + line for line in operations_table(operations, _inner(width))]
    else:
        lines.append("operations: none")
    return "\n".join(lines)


def plan_text(plan: UndoPlan, width: int | None) -> str:
    """What ``undo --dry-run`` prints: the operations undo would hand to handlers."""
    session = plan.session
    count = len(plan.operations)
    lines = [f"dry run: session {session.session_id} ({session.status.value})"]
    if count:
        lines.append(f"undo would run {_plural(count, 'handler')}, newest operation first:")
        lines += ["  " + line for line in operations_table(plan.operations, _inner(width))]
    else:
        lines.append("nothing to undo: every operation is already undone or skipped")
    if plan.missing_types:
        lines.append(
            "missing undo handlers for: "
            + ", ".join(plan.missing_types)
            + " (pass --app module:registry with handlers for them)"
        )
    if plan.blocker is not None:
        lines.append(f"cannot be undone now: {plan.blocker}")
    lines.append("nothing was changed (dry run)")
    return "\n".join(lines)


def report_text(report: UndoReport, operations: Sequence[OperationRecord] | None = None) -> str:
    """The short report printed after an undo run.

    :param operations: the operations the run was asked to undo, as they are now; when
        given, each gets a line (callers pass them only for short sessions).
    """
    if report.total == 0 and report.complete:
        return f"session {report.session_id}: nothing to undo, it is rolled back"
    outcome = "rolled back" if report.complete else report.status.value.replace("_", " ")
    lines = [
        f"session {report.session_id}: {outcome} in {report.duration:.2f}s: "
        f"{report.undone} undone, {report.skipped} skipped, {len(report.failed)} failed; "
        f"{report.remaining} left to undo"
    ]
    failed = {failure.op_id: failure.error for failure in report.failed}
    if operations:
        for op in operations:
            note = failed.get(op.op_id) or op.error or ""
            lines.append(
                f"  #{op.sequence:<4} {op.op_type:<16} {op.state.value:<12} {op.op_id}"
                + (f"  {clip(note, None)}" if note else "")
            )
    else:
        lines += [
            f"  failed #{f.sequence} {f.op_type} ({f.op_id}): {clip(f.error, None)}"
            for f in report.failed
        ]
    if not report.complete:
        lines.append(
            f"fix the cause, then run `retract undo {report.session_id}` again to resume "
            "(operations already undone are not undone twice)"
        )
    return "\n".join(lines)


def _inner(width: int | None) -> int | None:
    return None if width is None else width - 2


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def event_line(event: JournalEvent) -> str:
    """What ``watch`` prints for one event: one line."""
    stamp = when(event.at)
    if isinstance(event, SessionEvent):
        runs = f" (undo run {event.undo_count})" if event.undo_count else ""
        return f"{stamp}  {event.session_id}  session {event.status.value}{runs}"
    span = str(event.first) if event.first == event.last else f"{event.first}-{event.last}"
    many = "operation" if event.count == 1 else "operations"
    return f"{stamp}  {event.session_id}  {event.count} {many} {event.state.value} (seq {span})"
