"""Storage backends of the journal, side by side behind one protocol."""

from ._memory import InMemoryStorage as InMemoryStorage
from ._protocol import NewOperation as NewOperation
from ._protocol import OperationUpdate as OperationUpdate
from ._protocol import Storage as Storage
from ._sqlite import SQLiteStorage as SQLiteStorage

__all__ = ("InMemoryStorage", "NewOperation", "OperationUpdate", "SQLiteStorage", "Storage")
