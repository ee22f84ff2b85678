"""Storage backends of the journal, side by side behind one protocol."""

from typing import TYPE_CHECKING

from ._memory import InMemoryStorage as InMemoryStorage
from ._protocol import LeaseStorage as LeaseStorage
from ._protocol import NewOperation as NewOperation
from ._protocol import OperationUpdate as OperationUpdate
from ._protocol import Storage as Storage
from ._protocol import WatchStorage as WatchStorage
from ._sqlite import SQLiteStorage as SQLiteStorage

if TYPE_CHECKING:  # at run time: on first use, through __getattr__ below
    from ._postgres import PostgresStorage as PostgresStorage

__all__ = (
    "InMemoryStorage",
    "LeaseStorage",
    "NewOperation",
    "OperationUpdate",
    "SQLiteStorage",
    "Storage",
    "WatchStorage",
)


def __getattr__(name: str) -> object:
    # PostgresStorage needs asyncpg (the ``postgres`` extra): imported on first use only.
    if name == "PostgresStorage":
        from ._postgres import PostgresStorage  # noqa: PLC0415

        return PostgresStorage
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def is_postgres_url(location: object) -> bool:
    """Whether ``location`` names a PostgreSQL journal (``postgresql://...``)."""
    return isinstance(location, str) and location.startswith(("postgresql://", "postgres://"))
