"""A throwaway Redis server on loopback for the task-runner integrations' tests.

Each test module that needs one gets its own ``redis-server`` process (the module-scoped
``redis_url`` fixture): on a free 127.0.0.1 port, with persistence off, in a temporary
folder, stopped (and reaped) when the module's tests are done. Import the fixture
function into the test module to use it::

    from tests.integrations._redis import redis_server_url  # noqa: F401 (the redis_url fixture)

Debian's ``redis-server`` package provides the binary; without it the tests skip.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import free_port, stop_process

#: Why the Redis tests skip when there is no server binary.
NO_REDIS = "redis-server is not installed: apt-get install redis-server"

#: Seconds a starting server may take to answer PING (it takes milliseconds).
START_WITHIN = 15.0


@dataclass
class RedisServer:
    """A running ``redis-server`` process listening on 127.0.0.1."""

    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        """The server's ``redis://`` URL (database 0)."""
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        """Terminate the server (kill it if it lingers) and reap it."""
        stop_process(self.process)


def redis_binary() -> str | None:
    """The path of ``redis-server`` on PATH (or Debian's location), or None."""
    found = shutil.which("redis-server")
    if found is None and Path("/usr/bin/redis-server").is_file():
        found = "/usr/bin/redis-server"
    return found


def start_redis(binary: str, folder: Path, *, attempts: int = 5) -> RedisServer:
    """Start ``binary`` on a free loopback port in ``folder``; wait until it answers PING.

    Another process may take the port between choosing it and the server binding it:
    then the server exits, and another port is tried, up to ``attempts`` times.
    """
    failure = "not started"
    for attempt in range(attempts):
        port = free_port()
        log = folder / f"redis-{attempt}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [
                    binary,
                    "--port",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--daemonize",
                    "no",
                    "--dir",
                    str(folder),
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=folder,
            )
        server = RedisServer(port, process, log)
        if _wait_ready(server):
            return server
        server.stop()
        failure = log.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"redis-server did not start after {attempts} tries:\n{failure}")


@contextmanager
def running_redis(folder: Path) -> Iterator[RedisServer]:
    """A Redis server for the block (skipping the test if there is no binary)."""
    binary = redis_binary()
    if binary is None:
        pytest.skip(NO_REDIS)
    server = start_redis(binary, folder)
    try:
        yield server
    finally:
        server.stop()


def _wait_ready(server: RedisServer) -> bool:
    """Whether the server answers PING before START_WITHIN (False if it exited)."""
    deadline = time.monotonic() + START_WITHIN
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=0.5) as conn:
                conn.sendall(b"PING\r\n")
                if conn.recv(64).startswith(b"+PONG"):
                    return True
        except OSError:
            pass
        time.sleep(0.02)
    return False


@pytest.fixture(name="redis_url", scope="module")
def redis_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a Redis server of the test module's own, stopped after its tests."""
    with running_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server.url
