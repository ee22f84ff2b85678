"""ChangeCollector: an observer that keeps what it sees."""

from __future__ import annotations

from collections.abc import Iterator

from ._change import Change

__all__ = ("ChangeCollector",)


class ChangeCollector:
    """An observer that stores every change it is given (``container.tracking_add_observer``)."""

    def __init__(self) -> None:
        self.changes: list[Change] = []

    def __call__(self, change: Change) -> None:
        self.changes.append(change)

    def __len__(self) -> int:
        return len(self.changes)

    def __iter__(self) -> Iterator[Change]:
        return iter(self.changes)

    def as_list(self) -> list[Change]:
        """A copy of the changes seen so far, oldest first."""
        return list(self.changes)

    def clear(self) -> None:
        """Forget the changes seen so far."""
        self.changes.clear()
