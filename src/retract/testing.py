"""A pytest plugin for code that uses retract: a journal per test, and assertions.

Installed with retract (the ``pytest11`` entry point ``retract``), so any project that
depends on retract has it without configuration. Its fixtures are synchronous: they
make objects, and the test opens them in its own event loop, so the plugin works the
same beside pytest-asyncio, anyio's plugin or any other::

    async def test_failed_transfer_leaves_nothing(retract_journal):
        async with retract_journal as journal:
            with pytest.raises(PaymentError):
                await transfer(journal, amount=10)
            await assert_rolled_back(journal)  # the newest session

The assertions are coroutines: ``await`` them inside the test.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .journal import (
    Journal,
    OperationRecord,
    OperationRegistry,
    OperationState,
    SessionRecord,
    SessionStatus,
    open_journal,
)

__all__ = (
    "assert_completed",
    "assert_no_session_running",
    "assert_rolled_back",
    "newest_session",
    "retract_journal",
    "retract_journal_path",
    "retract_registry",
)


@pytest.fixture
def retract_journal_path(tmp_path: Path) -> Path:
    """Where :func:`retract_journal` keeps its SQLite file (in the test's tmp_path)."""
    return tmp_path / "retract-journal.db"


@pytest.fixture
def retract_registry() -> OperationRegistry:
    """A registry of undo handlers with retract's built-in ones; add the test's own."""
    return OperationRegistry()


@pytest.fixture
def retract_journal(retract_journal_path: Path, retract_registry: OperationRegistry) -> Journal:
    """A journal on a temporary SQLite file, not opened yet: ``async with`` it in the test.

    It uses :func:`retract_registry`, so handlers registered there undo its sessions.
    """
    return open_journal(retract_journal_path, registry=retract_registry)


async def newest_session(journal: Journal) -> SessionRecord:
    """The session started last.

    :raises AssertionError: the journal has no session.
    """
    sessions = await journal.list_sessions(limit=1)
    if not sessions:
        raise AssertionError("the journal has no session")
    return sessions[0]


async def assert_rolled_back(journal: Journal, session_id: str | None = None) -> SessionRecord:
    """Assert that a session (default: the newest) was rolled back completely.

    Its status must be ``rolled_back`` and every operation undone or skipped as
    already undone; the message lists the operations that are not.
    """
    session, operations = await _session(journal, session_id)
    left = [op for op in operations if op.state not in _UNDONE]
    if session.status is not SessionStatus.ROLLED_BACK or left:
        raise AssertionError(
            f"session {session.session_id} is {session.status.value}, not rolled_back"
            + (f" (error: {session.error})" if session.error else "")
            + (f"; not undone: {_describe(left)}" if left else "")
        )
    return session


async def assert_completed(journal: Journal, session_id: str | None = None) -> SessionRecord:
    """Assert that a session (default: the newest) completed and kept its effects.

    Its status must be ``completed`` and no operation undone, failed or in doubt.
    """
    session, operations = await _session(journal, session_id)
    odd = [op for op in operations if op.state is not OperationState.DONE]
    if session.status is not SessionStatus.COMPLETED or odd:
        raise AssertionError(
            f"session {session.session_id} is {session.status.value}, not completed"
            + (f" (error: {session.error})" if session.error else "")
            + (f"; operations not done: {_describe(odd)}" if odd else "")
        )
    return session


async def assert_no_session_running(journal: Journal) -> None:
    """Assert that no session of the journal is still running or being undone."""
    busy = await journal.list_sessions(status=[SessionStatus.RUNNING, SessionStatus.UNDOING])
    if busy:
        listed = ", ".join(f"{s.session_id} ({s.status.value})" for s in busy)
        raise AssertionError(f"sessions still open: {listed}")


_UNDONE = frozenset({OperationState.UNDONE, OperationState.SKIPPED})


async def _session(
    journal: Journal, session_id: str | None
) -> tuple[SessionRecord, list[OperationRecord]]:
    if session_id is None:
        session = await newest_session(journal)
    else:
        found = await journal.get_session(session_id)
        if found is None:
            raise AssertionError(f"the journal has no session {session_id}")
        session = found
    return session, await journal.get_operations(session.session_id)


def _describe(operations: list[OperationRecord]) -> str:
    return ", ".join(f"#{op.sequence} {op.op_type} ({op.state.value})" for op in operations)
