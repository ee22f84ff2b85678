"""Fixtures shared by the whole suite."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from retract import InMemoryStorage, Journal, SQLiteStorage, Storage
from tests.helpers import StorageFactory


@pytest.fixture(params=["sqlite", "memory"])
def storage_factory(request: pytest.FixtureRequest, tmp_path: Path) -> StorageFactory:
    """A callable making a fresh storage of each kind (the conformance parameter)."""
    counter = iter(range(1_000_000))

    def make() -> Storage:
        if request.param == "memory":
            return InMemoryStorage()
        return SQLiteStorage(tmp_path / f"journal-{next(counter)}.db")

    return make


@pytest.fixture
async def journal(storage_factory: StorageFactory) -> AsyncIterator[Journal]:
    """An open journal on each storage kind."""
    async with Journal(storage_factory()) as opened:
        yield opened
