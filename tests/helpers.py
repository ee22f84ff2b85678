"""Helpers shared by several test modules."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import pytest

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


@dataclass(slots=True)
class WorkerProcess:
    """A running worker process of a multi-process test and where its output goes."""

    name: str
    popen: subprocess.Popen[bytes]
    out: Path
    err: Path
    seed: int  # named in every failure, to rerun with ``RETRACT_SEED``
    wait_limit: float  # guards ``finish`` against a hang; never an assertion about speed
    host: str = ""  # the host the worker pretends to run on (its ``host`` config), if any
    label: str = ""  # put before the name in ``describe`` ("worker ")

    def describe(self) -> str:
        """Who the process is, how it ended and everything it wrote."""
        return (
            f"{self.label}{self.name} (pid {self.popen.pid}, returncode {self.popen.returncode}):\n"
            f"stdout:\n{self.out.read_text(errors='replace')}\n"
            f"stderr:\n{self.err.read_text(errors='replace')}"
        )

    async def finish(self) -> None:
        """Wait for a clean exit; fail with the process's output otherwise."""
        returncode = await asyncio.to_thread(self.popen.wait, self.wait_limit)
        assert returncode == 0, f"seed {self.seed}: {self.describe()}"


class WorkerProcesses:
    """Starts worker processes of ``script``; on exit kills and reaps those still running.

    Each worker runs ``sys.executable script <json config>`` with ``directory`` as its
    ``dir`` and writes its stdout and stderr to ``<name>.out`` and ``<name>.err`` there.
    Use it as a context manager around a fixture's ``yield``.
    """

    def __init__(
        self,
        script: Path,
        directory: Path,
        *,
        seed: int,
        wait_limit: float,
        config: Mapping[str, Any] | None = None,
        label: str = "",
    ) -> None:
        """Workers get ``seed`` and ``config`` in their config; ``label`` names them."""
        self.script = script
        self.directory = directory
        self.seed = seed
        self.wait_limit = wait_limit
        self.config: dict[str, Any] = dict(config or {})
        self.label = label
        self.started: list[WorkerProcess] = []

    def __call__(self, mode: str, name: str, **config: Any) -> WorkerProcess:
        """Start worker ``name`` in ``mode``; ``config`` adds to (or overrides) the shared one."""
        full = {
            "mode": mode,
            "name": name,
            "dir": str(self.directory),
            "seed": self.seed,
            **self.config,
            **config,
        }
        out, err = self.directory / f"{name}.out", self.directory / f"{name}.err"
        with out.open("wb") as out_file, err.open("wb") as err_file:
            popen = subprocess.Popen(
                [sys.executable, str(self.script), json.dumps(full)],
                stdout=out_file,
                stderr=err_file,
            )
        worker = WorkerProcess(
            name,
            popen,
            out,
            err,
            self.seed,
            self.wait_limit,
            host=str(full.get("host", "")),
            label=self.label,
        )
        self.started.append(worker)
        return worker

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Kill every worker still running, then reap them all."""
        for worker in self.started:
            if worker.popen.poll() is None:
                worker.popen.kill()
        for worker in self.started:
            worker.popen.wait()


async def wait_until(
    what: str,
    ready: Callable[[], bool],
    *watched: WorkerProcess,
    seed: int,
    wait_limit: float,
    interval: float,
) -> None:
    """Poll ``ready()`` every ``interval`` s; fail if a watched process exits meanwhile.

    Fails too after ``wait_limit`` seconds (a guard against a hang, not about speed).
    """
    deadline = time.monotonic() + wait_limit
    while not ready():
        for worker in watched:
            if worker.popen.poll() is not None:
                pytest.fail(f"seed {seed}: exited before {what}: {worker.describe()}")
        if time.monotonic() > deadline:
            pytest.fail(f"seed {seed}: still waiting for {what} after {wait_limit:g} s")
        await asyncio.sleep(interval)
