"""Helpers shared by several test modules."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import threading
from collections.abc import Callable

from retract import Storage

#: Makes a fresh storage (the ``storage_factory`` fixture of tests/conftest.py).
StorageFactory = Callable[[], Storage]


def sqlite_threads() -> list[threading.Thread]:
    """The aiosqlite connection threads alive right now (each open connection has one)."""
    return [t for t in threading.enumerate() if "_connection_worker_thread" in t.name]


async def wait_for_sqlite_threads(count: int) -> None:
    """Wait (briefly) until at most ``count`` aiosqlite threads are alive, else fail.

    "At most": threads of journals closed by earlier tests may still be ending.
    """
    for _ in range(200):
        if len(sqlite_threads()) <= count:
            return
        await asyncio.sleep(0.01)
    assert len(sqlite_threads()) <= count, sqlite_threads()


def free_port() -> int:
    """A loopback port nothing listens on (bound and released just now)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """Terminate a test server (kill it if it lingers) and reap it."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
