"""MetricsCollector: in-process counters of a journal (unmake's, extended)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ._records import SessionStatus

__all__ = ("MetricsCollector",)


@dataclass(slots=True)
class MetricsCollector:
    """Counts what a journal did in this process. Pass it as ``Journal(metrics=...)``.

    :meth:`get_stats` keeps unmake's keys (``session_created``, ``operations_recorded``,
    ``sessions_undone``, ``total_undo_time``) and adds operations undone, undo failures
    and sessions ended by status.
    """

    sessions_created: int = 0
    operations_recorded: int = 0
    sessions_undone: int = 0
    operations_undone: int = 0
    undo_failures: int = 0
    total_undo_time: float = 0.0
    sessions_ended: Counter[str] = field(default_factory=Counter)

    def record_session_created(self) -> None:
        """Count a started session."""
        self.sessions_created += 1

    def record_session_ended(self, status: SessionStatus) -> None:
        """Count a session that ended with ``status``."""
        self.sessions_ended[status.value] += 1

    def record_operation(self, count: int = 1) -> None:
        """Count journaled operations."""
        self.operations_recorded += count

    def record_undo(self, duration: float, *, undone: int = 0, failed: int = 0) -> None:
        """Count one undo run and how long it took."""
        self.sessions_undone += 1
        self.operations_undone += undone
        self.undo_failures += failed
        self.total_undo_time += duration

    def get_stats(self) -> dict[str, float | int]:
        """A snapshot of every counter, flat."""
        stats: dict[str, float | int] = {
            "session_created": self.sessions_created,
            "operations_recorded": self.operations_recorded,
            "sessions_undone": self.sessions_undone,
            "operations_undone": self.operations_undone,
            "undo_failures": self.undo_failures,
            "total_undo_time": self.total_undo_time,
        }
        for status, count in sorted(self.sessions_ended.items()):
            stats[f"sessions_{status}"] = count
        return stats
