"""The one error hierarchy of retract.

Every error the library raises on purpose derives from :class:`RetractError`, and also
from the builtin a caller would naturally catch::

    RetractError (Exception)
    ├── InvalidRecordError (ValueError)            bad op_type, payload too large
    │   └── NotSerializableError (TypeError)       payload/context is not plain JSON
    ├── JournalError
    │   ├── JournalClosedError (RuntimeError)      used before open / after aclose()
    │   ├── JournalOpenError (OSError)             file or directory cannot be used
    │   ├── NotAJournalError                       file exists but is not a journal
    │   ├── SchemaVersionError                     journal written by a newer retract
    │   ├── StorageError                           the storage failed a read or write
    │   │   └── JournalBusyError                   another process held the lock too long
    │   ├── SessionNotFoundError (LookupError)     unknown session id
    │   └── SessionStateError                      session state forbids the action
    │       ├── UndoInProgressError                another undo of it is running
    │       └── SessionTakenOverError              its lease expired; another process took it
    ├── UndoError
    │   ├── UnknownOperationTypeError (LookupError)  no handler; nothing was undone
    │   ├── UndoFailedError                        a handler failed; undo stopped
    │   └── UndoErrorGroup (ExceptionGroup)        handlers failed; undo continued
    ├── TrackingError                              a tracked container refused something
    │   ├── ContainerLockedError (RuntimeError)    mutation of a locked container
    │   ├── HistoryTruncatedError (LookupError)    a cursor older than the kept history
    │   └── SubscriberOverflowError               a bounded subscription overflowed
    └── FileOperationError (OSError)               an atomic or reversible file operation
        ├── FileAlreadyExistsError (FileExistsError)  target exists, overwrite=False
        ├── CrossDeviceError                       paths on different filesystems
        ├── DurabilityError                        in place, but the directory fsync failed
        └── DriftError                             undo refused: the file changed since

:class:`UndoSkipped` is not an error: an undo handler raises it to say that the
operation needs no undo (the operation ends SKIPPED).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Self

if TYPE_CHECKING:
    from .journal._records import UndoReport

__all__ = (
    "ContainerLockedError",
    "CrossDeviceError",
    "DriftError",
    "DurabilityError",
    "FileAlreadyExistsError",
    "FileOperationError",
    "HistoryTruncatedError",
    "InvalidRecordError",
    "JournalBusyError",
    "JournalClosedError",
    "JournalError",
    "JournalOpenError",
    "NotAJournalError",
    "NotSerializableError",
    "RetractError",
    "SchemaVersionError",
    "SessionNotFoundError",
    "SessionStateError",
    "SessionTakenOverError",
    "StorageError",
    "SubscriberOverflowError",
    "TrackingError",
    "UndoError",
    "UndoErrorGroup",
    "UndoFailedError",
    "UndoInProgressError",
    "UndoSkipped",
    "UnknownOperationTypeError",
)


class RetractError(Exception):
    """Root of every error raised on purpose by retract."""


class InvalidRecordError(RetractError, ValueError):
    """An operation type, payload or context cannot be journaled as given."""


class NotSerializableError(InvalidRecordError, TypeError):
    """A payload or context holds a value that is not plain JSON.

    :ivar path: where the offending value sits, e.g. ``payload['files'][2]``.
    """

    def __init__(self, message: str, path: str) -> None:
        super().__init__(message)
        self.path = path


class JournalError(RetractError):
    """Something is wrong with the journal or one of its sessions."""


class JournalClosedError(JournalError, RuntimeError):
    """The journal (or its storage) is not open: use ``async with`` around it."""


class JournalOpenError(JournalError, OSError):
    """The journal file or its directory cannot be opened or created."""


class NotAJournalError(JournalError):
    """The file exists but is not a retract journal."""


class SchemaVersionError(JournalError):
    """The journal was written by a newer retract with a schema this one cannot read."""


class StorageError(JournalError):
    """The storage failed to read or write; the message says what failed."""


class JournalBusyError(StorageError):
    """Another process kept the journal locked for longer than the busy timeout."""


class SessionNotFoundError(JournalError, LookupError):
    """No session has this id.

    :ivar session_id: the id that was asked for.
    :ivar suggestions: ids of recent sessions, newest first.
    """

    def __init__(self, session_id: str, suggestions: Sequence[str] = ()) -> None:
        self.session_id = session_id
        self.suggestions = list(suggestions)
        message = f"no session with id {session_id!r} in this journal"
        if self.suggestions:
            listed = "\n".join(f"  {sid}" for sid in self.suggestions[:5])
            message += f"; recent sessions:\n{listed}"
        else:
            message += "; the journal has no sessions yet"
        super().__init__(message)

    def __str__(self) -> str:
        # LookupError (via KeyError-like formatting) would repr() the message otherwise.
        return str(self.args[0])


class SessionStateError(JournalError):
    """The session's current state does not allow the requested action."""


class UndoInProgressError(SessionStateError):
    """Another undo of the same session is running (in this or another live process)."""


class SessionTakenOverError(SessionStateError):
    """Another process took the session over: this one let its lease expire.

    Raised by a write of a session this process no longer holds (a journal shared across
    hosts, :class:`~retract.journal.storage.PostgresStorage`); the write did not happen.
    It means this process went longer than the lease without renewing it (a blocked
    event loop, a lost connection), and another process's ``recover()`` took over.
    """


class UndoError(RetractError):
    """An undo could not start or did not finish."""


class UnknownOperationTypeError(UndoError, LookupError):
    """Some operations of the session have no registered undo handler.

    Raised before anything is undone.

    :ivar missing: the operation types without a handler.
    :ivar registered: the types the registry knows.
    """

    def __init__(self, session_id: str, missing: Sequence[str], registered: Sequence[str]) -> None:
        self.session_id = session_id
        self.missing = sorted(missing)
        self.registered = sorted(registered)
        known = ", ".join(self.registered) or "none"
        super().__init__(
            f"cannot undo session {session_id}: no undo handler for operation type(s) "
            f"{', '.join(self.missing)} (registered: {known}); nothing was undone. "
            "Register a handler with OperationRegistry.register() or @registry.handler(), "
            "or pass --app module:registry to the CLI."
        )

    def __str__(self) -> str:
        return str(self.args[0])


class UndoFailedError(UndoError):
    """An undo handler raised; the undo stopped there (``on_error="stop"``).

    The handler's exception is the ``__cause__``. Running the undo again resumes at the
    failed operation; operations already UNDONE are never undone twice.

    :ivar report: the :class:`~retract.UndoReport` of the stopped run.
    :ivar op_id: the operation whose handler failed.
    """

    def __init__(self, message: str, *, report: UndoReport, op_id: str) -> None:
        super().__init__(message)
        self.report = report
        self.op_id = op_id


class UndoErrorGroup(ExceptionGroup[Exception], UndoError):  # noqa: N818  (named like ExceptionGroup)
    """Several undo handlers raised (``on_error="continue"``).

    :ivar op_ids: the failed operations' ids, aligned with :attr:`exceptions`.
    :ivar report: the :class:`~retract.UndoReport` of the run (set by the undo).
    """

    op_ids: tuple[str, ...]
    report: UndoReport | None

    def __new__(
        cls, message: str, exceptions: Sequence[Exception], op_ids: Sequence[str] = ()
    ) -> Self:
        group = super().__new__(cls, message, exceptions)
        group.op_ids = tuple(op_ids)
        group.report = None
        return group

    def __init__(
        self, message: str, exceptions: Sequence[Exception], op_ids: Sequence[str] = ()
    ) -> None:
        super().__init__(message, exceptions)

    def derive(self, excs: Sequence[Exception]) -> UndoErrorGroup:  # type: ignore[override]
        """Keep the operation ids of the exceptions that remain after ``except*``."""
        by_exc = {id(e): op for e, op in zip(self.exceptions, self.op_ids, strict=True)}
        derived = UndoErrorGroup(self.message, excs, [by_exc.get(id(e), "") for e in excs])
        derived.report = self.report
        return derived


class UndoSkipped(Exception):  # noqa: N818  (a signal, not an error)
    """Raised by an undo handler to mark its operation SKIPPED instead of UNDONE.

    Use it when the effect is already gone or must not be reverted; the reason is
    stored on the operation.
    """

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason)
        self.reason = reason


class FileOperationError(RetractError, OSError):
    """An atomic write or a reversible file operation could not be done as asked.

    Built like an :class:`OSError`: ``errno``, ``strerror`` (the message, which says what
    to do) and ``filename`` are set.
    """

    def __init__(self, errno: int, message: str, filename: str | None = None) -> None:
        super().__init__(errno, message, filename)

    def __str__(self) -> str:
        # OSError's "[Errno 17] message: 'path'" buries the advice; the message names
        # the path itself.
        return str(self.strerror)


class FileAlreadyExistsError(FileOperationError, FileExistsError):
    """The target exists and ``overwrite=False`` (the default); nothing was changed."""


class CrossDeviceError(FileOperationError):
    """Two paths that must be on one filesystem (a rename) are not; nothing was changed."""


class DurabilityError(FileOperationError):
    """The new content is in place, but syncing its directory failed.

    The rename happened, so readers see the new content now; whether it survives a power
    loss is unconfirmed. A failed sync is never retried (the kernel may have dropped the
    dirty state): check the disk, then write again if durability matters.
    """


class DriftError(FileOperationError):
    """Undo refused to touch a file that changed after the operation recorded it.

    :ivar changes: what differs, e.g. ``["size 10 -> 12", "sha256"]``.
    """

    def __init__(
        self, errno: int, message: str, filename: str | None, changes: Sequence[str]
    ) -> None:
        super().__init__(errno, message, filename)
        self.changes = list(changes)


class TrackingError(RetractError):
    """A tracked container (or its history or subscription) refused a request."""


class ContainerLockedError(TrackingError, RuntimeError):
    """The container is locked (``lock()``); call ``unlock()`` before changing it."""


class HistoryTruncatedError(TrackingError, LookupError):
    """The change asked for is older than the bounded history keeps.

    Create the container with a larger ``history=`` (None: unbounded) to look that far
    back.
    """

    def __str__(self) -> str:
        return str(self.args[0])


class SubscriberOverflowError(TrackingError):
    """A subscription with ``overflow="error"`` filled up; it ended with this error."""
