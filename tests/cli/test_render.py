"""Text and JSON rendering of records: formats, clipping, stable JSON shapes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from retract import (
    FailedOperation,
    OperationRecord,
    OperationState,
    SessionRecord,
    SessionStatus,
    UndoReport,
)
from retract.cli import _json, _render

MOMENT = datetime(2024, 5, 1, 12, 3, 4, 123456, tzinfo=UTC)


def _session(**changes: object) -> SessionRecord:
    record = SessionRecord("0" * 8 + "-0000-4000-8000-" + "0" * 12, MOMENT, SessionStatus.COMPLETED)
    for name, value in changes.items():
        setattr(record, name, value)
    return record


def test_iso_is_utc_with_z() -> None:
    """Timestamps are ISO 8601 in UTC with a Z suffix, whatever the input zone."""
    assert _json.iso(MOMENT) == "2024-05-01T12:03:04.123456Z"
    eastern = MOMENT.astimezone(timezone(timedelta(hours=-4)))
    assert _json.iso(eastern) == "2024-05-01T12:03:04.123456Z"
    assert _json.iso(None) is None


def test_when_is_utc_to_the_second() -> None:
    """Text output shows UTC times to the second."""
    assert _render.when(MOMENT) == "2024-05-01 12:03:04Z"
    assert _render.when(None) == "-"


def test_clip_keeps_the_first_line_and_cuts() -> None:
    """Long or multi-line cells are cut with an ellipsis; None width cuts nothing."""
    assert _render.clip("a\nb", None) == "a …"
    assert _render.clip("abcdefghij", 5) == "abcd…"
    assert _render.clip("abcdefghij", None) == "abcdefghij"


def test_context_summary() -> None:
    """Strings are shown bare, other values as compact JSON; an empty context is '-'."""
    assert _render.context_summary({"script": "x.py", "args": ["-v"]}) == 'script=x.py args=["-v"]'
    assert _render.context_summary({}) == "-"


def test_table_clips_the_last_column_to_the_width() -> None:
    """On a terminal the last column is cut so that lines fit the width."""
    lines = _render.table(("A", "B"), [("1", "x" * 100)], width=40)
    assert all(len(line) <= 40 for line in lines)
    assert lines[1].endswith("…")


def test_session_json_shape() -> None:
    """A session's JSON has exactly the documented keys, statuses as strings."""
    data = _json.session_json(_session(error="boom", context={"a": 1}))
    assert set(data) == {
        "session_id", "status", "created_at", "completed_at", "error", "undo_count", "context",
        "owner", "lease_expires_at",
    }  # fmt: skip
    assert data["status"] == "completed"
    assert data["owner"] is None
    assert data["lease_expires_at"] is None
    assert data["completed_at"] is None


def test_report_json_shape() -> None:
    """An undo report's JSON carries counts and failures with their op ids."""
    report = UndoReport(
        "sid", SessionStatus.PARTIALLY_ROLLED_BACK, 3, 1, 0,
        (FailedOperation("op", 2, "t.fail", "RuntimeError: x"),), 2, 0.5,
    )  # fmt: skip
    data = _json.report_json(report)
    assert data["status"] == "partially_rolled_back"
    assert data["complete"] is False
    assert data["failed"] == [
        {"op_id": "op", "sequence": 2, "op_type": "t.fail", "error": "RuntimeError: x"}
    ]
    assert data["duration_seconds"] == 0.5


def test_operation_error_is_shown_in_show() -> None:
    """An operation's error follows its payload in ``show``."""
    op = OperationRecord(
        "op", "sid", 1, "t.x", {"k": 1}, MOMENT, OperationState.FAILED, "ValueError: bad"
    )
    text = _render.session_detail(_session(), [op], None)
    assert '{"k":1}  error: ValueError: bad' in text
