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

import atexit
import contextlib
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest

__all__ = (
    "PASSWORD_ROLE",
    "Cluster",
    "database_url",
    "find_binaries",
    "postgres_dsn",
    "postgres_url",
    "start_cluster",
)

#: A role that must give a password (scram-sha-256) to connect over TCP.
PASSWORD_ROLE = "retract_pw"  # noqa: S105  (a role name)
_ENV_DSN = "RETRACT_TEST_POSTGRES_DSN"
_ENV_BIN = "RETRACT_TEST_POSTGRES_BIN"
_PROGRAMS = ("initdb", "postgres", "pg_ctl")
_START_TIMEOUT = 30.0
_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
    "log_min_messages": "warning",
}


def find_binaries() -> Path | None:
    """The directory of ``initdb``, ``postgres`` and ``pg_ctl``, newest version first."""
    candidates: list[Path] = []
    if os.environ.get(_ENV_BIN):
        candidates.append(Path(os.environ[_ENV_BIN]))
    if (initdb := shutil.which("initdb")) is not None:
        candidates.append(Path(initdb).resolve().parent)

    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", path.parent.name))

    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    for directory in candidates:
        if all(os.access(directory / name, os.X_OK) for name in _PROGRAMS):
            return directory
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def database_url(dsn: str, database: str) -> str:
    """``dsn`` naming another database."""
    parts = urllib.parse.urlsplit(dsn)
    return urllib.parse.urlunsplit(parts._replace(path="/" + urllib.parse.quote(database)))


@dataclass
class Cluster:
    """A running throwaway cluster; :meth:`stop` ends it and removes its files."""

    root: Path
    bin_dir: Path
    port: int
    process: subprocess.Popen[bytes]
    run_as: dict[str, Any] = field(default_factory=dict)
    stopped: bool = False

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def dsn(self) -> str:
        """The superuser's URL on the maintenance database."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        """Stop the server at once (no checkpoint), reap it, delete the directory."""
        if self.stopped:
            return
        self.stopped = True
        try:
            if self.process.poll() is None:
                subprocess.run(
                    [self.bin_dir / "pg_ctl", "stop", "-D", self.data, "-m", "immediate", "-w"],
                    cwd=self.root,
                    capture_output=True,
                    timeout=30,
                    check=False,
                    **self.run_as,
                )
                try:
                    self.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(timeout=10)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def _run_as() -> dict[str, Any]:
    """Popen arguments to run the server as ``postgres`` when we are root."""
    if os.geteuid() != 0:
        return {}
    import pwd  # noqa: PLC0415  (POSIX only, and only needed as root)

    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        raise RuntimeError(
            "the tests run as root, which may not run initdb, and there is no 'postgres' "
            "user to run the server as: create one, or run the tests as another user"
        ) from None
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


def start_cluster(bin_dir: Path) -> Cluster:
    """Create and start a cluster in a fresh temporary directory; wait until it is ready."""
    run_as = _run_as()
    root = Path(tempfile.mkdtemp(prefix="retract-pg-"))
    try:
        if run_as:
            os.chown(root, run_as["user"], run_as["group"])
        data = root / "data"
        initdb = [str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"]
        subprocess.run(
            [*initdb, "--no-sync", "-E", "UTF8", "--locale=C"],
            cwd=root,
            capture_output=True,
            check=True,
            timeout=120,
            **run_as,
        )
        hba = data / "pg_hba.conf"
        # first match wins: the password role must authenticate, everyone else is trusted
        rules = f"host all {PASSWORD_ROLE} 127.0.0.1/32 scram-sha-256\n"
        hba.write_text(rules + hba.read_text())
        for _ in range(5):  # another program may take the free port before the server does
            cluster = _start_server(root, bin_dir, _free_port(), run_as)
            if cluster is not None:
                return cluster
        raise RuntimeError(f"PostgreSQL did not start: see {root / 'server.log'}")
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise


def _start_server(root: Path, bin_dir: Path, port: int, run_as: dict[str, Any]) -> Cluster | None:
    """Start the server on ``port``; None if the port was taken meanwhile."""
    settings = {**_SETTINGS, "port": str(port), "unix_socket_directories": str(root)}
    options = [arg for name, value in settings.items() for arg in ("-c", f"{name}={value}")]
    log = root / "server.log"
    with log.open("ab") as sink:
        if run_as:
            os.chown(log, run_as["user"], run_as["group"])
        process = subprocess.Popen(
            [bin_dir / "postgres", "-D", root / "data", *options],
            cwd=root,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C of the tests is not sent to the server
            **run_as,
        )
    cluster = Cluster(root, bin_dir, port, process, run_as)
    atexit.register(cluster.stop)  # if the session ends without its finalizers
    pid_file = root / "data" / "postmaster.pid"
    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            cluster.stopped = True
            text = log.read_text(errors="replace")
            if "could not bind" in text or "already in use" in text:
                return None
            raise RuntimeError(f"PostgreSQL exited at start:\n{text}")
        with contextlib.suppress(OSError):
            lines = pid_file.read_text().splitlines()
            if len(lines) >= 8 and lines[7].strip() == "ready":  # what pg_ctl -w waits for
                return cluster
        time.sleep(0.02)
    cluster.stop()
    raise RuntimeError(f"PostgreSQL was not ready after {_START_TIMEOUT:g}s")


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """A superuser URL of a PostgreSQL server for this test session (skip without one)."""
    external = os.environ.get(_ENV_DSN)
    if external:
        yield external
        return
    bin_dir = find_binaries()
    if bin_dir is None:
        reason = (
            "PostgreSQL server binaries (initdb, postgres, pg_ctl) not found on PATH or in "
            f"/usr/lib/postgresql/*/bin; set {_ENV_BIN} or {_ENV_DSN} to run these tests"
        )
        print(reason)
        pytest.skip(reason)
    cluster = start_cluster(bin_dir)
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
