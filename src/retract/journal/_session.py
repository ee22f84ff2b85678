"""Sessions and steps: how work gets into the journal.

A session is an ``async with`` block. Inside it, ``record_operation`` journals an effect
after it happened (unmake's model, not crash-safe), and ``step`` journals the intent
first: a durable INTENT row before the body runs, DONE after it, FAILED if it raises.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .._async import shielded
from .._errors import SessionStateError, SessionTakenOverError
from ..fs._session_fs import SessionFs
from ..tracking._journaled import OP_TYPE as TRACKED_CHANGE
from ..tracking._journaled import payload_of, remember
from ._encoding import check_op_type, decode, encode, new_id
from ._owner import active, current_owner
from ._records import OperationRecord, OperationState, SessionStatus
from .storage._protocol import NewOperation, OperationUpdate

if TYPE_CHECKING:
    from ._journal import Journal

__all__ = ("Session", "SessionContext", "Step")

logger = logging.getLogger("retract")

_CANCELLED_BEFORE_BODY = "CancelledError: cancelled before the step body ran"

#: Exceptions that mean "stopped from outside", recorded as CANCELLED, not FAILED.
_CANCELLATIONS = (asyncio.CancelledError, KeyboardInterrupt, SystemExit, GeneratorExit)


def _new_operation(
    op_type: str, payload: Mapping[str, Any] | None, state: OperationState, at: float
) -> NewOperation:
    """Validate and encode one operation (raises before any side effect)."""
    return NewOperation(
        new_id(), check_op_type(op_type), encode(payload or {}, "payload"), state, at
    )


def describe_error(exc: BaseException) -> str:
    """``"TypeName: message"``, or just the type name when the message is empty."""
    message = str(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


class Session:
    """An open session: journal operations into it while its block runs.

    Get one from ``async with journal.start_session(...) as session``. After the block
    ends, recording into it raises :class:`~retract.SessionStateError`.
    """

    def __init__(self, journal: Journal, session_id: str, context: dict[str, Any]) -> None:
        self._journal = journal
        self.storage = journal.storage
        self.session_id = session_id
        self.context = context
        self._open = True
        self.fs = SessionFs(self)
        """Reversible file operations journaled into this session (:class:`SessionFs`)."""
        self._pending_tracked: list[NewOperation] = []
        self._tracked: list[tuple[Any, Any, Any, str]] = []

    def __repr__(self) -> str:
        return f"<Session {self.session_id} {'open' if self._open else 'closed'}>"

    @property
    def journal(self) -> Journal:
        """The journal this session writes to."""
        return self._journal

    def _check_open(self) -> None:
        if not self._open:
            raise SessionStateError(
                f"session {self.session_id} has ended (its `async with` block is over); "
                "start a new session to journal more operations"
            )

    async def record_operation(
        self, op_type: str, payload: Mapping[str, Any] | None = None
    ) -> OperationRecord:
        """Journal an operation that has already happened (state DONE).

        Not crash-safe, as in unmake: if the process dies between the effect and this
        call, the journal never learns of the effect. Prefer :meth:`step` for effects
        that must be undoable after a crash.

        :raises InvalidRecordError: invalid ``op_type`` (before anything is written).
        :raises NotSerializableError: ``payload`` is not plain JSON (a TypeError naming
            the offending key; before anything is written).
        :raises StorageError: the journal could not write the record.

        If the awaiting task is cancelled, the record may or may not have been written.
        """
        self._check_open()
        new = _new_operation(op_type, payload, OperationState.DONE, time.time())
        if self._pending_tracked:
            await self._flush_tracked()
        (sequence,) = await self.storage.append_operations(self.session_id, (new,))
        metrics = self._journal.metrics
        if metrics is not None:
            metrics.record_operation()
        return self._record(new, sequence)

    async def record_operations(
        self, operations: Iterable[tuple[str, Mapping[str, Any] | None]]
    ) -> list[OperationRecord]:
        """Journal several operations that already happened, in one transaction.

        All of them are written or none is. Raises like :meth:`record_operation`.
        """
        self._check_open()
        now = time.time()
        new = [
            _new_operation(op_type, payload, OperationState.DONE, now)
            for op_type, payload in operations
        ]
        if not new:
            return []
        if self._pending_tracked:
            await self._flush_tracked()
        sequences = await self.storage.append_operations(self.session_id, new)
        if self._journal.metrics is not None:
            self._journal.metrics.record_operation(len(new))
        return [self._record(op, seq) for op, seq in zip(new, sequences, strict=True)]

    def _record(self, op: NewOperation, sequence: int) -> OperationRecord:
        return OperationRecord(
            op.op_id,
            self.session_id,
            sequence,
            op.op_type,
            decode(op.payload_json),
            datetime.fromtimestamp(op.created_at, UTC),
            op.state,
        )

    def step(self, op_type: str, payload: Mapping[str, Any] | None = None) -> Step:
        """Journal an operation intent-first, around the block that performs it.

        ::

            async with session.step("mail.send", {"to": "ops@example.com"}) as step:
                message_id = await send(...)
                step.update(message_id=message_id)  # stored with DONE, seen by undo

        A durable INTENT row is written before the body runs; DONE (with the updated
        payload) after it; FAILED with the error if it raises (the exception propagates
        unchanged). If the process dies in between, :meth:`Journal.recover` marks the
        operation IN_DOUBT and undo hands it to its handler marked as such.

        :raises InvalidRecordError: invalid ``op_type`` (raised here, before anything).
        :raises NotSerializableError: ``payload`` is not plain JSON (raised here).
        """
        self._check_open()
        return Step(self, check_op_type(op_type), dict(payload or {}))

    def track(self, obj: Any, name: str | None = None) -> str:
        """Journal every change of a tracked container or object while the session runs.

        Each change becomes a ``tracking.change`` operation (written, in order, with the
        session's next journal write and at its end), which ``journal.undo_session``
        reverts with a built-in handler by applying the change's inverse. Tracked objects
        live in memory: the undo must run in this process, while the object exists.
        Changes must hold plain JSON values (set elements: JSON scalars); one that
        does not is logged as an error and not journaled. Tracking an object twice in
        one session changes nothing.

        Undo finds the object by a token made here, not by name, so it never touches
        another object that happens to carry the same name (or id) later.

        :param name: a label for the object in the journal (default: its type's name).
        :return: that label.
        :raises TypeError: ``obj`` is not a tracked container or TrackedAttr.
        """
        self._check_open()
        for tracked, _, _, label in self._tracked:
            if tracked is obj:
                return label
        token, label = remember(obj, name)

        def observe(change: Any) -> None:
            payload = payload_of(token, label, change)
            self._pending_tracked.append(
                _new_operation(TRACKED_CHANGE, payload, OperationState.DONE, change.timestamp)
            )

        # Kept: after the object leaves its tree, it would find another tracker.
        tracker = obj._root_tracker()[1]
        obj.tracking_add_observer(observe)
        self._tracked.append((obj, tracker, observe, label))
        return label

    async def _flush_tracked(self) -> None:
        """Journal the tracked changes made since the last write (in one transaction).

        They leave the pending list only once written: a cancelled write that did land
        is not written twice, and one that did not is written with the next flush.
        """
        pending = list(self._pending_tracked)
        if not pending:
            return
        write = asyncio.ensure_future(self.storage.append_operations(self.session_id, pending))
        try:
            await shielded(write)
        except asyncio.CancelledError:
            if not write.cancelled() and write.exception() is None:
                del self._pending_tracked[: len(pending)]
            raise
        del self._pending_tracked[: len(pending)]
        if self._journal.metrics is not None:
            self._journal.metrics.record_operation(len(pending))

    async def _end_tracking(self) -> None:
        for _, tracker, observer, label in self._tracked:
            try:
                tracker.remove_observer(observer)
            except ValueError:  # pragma: no cover (removed by someone else)
                logger.warning("the tracking observer of %s was already gone", label)
        self._tracked.clear()
        await self._flush_tracked()

    def _close(self) -> None:
        self._open = False


class Step:
    """The async context manager returned by :meth:`Session.step`.

    :ivar op_id: the operation's id, known at construction.
    :ivar sequence: its sequence number, known once the intent is written.
    """

    def __init__(self, session: Session, op_type: str, payload: dict[str, Any]) -> None:
        self._session = session
        self.op_type = op_type
        self.op_id = new_id()
        self.sequence: int | None = None
        self._payload = payload
        self._payload_json = encode(payload, "payload")
        self._changed = False
        self._entered = False
        self._exited = False

    @property
    def payload(self) -> dict[str, Any]:
        """A copy of the payload as it will be stored."""
        return decode(self._payload_json)  # type: ignore[no-any-return]

    def update(self, fields: Mapping[str, Any] | None = None, /, **more: Any) -> None:
        """Add or change payload fields; they are stored with the DONE (or FAILED) state.

        Use it for facts known only after the effect (a created id, a previous value).

        :raises NotSerializableError: a value is not plain JSON; the payload is unchanged.
        :raises SessionStateError: the step has already ended (its state is written).
        """
        if self._exited:
            raise SessionStateError(
                f"step {self.op_id} ({self.op_type}) has ended; update it inside its block"
            )
        merged = {**self._payload, **(fields or {}), **more}
        self._payload_json = encode(merged, "payload")
        self._payload = merged
        self._changed = True

    async def __aenter__(self) -> Step:
        if self._entered:
            raise SessionStateError("a step can be entered only once; call session.step() again")
        self._entered = True
        session = self._session
        session._check_open()
        if session._pending_tracked:
            await session._flush_tracked()
        intent = NewOperation(
            self.op_id, self.op_type, self._payload_json, OperationState.INTENT, time.time()
        )
        # Shielded so that we always learn whether the intent landed: a step cancelled
        # here is then marked FAILED, truthfully "cancelled before the body ran".
        write = asyncio.ensure_future(
            session.storage.append_operations(session.session_id, [intent])
        )
        try:
            (self.sequence,) = await shielded(write)
        except asyncio.CancelledError:
            if not write.cancelled() and write.exception() is None:
                (self.sequence,) = write.result()
                try:
                    await self._write(OperationState.FAILED, _CANCELLED_BEFORE_BODY)
                except Exception:  # the cancellation, not this, is what propagates
                    logger.warning("could not mark step %s FAILED", self.op_id, exc_info=True)
            raise
        metrics = session.journal.metrics
        if metrics is not None:
            metrics.record_operation()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._exited = True
        if exc is None:
            await self._write(OperationState.DONE, None)
            return
        try:
            await self._write(OperationState.FAILED, describe_error(exc))
        except Exception:
            # The body's own exception matters more; the step stays INTENT and becomes
            # IN_DOUBT when the session ends.
            logger.warning(
                "could not record the failure of step %s (%s)",
                self.op_id,
                self.op_type,
                exc_info=True,
            )

    async def _write(self, state: OperationState, error: str | None) -> None:
        assert self.sequence is not None  # noqa: S101
        session = self._session
        update = OperationUpdate(
            session.session_id,
            self.sequence,
            state,
            error,
            self._payload_json if self._changed else None,
        )
        await shielded(session.storage.update_operations([update], time.time()))


class SessionContext:
    """The async context manager returned by :meth:`Journal.start_session`.

    Entering writes a RUNNING session owned by this process. Leaving writes its end:
    COMPLETED; FAILED with ``"Type: message"`` when the block raises (the exception
    propagates unchanged); CANCELLED when the block is cancelled (or interrupted by
    Ctrl+C). These writes are shielded, so a second cancellation cannot leave the
    session RUNNING. With ``undo_on_error=True`` a failed or cancelled session is then
    undone with the journal's registry before the exception propagates; that undo is
    shielded too (a client that disconnects still gets its request rolled back) but
    bounded by ``undo_timeout`` seconds, after which it is cancelled like any undo
    (its progress stays in the journal, ``retract undo`` finishes it).
    """

    def __init__(
        self,
        journal: Journal,
        context: dict[str, Any],
        *,
        undo_on_error: bool,
        undo_timeout: float | None,
    ) -> None:
        if undo_timeout is not None and undo_timeout <= 0:
            raise ValueError(f"undo_timeout must be positive seconds or None, not {undo_timeout!r}")
        self._journal = journal
        self._context_json = encode(context, "context")
        self._undo_on_error = undo_on_error
        self._undo_timeout = undo_timeout
        self._session: Session | None = None

    async def __aenter__(self) -> Session:
        if self._session is not None:
            raise SessionStateError("a session context can be entered only once")
        journal = self._journal
        journal.check_open()
        session_id = new_id()
        session = Session(journal, session_id, decode(self._context_json))
        self._session = session
        # Shielded so that we know whether the row landed; a session cancelled here is
        # closed as CANCELLED at once and never stays RUNNING.
        active.running.add(session_id)
        try:
            await shielded(
                journal.storage.create_session(
                    session_id, self._context_json, current_owner(), time.time()
                )
            )
        except BaseException as exc:
            active.running.discard(session_id)
            if isinstance(exc, asyncio.CancelledError):
                try:
                    await shielded(self._finish(SessionStatus.CANCELLED, "CancelledError"))
                except Exception:  # the cancellation, not this, is what propagates
                    logger.warning("could not record a cancelled start", exc_info=True)
            raise
        active.leased.add(session_id)
        if journal.metrics is not None:
            journal.metrics.record_session_created()
        return session

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._session is not None  # noqa: S101
        if self._session._tracked or self._session._pending_tracked:
            try:
                await shielded(self._session._end_tracking())
            except Exception:
                logger.exception(
                    "could not journal the tracked changes of session %s",
                    self._session.session_id,
                )
        if exc is None:
            await shielded(self._finish(SessionStatus.COMPLETED, None))
            return
        status = (
            SessionStatus.CANCELLED if isinstance(exc, _CANCELLATIONS) else SessionStatus.FAILED
        )
        # A cancellation that arrives while the end is written (anyio re-delivers one on
        # every loop turn) must not skip the rollback: remember it, raise it at the end.
        late: asyncio.CancelledError | None = None
        taken_over = False
        try:
            await shielded(self._finish(status, describe_error(exc)))
        except asyncio.CancelledError as cancel:
            late = cancel
        except SessionTakenOverError as lost:
            # The session is another process's now, to undo as it sees fit: this one
            # is fenced out, its automatic undo included.
            taken_over = True
            logger.error("%s", lost)
            exc.add_note(f"retract: {lost}; it was not undone by this process")
        except Exception:
            logger.warning(
                "could not record the end of session %s", self._session.session_id, exc_info=True
            )
        if self._undo_on_error and not taken_over:
            try:
                await self._undo_after(exc)
            except asyncio.CancelledError as cancel:
                late = late or cancel
        if late is not None and not isinstance(exc, asyncio.CancelledError):
            raise late

    async def _finish(self, status: SessionStatus, error: str | None) -> None:
        assert self._session is not None  # noqa: S101
        self._session._close()
        active.running.discard(self._session.session_id)
        active.leased.discard(self._session.session_id)
        journal = self._journal
        changed = await journal.storage.update_session(
            self._session.session_id,
            status=status,
            at=time.time(),
            error=error,
            expect_statuses=(SessionStatus.RUNNING,),
            settle_intents=True,
        )
        if journal.metrics is not None:
            journal.metrics.record_session_ended(status)
        if not changed:
            await self._explain_lost_end(status)

    async def _explain_lost_end(self, status: SessionStatus) -> None:
        """The end could not be written: raise if another process took the session over."""
        assert self._session is not None  # noqa: S101
        session_id = self._session.session_id
        record = await self._journal.storage.get_session(session_id)
        owner = record.owner if record is not None else None
        if record is not None and owner is not None and owner.token != current_owner().token:
            raise SessionTakenOverError(
                f"session {session_id} ended ({status.value}) after process {owner.pid} on "
                f"{owner.host} took it over ({record.status.value}): this process let its "
                "lease expire (a blocked event loop or a lost connection for longer than "
                "lease_timeout?), so what the block did since may not be journaled, or may "
                "be past its undo; its end was not written"
            )
        logger.warning(
            "session %s was no longer RUNNING when it ended as %s (recovered by another "
            "process?); its journal status was left as it is",
            session_id,
            status.value,
        )

    async def _undo_after(self, exc: BaseException) -> None:
        assert self._session is not None  # noqa: S101
        session_id = self._session.session_id
        try:
            await shielded(
                asyncio.wait_for(self._journal.undo_session(session_id), self._undo_timeout)
            )
        except Exception as undo_exc:
            # The original exception propagates unchanged; the failed rollback is logged
            # and noted on it, so it is not lost.
            logger.error("automatic undo of session %s failed", session_id, exc_info=undo_exc)
            exc.add_note(
                f"retract: the automatic undo of session {session_id} failed "
                f"({describe_error(undo_exc)}); fix the cause and run "
                f"`retract undo {session_id}` to finish it"
            )
