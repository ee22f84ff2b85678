"""The conformance suite's storages: SQLite, in-memory and PostgreSQL.

The PostgreSQL cases get a fresh database each (``tests/_postgres.py``) and skip when
no PostgreSQL server can be started.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from retract import InMemoryStorage, SQLiteStorage, Storage
from retract.journal.storage._postgres import PostgresStorage
from tests._postgres import postgres_dsn, postgres_url  # noqa: F401  (fixtures)
from tests.helpers import StorageFactory


@pytest.fixture(params=["sqlite", "memory", "postgres"])
def storage_factory(request: pytest.FixtureRequest, tmp_path: Path) -> StorageFactory:
    """A callable making a fresh storage of each kind (the conformance parameter)."""
    counter = iter(range(1_000_000))
    if request.param == "postgres":
        url: str = request.getfixturevalue("postgres_url")  # only here: it may skip
        return lambda: PostgresStorage(url)

    def make() -> Storage:
        if request.param == "memory":
            return InMemoryStorage()
        return SQLiteStorage(tmp_path / f"journal-{next(counter)}.db")

    return make
