"""A throwaway PostgreSQL cluster for the tests, and the fixtures that hand it out.

``postgres_dsn`` (session scope) starts one cluster per test session: ``initdb`` in a
fresh temporary directory, the server on a free port of 127.0.0.1 only, with every
durability setting off (the data dies with the session anyway), trust authentication
for the superuser ``postgres`` and password authentication for the role ``retract_pw``
(:data:`PASSWORD_ROLE`, which a test creates when it wants it). The server runs as a
child of the test process (as the ``postgres`` user when the tests run as root, who
may not run ``initdb``); at the end it is stopped (``pg_ctl stop -m immediate``), reaped
and its directory deleted.

``postgres_url`` (function scope) is the URL of a database created for one test and
dropped after it: tests cannot see each other's journals.

Without the PostgreSQL server binaries, both skip (and say why). With
``RETRACT_TEST_POSTGRES_DSN`` set (the URL of a role allowed to create databases), that
server is used instead and nothing is started.
"""

from __future__ import annotations

import os
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Iterator

import asyncpg  # type: ignore[import-untyped]
import pytest

from tests._pg_cluster import FAST, find_binaries, start_cluster

__all__ = ("PASSWORD_ROLE", "database_url", "postgres_dsn", "postgres_url")

#: A role that must give a password (scram-sha-256) to connect over TCP.
PASSWORD_ROLE = "retract_pw"  # noqa: S105  (a role name)
_ENV_DSN = "RETRACT_TEST_POSTGRES_DSN"
_ENV_BIN = "RETRACT_TEST_POSTGRES_BIN"


def database_url(dsn: str, database: str) -> str:
    """``dsn`` naming another database."""
    parts = urllib.parse.urlsplit(dsn)
    return urllib.parse.urlunsplit(parts._replace(path="/" + urllib.parse.quote(database)))


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """A superuser URL of a PostgreSQL server for this test session (skip without one)."""
    external = os.environ.get(_ENV_DSN)
    if external:
        yield external
        return
    bin_dir = find_binaries(_ENV_BIN)
    if bin_dir is None:
        reason = (
            "PostgreSQL server binaries (initdb, postgres, pg_ctl) not found on PATH or in "
            f"/usr/lib/postgresql/*/bin; set {_ENV_BIN} or {_ENV_DSN} to run these tests"
        )
        print(reason)
        pytest.skip(reason)
    # first match wins: the password role must authenticate, everyone else is trusted
    rule = f"host all {PASSWORD_ROLE} 127.0.0.1/32 scram-sha-256\n"
    cluster = start_cluster(bin_dir, settings=FAST, hba_first=rule)
    _spare[cluster.dsn] = []
    try:
        yield cluster.dsn
    finally:
        _spare.pop(cluster.dsn, None)
        cluster.stop()


#: Databases of finished tests, cleaned for the next ones, per cluster of ours (a server
#: given by RETRACT_TEST_POSTGRES_DSN gets each one dropped instead). CREATE DATABASE
#: costs 50-300 ms here; cleaning a database costs a few.
_spare: dict[str, list[str]] = {}
_SCHEMAS = (
    "SELECT nspname FROM pg_namespace"
    " WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema'"
)
# Anything a drop of the schemas but public leaves behind: then the database is dropped.
_LEFTOVERS = """
SELECT (SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace)
     + (SELECT count(*) FROM pg_proc WHERE pronamespace = 'public'::regnamespace)
     + (SELECT count(*) FROM pg_type WHERE typnamespace = 'public'::regnamespace)
     + (SELECT count(*) FROM pg_extension WHERE extname <> 'plpgsql')
     + (SELECT count(*) FROM pg_event_trigger)
     + (SELECT count(*) FROM pg_db_role_setting AS s, pg_database AS d
        WHERE d.datname = current_database() AND s.setdatabase = d.oid)
     + (SELECT count(*) FROM pg_database
        WHERE datname = current_database() AND datacl IS NOT NULL)
"""


async def _clean(url: str) -> bool:
    """Empty a test's database for the next test; False if it cannot be made pristine."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        for (schema,) in await conn.fetch(_SCHEMAS):
            if schema != "public":
                await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        return int(await conn.fetchval(_LEFTOVERS)) == 0
    finally:
        await conn.close()


@pytest.fixture
async def postgres_url(postgres_dsn: str) -> AsyncIterator[str]:
    """The URL of an empty database of this test's own.

    Fresh (``CREATE DATABASE``) or one an earlier test used, emptied again: only the
    ``public`` schema, with nothing in it, no grants, settings or extensions.
    """
    spare = _spare.get(postgres_dsn)
    if spare:
        name = spare.pop()
    else:
        name = f"retract_test_{uuid.uuid4().hex[:16]}"
        admin = await asyncpg.connect(postgres_dsn)
        try:
            await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        finally:
            await admin.close()
    url = database_url(postgres_dsn, name)
    yield url
    if spare is not None and await _clean(url):
        spare.append(name)
        return
    admin = await asyncpg.connect(postgres_dsn)
    try:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()
