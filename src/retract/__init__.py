"""retract: make destructive async work reversible.

The public face of the library; everything here is re-exported from private modules.
"""

from ._async import set_thread_limit as set_thread_limit
from ._errors import ContainerLockedError as ContainerLockedError
from ._errors import CrossDeviceError as CrossDeviceError
from ._errors import DriftError as DriftError
from ._errors import DurabilityError as DurabilityError
from ._errors import FileAlreadyExistsError as FileAlreadyExistsError
from ._errors import FileOperationError as FileOperationError
from ._errors import HistoryTruncatedError as HistoryTruncatedError
from ._errors import InvalidRecordError as InvalidRecordError
from ._errors import JournalBusyError as JournalBusyError
from ._errors import JournalClosedError as JournalClosedError
from ._errors import JournalError as JournalError
from ._errors import JournalOpenError as JournalOpenError
from ._errors import NotAJournalError as NotAJournalError
from ._errors import NotSerializableError as NotSerializableError
from ._errors import RetractError as RetractError
from ._errors import SchemaVersionError as SchemaVersionError
from ._errors import SessionNotFoundError as SessionNotFoundError
from ._errors import SessionStateError as SessionStateError
from ._errors import SessionTakenOverError as SessionTakenOverError
from ._errors import StorageError as StorageError
from ._errors import SubscriberOverflowError as SubscriberOverflowError
from ._errors import TrackingError as TrackingError
from ._errors import UndoError as UndoError
from ._errors import UndoErrorGroup as UndoErrorGroup
from ._errors import UndoFailedError as UndoFailedError
from ._errors import UndoInProgressError as UndoInProgressError
from ._errors import UndoSkipped as UndoSkipped
from ._errors import UnknownOperationTypeError as UnknownOperationTypeError
from ._reversible import reversible as reversible
from .fs import atomic_folder as atomic_folder
from .fs import atomic_write as atomic_write
from .fs import atomic_write_bytes as atomic_write_bytes
from .fs import atomic_write_text as atomic_write_text
from .integrations import current_session as current_session
from .journal import EventStream as EventStream
from .journal import FailedOperation as FailedOperation
from .journal import InMemoryStorage as InMemoryStorage
from .journal import Journal as Journal
from .journal import JournalEvent as JournalEvent
from .journal import MetricsCollector as MetricsCollector
from .journal import OperationFactory as OperationFactory
from .journal import OperationRecord as OperationRecord
from .journal import OperationRegistry as OperationRegistry
from .journal import OperationsEvent as OperationsEvent
from .journal import OperationState as OperationState
from .journal import Owner as Owner
from .journal import Session as Session
from .journal import SessionEvent as SessionEvent
from .journal import SessionRecord as SessionRecord
from .journal import SessionStatus as SessionStatus
from .journal import SQLiteStorage as SQLiteStorage
from .journal import Step as Step
from .journal import Storage as Storage
from .journal import UndoableOperation as UndoableOperation
from .journal import UndoHandler as UndoHandler
from .journal import UndoPlan as UndoPlan
from .journal import UndoReport as UndoReport
from .journal import open_journal as open_journal
from .tracking import Change as Change
from .tracking import ChangeCollector as ChangeCollector
from .tracking import Subscription as Subscription
from .tracking import TrackedAttr as TrackedAttr
from .tracking import TrackedDict as TrackedDict
from .tracking import TrackedList as TrackedList
from .tracking import TrackedSet as TrackedSet
from .tracking import async_queue_observer as async_queue_observer
from .tracking import tracking_actor as tracking_actor

__version__ = "0.1.0.dev0"

__all__ = (
    "Change",
    "ChangeCollector",
    "ContainerLockedError",
    "CrossDeviceError",
    "DriftError",
    "DurabilityError",
    "EventStream",
    "FailedOperation",
    "FileAlreadyExistsError",
    "FileOperationError",
    "HistoryTruncatedError",
    "InMemoryStorage",
    "InvalidRecordError",
    "Journal",
    "JournalBusyError",
    "JournalClosedError",
    "JournalError",
    "JournalEvent",
    "JournalOpenError",
    "MetricsCollector",
    "NotAJournalError",
    "NotSerializableError",
    "OperationFactory",
    "OperationRecord",
    "OperationRegistry",
    "OperationState",
    "OperationsEvent",
    "Owner",
    "RetractError",
    "SQLiteStorage",
    "SchemaVersionError",
    "Session",
    "SessionEvent",
    "SessionNotFoundError",
    "SessionRecord",
    "SessionStateError",
    "SessionStatus",
    "SessionTakenOverError",
    "Step",
    "Storage",
    "StorageError",
    "SubscriberOverflowError",
    "Subscription",
    "TrackedAttr",
    "TrackedDict",
    "TrackedList",
    "TrackedSet",
    "TrackingError",
    "UndoError",
    "UndoErrorGroup",
    "UndoFailedError",
    "UndoHandler",
    "UndoInProgressError",
    "UndoPlan",
    "UndoReport",
    "UndoSkipped",
    "UndoableOperation",
    "UnknownOperationTypeError",
    "__version__",
    "async_queue_observer",
    "atomic_folder",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "current_session",
    "open_journal",
    "reversible",
    "set_thread_limit",
    "tracking_actor",
)


def __getattr__(name: str) -> object:
    # PostgresStorage needs asyncpg (the ``postgres`` extra): imported on first use only.
    if name == "PostgresStorage":
        from .journal.storage._postgres import PostgresStorage  # noqa: PLC0415

        return PostgresStorage
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
