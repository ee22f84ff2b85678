"""The JSON the CLI prints with ``--json``: one stable shape per record kind.

The shapes are documented in ``docs/cli.md``. Rules that keep them stable:

* field names are the record attributes' names (``session_id``, ``op_type``, ...);
* timestamps are ISO 8601 strings in UTC with a ``Z`` suffix, or null;
* enum values (statuses, states) are their lower-case string values;
* fields may be added in later versions, never renamed or removed.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, TextIO

from ..journal import (
    JournalEvent,
    OperationRecord,
    SessionEvent,
    SessionRecord,
    UndoPlan,
    UndoReport,
)

__all__ = (
    "dump",
    "dump_line",
    "event_json",
    "iso",
    "operation_json",
    "plan_json",
    "report_json",
    "session_json",
)


def iso(moment: datetime | None) -> str | None:
    """``2024-05-01T12:03:04.123456Z``, or None."""
    if moment is None:
        return None
    text = moment.astimezone(UTC).isoformat(timespec="microseconds")
    return text.removesuffix("+00:00") + "Z"


def session_json(session: SessionRecord) -> dict[str, Any]:
    """A session as a JSON object (the owner's private token is left out)."""
    owner = session.owner
    return {
        "session_id": session.session_id,
        "status": session.status.value,
        "created_at": iso(session.created_at),
        "completed_at": iso(session.completed_at),
        "error": session.error,
        "undo_count": session.undo_count,
        "context": session.context,
        "owner": None
        if owner is None
        else {
            "pid": owner.pid,
            "host": owner.host,
            "started_at": iso(datetime.fromtimestamp(owner.started_at, UTC)),
        },
        "lease_expires_at": iso(session.lease_expires_at),
    }


def event_json(event: JournalEvent) -> dict[str, Any]:
    """A journal event (``retract watch``) as a JSON object."""
    if isinstance(event, SessionEvent):
        return {
            "kind": "session",
            "session_id": event.session_id,
            "status": event.status.value,
            "undo_count": event.undo_count,
            "at": iso(event.at),
        }
    return {
        "kind": "operations",
        "session_id": event.session_id,
        "state": event.state.value,
        "count": event.count,
        "first": event.first,
        "last": event.last,
        "at": iso(event.at),
    }


def operation_json(op: OperationRecord) -> dict[str, Any]:
    """An operation as a JSON object."""
    return {
        "op_id": op.op_id,
        "sequence": op.sequence,
        "op_type": op.op_type,
        "state": op.state.value,
        "payload": op.payload,
        "error": op.error,
        "created_at": iso(op.created_at),
        "updated_at": iso(op.updated_at),
    }


def plan_json(plan: UndoPlan) -> dict[str, Any]:
    """What ``undo --dry-run --json`` prints: the plan, newest operation first."""
    return {
        "dry_run": True,
        "session": session_json(plan.session),
        "ready": plan.ready,
        "missing_types": list(plan.missing_types),
        "blocker": plan.blocker,
        "operations": [operation_json(op) for op in plan.operations],
    }


def report_json(report: UndoReport) -> dict[str, Any]:
    """What ``undo --json`` prints after an undo run (also a partial one)."""
    return {
        "dry_run": False,
        "session_id": report.session_id,
        "status": report.status.value,
        "complete": report.complete,
        "total": report.total,
        "undone": report.undone,
        "skipped": report.skipped,
        "failed": [
            {
                "op_id": failure.op_id,
                "sequence": failure.sequence,
                "op_type": failure.op_type,
                "error": failure.error,
            }
            for failure in report.failed
        ],
        "remaining": report.remaining,
        "duration_seconds": round(report.duration, 6),
    }


def dump_line(data: Any, out: TextIO) -> None:
    """Write ``data`` as one line of JSON (JSON Lines), and flush."""
    out.write(json.dumps(data, ensure_ascii=False) + "\n")
    out.flush()


def dump(data: Any, out: TextIO) -> None:
    """Write ``data`` as indented JSON and a newline (non-ASCII kept as is)."""
    json.dump(data, out, ensure_ascii=False, indent=2)
    out.write("\n")
