"""An arq job fails its first try: that try is rolled back, and the retry's file is kept.

Run: ``uv run python examples/arq_worker.py``. It needs a ``redis-server`` binary
(Debian: ``apt-get install redis-server``): the example starts its own server on a free
loopback port, with persistence off, in a temporary folder, and stops it at the end.

The worker opens the journal in ``on_startup``; ``@reversible_job`` runs each try of
the job in a session. The first try writes its export, then its upload "times out" and
it raises ``Retry``: the session is undone (the file is removed) before arq runs the
job again. The second try writes its own export and completes. In production the
worker runs as ``arq examples.arq_worker.WorkerSettings`` against your Redis server.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from arq import Retry
from arq.connections import RedisSettings, create_pool
from arq.cron import CronJob
from arq.typing import StartupShutdown, WorkerCoroutine
from arq.worker import Function, Worker, create_worker

from retract import open_journal
from retract.integrations.arq import job_session, reversible_job

JOURNAL = "jobs.db"


async def startup(ctx: dict[Any, Any]) -> None:
    ctx["journal"] = await open_journal(Path(ctx["workdir"]) / JOURNAL).open()


async def shutdown(ctx: dict[Any, Any]) -> None:
    await ctx["journal"].aclose()


@reversible_job(lambda ctx: ctx["journal"])
async def export_report(ctx: dict[Any, Any], month: str) -> str:
    """Write the month's export; the first try's upload fails and asks for a retry."""
    job_try = ctx["job_try"]
    path = Path(ctx["workdir"]) / "exports" / f"{month}.try{job_try}.csv"
    await job_session(ctx).fs.write_text(path, f"rows exported by try {job_try}\n")
    print(f"try {job_try}: wrote exports/{path.name}")
    if job_try == 1:
        print("try 1: the upload timed out; asking arq to run the job again")
        raise Retry(defer=0.1)
    return path.name


class WorkerSettings:
    """What ``arq`` reads to make the worker (typed as arq's settings protocol wants)."""

    functions: Sequence[WorkerCoroutine | Function] = (export_report,)
    cron_jobs: Sequence[CronJob] | None = None
    on_startup: StartupShutdown | None = startup
    on_shutdown: StartupShutdown | None = shutdown


async def run(redis_url: str, workdir: Path) -> None:
    (workdir / "exports").mkdir()
    settings = RedisSettings.from_dsn(redis_url)
    redis = await create_pool(settings)
    try:
        job = await redis.enqueue_job("export_report", "march")
        if job is None:
            raise SystemExit("arq did not enqueue the job")
        worker = create_worker(
            WorkerSettings,
            redis_settings=settings,
            ctx={"workdir": str(workdir)},
            burst=True,  # run the queued jobs (retries included), then return
            handle_signals=False,
            poll_delay=0.05,
        )
        try:
            await worker.async_run()
        finally:
            await close(worker)
        print("job result:", await job.result(timeout=10))
    finally:
        await redis.aclose(close_connection_pool=True)

    async with open_journal(workdir / JOURNAL) as journal:
        for session in reversed(await journal.list_sessions()):
            error = f" ({session.error})" if session.error else ""
            print(f"session of try {session.context['job_try']}: {session.status.value}{error}")
    print("files in exports/:", sorted(p.name for p in (workdir / "exports").iterdir()))


async def close(worker: Worker) -> None:
    """``Worker.close()``, minus redis-py's deprecated ``close()`` that arq 0.28 calls."""
    if worker.on_shutdown is not None:
        await worker.on_shutdown(worker.ctx)
    await worker.pool.aclose(close_connection_pool=True)


# -- a throwaway redis-server on loopback ---------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def start_redis(binary: str, folder: Path) -> tuple[subprocess.Popen[bytes], int]:
    """Start redis-server on a free loopback port (another one if it was taken)."""
    for _ in range(5):
        port = free_port()
        server = subprocess.Popen(
            [
                *(binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""),
                *("--appendonly", "no", "--daemonize", "no", "--dir", str(folder)),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 15
        while server.poll() is None and time.monotonic() < deadline:
            if answers_ping(port):
                return server, port
            time.sleep(0.02)
        stop_redis(server)
    raise SystemExit("redis-server did not start")


def stop_redis(server: subprocess.Popen[bytes]) -> None:
    if server.poll() is None:
        server.terminate()
        try:
            server.wait(5)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(5)


def main() -> None:
    binary = shutil.which("redis-server")
    if binary is None:
        print("redis-server is not installed (apt-get install redis-server): nothing to run")
        return
    # arq logs every job at INFO; show only its warnings and errors, on stdout.
    logging.basicConfig(stream=sys.stdout, level=logging.WARNING, format="arq: %(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        server, port = start_redis(binary, Path(tmp))
        try:
            asyncio.run(run(f"redis://127.0.0.1:{port}/0", Path(tmp)))
        finally:
            stop_redis(server)
    print("redis-server stopped")


if __name__ == "__main__":
    main()
