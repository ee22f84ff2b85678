"""The journal: sessions, operations, undo and recovery."""

from ._events import EventStream as EventStream
from ._events import JournalEvent as JournalEvent
from ._events import OperationsEvent as OperationsEvent
from ._events import SessionEvent as SessionEvent
from ._journal import Journal as Journal
from ._journal import open_journal as open_journal
from ._metrics import MetricsCollector as MetricsCollector
from ._records import FailedOperation as FailedOperation
from ._records import OperationRecord as OperationRecord
from ._records import OperationState as OperationState
from ._records import Owner as Owner
from ._records import SessionRecord as SessionRecord
from ._records import SessionStatus as SessionStatus
from ._records import UndoPlan as UndoPlan
from ._records import UndoReport as UndoReport
from ._registry import OperationFactory as OperationFactory
from ._registry import OperationRegistry as OperationRegistry
from ._registry import UndoableOperation as UndoableOperation
from ._registry import UndoHandler as UndoHandler
from ._session import Session as Session
from ._session import SessionContext as SessionContext
from ._session import Step as Step
from .storage import InMemoryStorage as InMemoryStorage
from .storage import SQLiteStorage as SQLiteStorage
from .storage import Storage as Storage

__all__ = (
    "EventStream",
    "FailedOperation",
    "InMemoryStorage",
    "Journal",
    "JournalEvent",
    "MetricsCollector",
    "OperationFactory",
    "OperationRecord",
    "OperationRegistry",
    "OperationState",
    "OperationsEvent",
    "Owner",
    "SQLiteStorage",
    "Session",
    "SessionContext",
    "SessionEvent",
    "SessionRecord",
    "SessionStatus",
    "Step",
    "Storage",
    "UndoHandler",
    "UndoPlan",
    "UndoReport",
    "UndoableOperation",
    "open_journal",
)
