"""Undo orchestration: strict reverse order, progress in the journal, resumable.

How progress is written (ARIES-style, one commit per window of operations):

* before a handler runs, its operation is durably UNDOING; after it, UNDONE, SKIPPED or
  UNDO_FAILED. The outcome of one window and the UNDOING marks of the next share a
  commit, so an undo costs about one commit per window, not two per operation.
* the window adapts to the handlers: it aims at handlers taking about four commits' time
  per window (growing at most 4x from one window to the next, shrinking at once when
  they are slow), bounded by ``max_in_doubt``. A crash can therefore leave at most that
  many operations UNDOING; a later run hands them to their handlers with
  ``op.in_doubt`` set. ``max_in_doubt=1`` writes an intent before every single handler.
* operations already UNDONE or SKIPPED are never given to a handler again.
* operations are streamed from the journal page by page, so memory stays flat however
  long the session is.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

from .._async import shielded
from .._errors import (
    SessionNotFoundError,
    SessionStateError,
    UndoErrorGroup,
    UndoFailedError,
    UndoInProgressError,
    UndoSkipped,
    UnknownOperationTypeError,
)
from ._owner import active, current_owner, session_held
from ._records import (
    FailedOperation,
    OperationRecord,
    OperationState,
    SessionRecord,
    SessionStatus,
    UndoPlan,
    UndoReport,
)
from ._registry import OperationRegistry
from ._session import describe_error
from .storage._protocol import LeaseStorage, OperationUpdate

if TYPE_CHECKING:
    from ._journal import Journal

__all__ = ("OnError", "ProgressCallback", "plan_undo", "undo_session")

logger = logging.getLogger("retract")

OnError = Literal["stop", "continue"]
#: Called after every operation with (operations handled so far, total to handle).
ProgressCallback = Callable[[int, int], None]

_PAGE = 1000
_UNDOABLE = frozenset(
    {
        SessionStatus.COMPLETED,
        SessionStatus.FAILED,
        SessionStatus.CANCELLED,
        SessionStatus.INTERRUPTED,
        SessionStatus.PARTIALLY_ROLLED_BACK,
        SessionStatus.ROLLED_BACK,
    }
)


async def require_session(journal: Journal, session_id: str) -> SessionRecord:
    """The session, or SessionNotFoundError listing recent ids."""
    session = await journal.storage.get_session(session_id)
    if session is None:
        recent = await journal.storage.list_sessions(limit=5)
        raise SessionNotFoundError(session_id, [s.session_id for s in recent])
    return session


async def plan_undo(journal: Journal, session_id: str, registry: OperationRegistry) -> UndoPlan:
    """What :func:`undo_session` would do, read-only (see :meth:`Journal.plan_undo`)."""
    session = await require_session(journal, session_id)
    operations: list[OperationRecord] = []
    before: int | None = None
    while page := await journal.storage.operations_page(
        session_id, before=before, limit=_PAGE, pending_only=True
    ):
        operations += page
        before = page[-1].sequence
    missing = sorted({op.op_type for op in operations} - set(registry.types()))
    blocker: str | None = None
    try:
        _check_claimable(session, lapsed_lease_ok=True)
    except SessionStateError as exc:
        blocker = str(exc)
    return UndoPlan(session, tuple(operations), tuple(missing), blocker)


async def undo_session(
    journal: Journal,
    session_id: str,
    registry: OperationRegistry,
    *,
    on_error: OnError,
    max_in_doubt: int,
    progress: ProgressCallback | None,
) -> UndoReport:
    """Undo a session (see :meth:`Journal.undo_session` for the contract)."""
    if on_error not in ("stop", "continue"):
        raise ValueError(f"on_error must be 'stop' or 'continue', not {on_error!r}")
    if max_in_doubt < 1:
        raise ValueError(f"max_in_doubt must be at least 1, not {max_in_doubt!r}")
    _refuse_if_undoing_here(session_id)
    session = await _take_over_if_expired(journal, await require_session(journal, session_id))
    _check_claimable(session)
    total, types = await journal.storage.pending_summary(session_id)
    missing = types - set(registry.types())
    if missing:
        raise UnknownOperationTypeError(session_id, sorted(missing), registry.types())
    if session.status is SessionStatus.ROLLED_BACK and total == 0:
        return UndoReport(session_id, session.status, 0, 0, 0, (), 0, 0.0)
    # Checked again with no await before the add: a concurrent undo of this process
    # that started meanwhile owns the entry, and only the owner may discard it.
    _refuse_if_undoing_here(session_id)
    active.undoing.add(session_id)
    try:
        await _claim(journal, session)
        active.leased.add(session_id)
        run = _UndoRun(journal, session_id, registry, on_error, max_in_doubt, progress, total)
        return await run.execute()
    finally:
        active.undoing.discard(session_id)
        active.leased.discard(session_id)


async def _take_over_if_expired(journal: Journal, session: SessionRecord) -> SessionRecord:
    """The session, taken over first if its owner is on another host and let its lease expire.

    The storage decides by its own clock, and claims the session with a row lock; the
    session is then INTERRUPTED and ours, and the undo claims it like any other.
    """
    storage = journal.storage
    if (
        session.status in (SessionStatus.RUNNING, SessionStatus.UNDOING)
        and session.lease_expires_at is not None
        and session_held(session) is None
        and isinstance(storage, LeaseStorage)
    ):
        if await storage.recover_expired(current_owner(), time.time(), [session.session_id]):
            logger.info("took over session %s: its owner's lease expired", session.session_id)
        # Taken, or not: then its lease lives, or another recoverer took it first.
        return await require_session(journal, session.session_id)
    return session


def _refuse_if_undoing_here(session_id: str) -> None:
    if session_id in active.undoing:
        raise UndoInProgressError(
            f"session {session_id} is already being undone by this process; wait for it"
        )


def _check_claimable(session: SessionRecord, *, lapsed_lease_ok: bool = False) -> None:
    """Raise unless this process may undo the session (checked before anything else).

    :param lapsed_lease_ok: accept a session of another host whose lease has expired by
        this host's clock (a plan: the undo would take it over, if the storage agrees).
    """
    status = session.status
    owner = session.owner
    if status in (SessionStatus.RUNNING, SessionStatus.UNDOING):
        alive = session_held(session)
        who = f"process {owner.pid} on {owner.host}" if owner is not None else "an unknown owner"
        if alive is None:
            lease = session.lease_expires_at
            if lease is not None and lapsed_lease_ok and lease <= datetime.now(UTC):
                return
            if lease is not None:
                raise (
                    UndoInProgressError if status is SessionStatus.UNDOING else SessionStateError
                )(
                    f"session {session.session_id} is {status.value} in {who}, which holds "
                    f"its lease until {lease:%Y-%m-%d %H:%M:%S} UTC and keeps renewing it "
                    "while it works: undo it after that process is done with it (or after "
                    "its lease expired, when this process takes it over)"
                )
            raise SessionStateError(
                f"session {session.session_id} is {status.value} in {who}, another host, "
                "whose liveness cannot be checked from here; undo it from that host"
            )
        if alive:
            if status is SessionStatus.UNDOING:
                raise UndoInProgressError(
                    f"session {session.session_id} is being undone by {who}; wait for it"
                )
            raise SessionStateError(
                f"session {session.session_id} is still running in {who}; undo it after "
                "its block has ended (or use start_session(undo_on_error=True))"
            )
        # Nobody works on it any more (its process died, or its end could not be
        # written): the session is taken over, resuming where the last run stopped.
    elif status not in _UNDOABLE:  # pragma: no cover - every status is covered above
        raise SessionStateError(f"session {session.session_id} cannot be undone in {status}")


async def _claim(journal: Journal, session: SessionRecord) -> None:
    """Make this process the session's undoer, atomically (compare-and-set).

    Shielded: if the awaiting task is cancelled, the outcome of the claim is awaited,
    and a claim that landed is given back (the session returns to its previous status,
    or to INTERRUPTED if it had been abandoned) before the cancellation propagates, so
    it never stays UNDOING with no undo running.
    """
    status = session.status
    owner = session.owner
    storage = journal.storage
    write = asyncio.ensure_future(
        storage.update_session(
            session.session_id,
            status=SessionStatus.UNDOING,
            at=time.time(),
            owner=current_owner(),
            expect_statuses=(status,),
            expect_owner=owner.token if owner is not None else None,
            count_undo=True,
            settle_intents=True,
        )
    )
    try:
        claimed = await shielded(write)
    except asyncio.CancelledError:
        if not write.cancelled() and write.exception() is None and write.result():
            back = (
                SessionStatus.INTERRUPTED
                if status in (SessionStatus.RUNNING, SessionStatus.UNDOING)
                else status
            )
            try:
                await shielded(
                    storage.update_session(
                        session.session_id,
                        status=back,
                        at=time.time(),
                        expect_statuses=(SessionStatus.UNDOING,),
                        expect_owner=current_owner().token,
                    )
                )
            except Exception:
                logger.warning("could not give back the claim on %s", session.session_id)
        raise
    if not claimed:
        raise UndoInProgressError(
            f"session {session.session_id} changed while this undo was starting (another "
            "process is undoing or recovering it); look at it again and retry"
        )


@dataclass(slots=True)
class _UndoRun:
    journal: Journal
    session_id: str
    registry: OperationRegistry
    on_error: OnError
    max_in_doubt: int
    progress: ProgressCallback | None
    total: int
    undone: int = 0
    skipped: int = 0
    failed: list[FailedOperation] = field(default_factory=list)
    errors: list[Exception] = field(default_factory=list)
    # Decided but not yet written; they go out with the next commit. Handlers that
    # succeed need no entry: their window's range is flipped from UNDOING to UNDONE.
    outcomes: list[OperationUpdate] = field(default_factory=list)
    last_window: tuple[int, int] | None = None
    window: int = 1
    stopped: bool = False

    async def execute(self) -> UndoReport:
        started = time.perf_counter()
        interrupted: BaseException | None = None
        try:
            await self._loop()
        except BaseException as exc:
            interrupted = exc
        duration = time.perf_counter() - started
        if interrupted is None:
            report = await shielded(self._finish(duration, None))
        else:
            try:
                await shielded(self._finish(duration, interrupted))
            except Exception:
                logger.exception("could not record the end of the undo of %s", self.session_id)
            raise interrupted
        if self.failed and self.on_error == "stop":
            failure = self.failed[0]
            raise UndoFailedError(
                f"undo of session {self.session_id} stopped at operation "
                f"#{failure.sequence} ({failure.op_type}): {failure.error}; "
                f"{report.undone} undone, {report.remaining} remain. Fix the cause and "
                "undo again to resume (undone operations are not undone twice)",
                report=report,
                op_id=failure.op_id,
            ) from self.errors[0]
        if self.failed:
            group = UndoErrorGroup(
                f"undo of session {self.session_id}: {len(self.failed)} handler(s) failed, "
                f"{report.undone} operation(s) undone",
                self.errors,
                [f.op_id for f in self.failed],
            )
            group.report = report
            raise group
        return report

    async def _loop(self) -> None:
        pages = _PageReader(self.journal, self.session_id)
        try:
            while not self.stopped:
                chunk = await pages.take(self.window)
                if not chunk:
                    return
                await self._run_chunk(chunk)
        finally:
            pages.close()

    async def _run_chunk(self, chunk: list[OperationRecord]) -> None:
        window = (chunk[-1].sequence, chunk[0].sequence)
        begun = time.perf_counter()
        write = asyncio.ensure_future(
            self.journal.storage.record_undo_progress(
                self.session_id,
                outcomes=self.outcomes,
                undone=self.last_window,
                begin=window,
                at=time.time(),
            )
        )
        try:
            # Shielded: we must know whether the window was marked UNDOING.
            await shielded(write)
        except asyncio.CancelledError:
            if not write.cancelled() and write.exception() is None:
                self.outcomes = []
                self._release(chunk, 0)  # marked, but no handler of it ran
            raise
        self.outcomes = []
        self.last_window = window
        committed = time.perf_counter()
        run = self.registry.run
        for index, op in enumerate(chunk):
            try:
                await run(op)
            except UndoSkipped as skip:
                self.outcomes.append(_update(op, OperationState.SKIPPED, skip.reason or None))
                self.skipped += 1
            except Exception as exc:
                self.outcomes.append(_update(op, OperationState.UNDO_FAILED, describe_error(exc)))
                self.failed.append(
                    FailedOperation(op.op_id, op.sequence, op.op_type, describe_error(exc))
                )
                self.errors.append(exc)
                if self.on_error == "stop":
                    self.stopped = True
                    self._release(chunk, index + 1)
                    return
            except BaseException as exc:
                # Cancelled (or interrupted) inside a handler: its effect is unknown.
                self.outcomes.append(_update(op, OperationState.UNDO_FAILED, describe_error(exc)))
                self._release(chunk, index + 1)
                raise
            else:
                self.undone += 1
            if self.progress is not None:
                try:
                    self.progress(self.undone + self.skipped + len(self.failed), self.total)
                except BaseException:
                    self._release(chunk, index + 1)
                    raise
        self._adapt(committed - begun, time.perf_counter() - committed, len(chunk))

    def _release(self, chunk: list[OperationRecord], start: int) -> None:
        """Give the operations of ``chunk[start:]``, whose handlers never ran, back.

        Each returns to the state it had before this run (UNDOING too, if an earlier,
        interrupted run left it so), and the window whose UNDOING marks are flipped to
        UNDONE by the next write shrinks to the operations whose handlers did run.
        """
        self.outcomes += [_update(op, op.state, op.error) for op in chunk[start:]]
        self.last_window = (chunk[start - 1].sequence, chunk[0].sequence) if start else None

    def _adapt(self, commit_time: float, handler_time: float, handled: int) -> None:
        # Aim for a window whose handlers take about four commits' time, so that progress
        # writes cost at most ~20% of the undo; grow at most 4x per window so that one
        # noisy measurement cannot jump straight to the limit.
        per_op = max(handler_time / max(handled, 1), 1e-7)
        target = max(1, min(self.max_in_doubt, int(4 * commit_time / per_op)))
        self.window = min(target, self.window * 4)

    async def _finish(self, duration: float, interrupted: BaseException | None) -> UndoReport:
        storage = self.journal.storage
        await storage.record_undo_progress(
            self.session_id,
            outcomes=self.outcomes,
            undone=self.last_window,
            begin=None,
            at=time.time(),
        )
        self.outcomes = []
        self.last_window = None
        remaining = self.total - self.undone - self.skipped
        complete = remaining == 0 and interrupted is None and not self.failed
        status = SessionStatus.ROLLED_BACK if complete else SessionStatus.PARTIALLY_ROLLED_BACK
        ended = await storage.update_session(
            self.session_id,
            status=status,
            at=time.time(),
            expect_statuses=(SessionStatus.UNDOING,),
            expect_owner=current_owner().token,
        )
        if not ended:
            now = await storage.get_session(self.session_id)
            logger.warning(
                "session %s changed hands during its undo; it is %s, not %s",
                self.session_id,
                None if now is None else now.status.value,
                status.value,
            )
            if now is not None:
                status = now.status
        metrics = self.journal.metrics
        if metrics is not None:
            metrics.record_undo(duration, undone=self.undone, failed=len(self.failed))
            metrics.record_session_ended(status)  # rolled back, partly, or failed
        return UndoReport(
            session_id=self.session_id,
            status=status,
            total=self.total,
            undone=self.undone,
            skipped=self.skipped,
            failed=tuple(self.failed),
            remaining=remaining,
            duration=duration,
        )


class _PageReader:
    """Streams a session's pending operations newest first, one page ahead."""

    def __init__(self, journal: Journal, session_id: str) -> None:
        self._storage = journal.storage
        self._session_id = session_id
        self._buffer: list[OperationRecord] = []
        self._next: asyncio.Task[list[OperationRecord]] | None = None
        self._exhausted = False
        self._prefetch(None)

    def _prefetch(self, before: int | None) -> None:
        self._next = asyncio.ensure_future(
            self._storage.operations_page(
                self._session_id, before=before, limit=_PAGE, pending_only=True
            )
        )

    async def take(self, count: int) -> list[OperationRecord]:
        """Up to ``count`` next operations; an empty list at the end."""
        while len(self._buffer) < count and self._next is not None:
            page = await self._next
            self._next = None
            self._buffer += page
            if len(page) == _PAGE:
                # Read the next page while the handlers of this one run.
                self._prefetch(page[-1].sequence)
        chunk = self._buffer[:count]
        del self._buffer[:count]
        return chunk

    def close(self) -> None:
        if self._next is not None:
            self._next.cancel()
            self._next = None


def _update(
    op: OperationRecord, state: OperationState, error: str | None = None
) -> OperationUpdate:
    return OperationUpdate(op.session_id, op.sequence, state, error)
