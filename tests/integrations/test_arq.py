"""arq: a session per try of a job, against a real Redis server and real arq workers.

The jobs are module-level functions, so that a worker in a child process (the killed
worker of the retry tests) can import them too.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Sequence
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest
from arq import Retry, Worker
from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.constants import in_progress_key_prefix
from arq.jobs import Job
from arq.typing import WorkerCoroutine
from arq.worker import Function

from retract import Journal, OperationRecord, OperationRegistry, SessionStatus, current_session
from retract.integrations.arq import (
    EarlierTryRunningError,
    job_session,
    reversible_job,
    undo_earlier_tries,
)
from retract.journal._owner import active
from retract.testing import assert_completed, assert_no_session_running, assert_rolled_back
from tests.integrations._redis import redis_server_url  # noqa: F401  (the redis_url fixture)

ROOT = Path(__file__).parent.parent.parent

#: Seconds a worker run may take before the test fails (each takes well under one).
RUN_WITHIN = 60.0


class Declined(Exception):
    """The payment was declined (on purpose)."""


def journal_of(ctx: dict[Any, Any]) -> Journal:
    journal: Journal = ctx["journal"]
    return journal


@reversible_job(journal_of)
async def write_file(ctx: dict[Any, Any], folder: str, name: str) -> str:
    """Write ``name`` and succeed."""
    assert current_session() is job_session(ctx)
    await job_session(ctx).fs.write_text(Path(folder) / name, f"try {ctx['job_try']}")
    return name


@reversible_job(journal_of)
async def write_then_fail(ctx: dict[Any, Any], folder: str) -> None:
    """Write a receipt, then fail for good (arq does not retry a plain exception)."""
    await current_session().fs.write_text(Path(folder) / "receipt.txt", "paid")
    raise Declined("card declined")


@reversible_job(journal_of)
async def retry_once(ctx: dict[Any, Any], folder: str) -> int:
    """Write ``try-N.txt``; ask arq for another try on the first."""
    job_try: int = ctx["job_try"]
    await job_session(ctx).fs.write_text(Path(folder) / f"try-{job_try}.txt", f"try {job_try}")
    if job_try == 1:
        raise Retry(defer=0)
    return job_try


@reversible_job(journal_of)
async def hang_on_first_try(ctx: dict[Any, Any], folder: str) -> int:
    """Write ``try-N.txt``; on the first try, say so and hang (to be killed)."""
    job_try: int = ctx["job_try"]
    await job_session(ctx).fs.write_text(Path(folder) / f"try-{job_try}.txt", f"try {job_try}")
    if job_try == 1:
        print("hanging", flush=True)
        await asyncio.Event().wait()
    return job_try


#: Whether the undo handler of ``test.flaky`` fails (the first time it runs).
flaky_undo = {"fail": True}


@reversible_job(journal_of)
async def undo_fails_on_first_try(ctx: dict[Any, Any], folder: str) -> int:
    """Write ``try-N.txt`` and journal a step whose undo fails once; retry the first try."""
    job_try: int = ctx["job_try"]
    session = job_session(ctx)
    await session.fs.write_text(Path(folder) / f"try-{job_try}.txt", f"try {job_try}")
    await session.record_operation("test.flaky", {"try": job_try})
    if job_try == 1:
        raise Retry(defer=0)
    return job_try


async def undo_flaky(op: OperationRecord) -> None:
    if flaky_undo["fail"]:
        flaky_undo["fail"] = False
        raise OSError("the remote side is down")


@pytest.fixture
async def arq_pool(redis_url: str) -> AsyncIterator[ArqRedis]:
    """A connection to the module's Redis server, emptied for the test."""
    pool = await create_pool(RedisSettings.from_dsn(redis_url))
    await pool.flushall()
    try:
        yield pool
    finally:
        await pool.aclose(close_connection_pool=True)


async def run_worker(
    redis_url: str, journal: Journal, functions: Sequence[Function | WorkerCoroutine]
) -> Worker:
    """Run an arq worker in burst mode (every queued job, retries included), then close it.

    Closed by hand: ``Worker.close()`` calls redis-py's deprecated ``close()``.
    """

    async def startup(ctx: dict[Any, Any]) -> None:
        ctx["journal"] = journal

    worker = Worker(
        functions=functions,
        redis_settings=RedisSettings.from_dsn(redis_url),
        burst=True,
        on_startup=startup,
        handle_signals=False,
        poll_delay=0.05,
    )
    try:
        await asyncio.wait_for(worker.async_run(), RUN_WITHIN)
    finally:
        await worker.pool.aclose(close_connection_pool=True)
    return worker


async def sessions_by_try(journal: Journal, job: Job) -> dict[int, str]:
    """The job's sessions: try number -> session id."""
    found: dict[int, str] = {}
    for record in await journal.list_sessions():
        if record.context.get("job_id") == job.job_id:
            found[record.context["job_try"]] = record.session_id
    return found


async def test_a_job_that_succeeds_keeps_its_file_and_completes(
    retract_journal: Journal, redis_url: str, arq_pool: ArqRedis, tmp_path: Path
) -> None:
    """The try's session completes; its context names the job, the try and the function."""
    job = await arq_pool.enqueue_job("write_file", str(tmp_path), "out.txt")
    assert job is not None
    async with retract_journal as journal:
        worker = await run_worker(redis_url, journal, [write_file])
        assert (worker.jobs_complete, worker.jobs_failed) == (1, 0)
        record = await assert_completed(journal)
        info = await job.info()
        assert info is not None
        assert record.context == {
            "integration": "arq",
            "job_id": job.job_id,
            "job_try": 1,
            "enqueue_time": info.enqueue_time.astimezone(UTC).isoformat(),
            "function": "write_file",
        }
    assert await job.result(timeout=5) == "out.txt"
    assert (tmp_path / "out.txt").read_text() == "try 1"


async def test_a_failing_job_is_rolled_back_and_arq_records_the_error(
    retract_journal: Journal, redis_url: str, arq_pool: ArqRedis, tmp_path: Path
) -> None:
    """The receipt written before the failure is removed; arq sees the original exception."""
    job = await arq_pool.enqueue_job("write_then_fail", str(tmp_path))
    assert job is not None
    async with retract_journal as journal:
        worker = await run_worker(redis_url, journal, [write_then_fail])
        assert (worker.jobs_complete, worker.jobs_failed) == (0, 1)
        record = await assert_rolled_back(journal)
        assert record.error == "Declined: card declined"
        await assert_no_session_running(journal)
    result = await job.result_info()
    assert result is not None
    assert not result.success
    assert isinstance(result.result, Declined)
    assert not (tmp_path / "receipt.txt").exists()


async def test_a_retried_job_rolls_back_its_first_try_and_keeps_the_second(
    retract_journal: Journal, redis_url: str, arq_pool: ArqRedis, tmp_path: Path
) -> None:
    """``Retry`` rolls the first try back; the second try's file stays."""
    job = await arq_pool.enqueue_job("retry_once", str(tmp_path))
    assert job is not None
    async with retract_journal as journal:
        worker = await run_worker(redis_url, journal, [retry_once])
        assert (worker.jobs_retried, worker.jobs_complete) == (1, 1)
        tries = await sessions_by_try(journal, job)
        assert sorted(tries) == [1, 2]
        first = await assert_rolled_back(journal, tries[1])
        assert first.error is not None
        assert first.error.startswith("Retry:")
        await assert_completed(journal, tries[2])
    assert await job.result(timeout=5) == 2
    assert sorted(p.name for p in tmp_path.glob("try-*.txt")) == ["try-2.txt"]


async def test_a_retry_finishes_the_failed_undo_of_the_try_before(
    retract_journal: Journal,
    retract_registry: OperationRegistry,
    redis_url: str,
    arq_pool: ArqRedis,
    tmp_path: Path,
) -> None:
    """Try 1's automatic undo fails (partially rolled back); try 2 completes it first."""
    retract_registry.handler("test.flaky")(undo_flaky)
    flaky_undo["fail"] = True
    job = await arq_pool.enqueue_job("undo_fails_on_first_try", str(tmp_path))
    assert job is not None
    async with retract_journal as journal:
        await run_worker(redis_url, journal, [undo_fails_on_first_try])
        tries = await sessions_by_try(journal, job)
        first = await assert_rolled_back(journal, tries[1])
        assert first.undo_count == 2  # the failed automatic undo, then the retry's
        await assert_completed(journal, tries[2])
    assert sorted(p.name for p in tmp_path.glob("try-*.txt")) == ["try-2.txt"]


#: The child process: a worker (here, or "on another host") that runs try 1 and hangs.
CHILD = """
import socket, sys
if sys.argv[4]:
    socket.gethostname = lambda: sys.argv[4]
from tests.integrations.test_arq import run_doomed_worker
run_doomed_worker(sys.argv[1], sys.argv[2], sys.argv[3])
"""


def run_doomed_worker(redis_url: str, journal_path: str, folder: str) -> None:
    """In the child process: run a worker until the parent kills it (mid try 1)."""
    from retract import open_journal  # noqa: PLC0415  (the child's own journal)

    async def main() -> None:
        async with open_journal(journal_path) as journal:
            await run_worker(redis_url, journal, [hang_on_first_try])

    asyncio.run(main())


@pytest.mark.parametrize("host", ["", "other-host"], ids=["this-host", "another-host"])
async def test_a_try_left_running_by_a_killed_worker_is_undone_before_the_next(
    retract_journal: Journal, redis_url: str, arq_pool: ArqRedis, tmp_path: Path, host: str
) -> None:
    """A worker is SIGKILLed mid try 1 (session RUNNING); try 2 rolls it back, then runs.

    On this host the dead pid is seen and the session taken over; from "another host"
    its liveness cannot be checked, and arq's expired in-progress key vouches for it.
    """
    folder = tmp_path / "work"
    folder.mkdir()
    job = await arq_pool.enqueue_job("hang_on_first_try", str(folder))
    assert job is not None
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD,
        redis_url,
        retract_journal.storage.location,
        str(folder),
        host,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        line = await asyncio.wait_for(child.stdout.readline(), RUN_WITHIN)
    finally:
        if child.returncode is None:
            child.kill()
        _, stderr = await child.communicate()
    assert line == b"hanging\n", stderr.decode(errors="replace")
    assert (folder / "try-1.txt").exists()
    # What arq waits for (the job's timeout plus 10 s) before another worker may run it.
    assert await arq_pool.delete(in_progress_key_prefix + job.job_id) == 1

    async with retract_journal as journal:
        (left,) = await journal.list_sessions()
        assert left.status is SessionStatus.RUNNING
        assert left.owner is not None
        assert left.owner.host == (host or left.owner.host)
        worker = await run_worker(redis_url, journal, [hang_on_first_try])
        assert worker.jobs_complete == 1
        tries = await sessions_by_try(journal, job)
        first = await assert_rolled_back(journal, tries[1])
        assert first.session_id == left.session_id
        if host:
            assert first.error is not None
            assert "arq started try 2" in first.error
        await assert_completed(journal, tries[2])
    assert await job.result(timeout=5) == 2
    assert sorted(p.name for p in folder.glob("try-*.txt")) == ["try-2.txt"]


async def test_an_earlier_try_still_running_here_is_refused(
    retract_journal: Journal, tmp_path: Path
) -> None:
    """A try 1 that this process still runs is not undone under it: try 2 is refused."""
    async with retract_journal as journal:
        running = journal.start_session(
            integration="arq", job_id="j1", job_try=1, enqueue_time=None, function="f"
        )
        session = await running.__aenter__()
        try:
            await session.fs.write_text(tmp_path / "try-1.txt", "try 1")
            with pytest.raises(EarlierTryRunningError, match="try 1 of arq job j1"):
                await undo_earlier_tries(journal, "j1", 2, None)
        finally:
            await running.__aexit__(None, None, None)
        assert session.session_id not in active.running
        # Ended, it is still not undone: it completed, and completed tries are kept.
        assert await undo_earlier_tries(journal, "j1", 2, None) == []
        await assert_completed(journal, session.session_id)


async def test_only_earlier_tries_of_the_same_enqueued_job_are_undone(
    retract_journal: Journal, tmp_path: Path
) -> None:
    """Other jobs, later tries and an earlier job reusing the id are left alone."""
    async with retract_journal as journal:
        ids: dict[str, str] = {}
        for label, job_id, job_try, enqueued in [
            ("mine", "j1", 1, "T1"),
            ("other job", "j2", 1, "T1"),
            ("same try", "j1", 2, "T1"),
            ("reused id", "j1", 1, "T0"),
        ]:
            with pytest.raises(Declined):
                async with journal.start_session(
                    integration="arq", job_id=job_id, job_try=job_try, enqueue_time=enqueued
                ) as session:
                    ids[label] = session.session_id
                    # No undo_on_error: each ends FAILED, not undone.
                    await session.record_operation("test.flaky", {"label": label})
                    raise Declined(label)
        journal.registry.handler("test.flaky")(undo_flaky)
        flaky_undo["fail"] = False
        assert await undo_earlier_tries(journal, "j1", 2, "T1") == [ids["mine"]]
        await assert_rolled_back(journal, ids["mine"])
        for label in ("other job", "same try", "reused id"):
            record = await journal.get_session(ids[label])
            assert record is not None
            assert record.status is SessionStatus.FAILED, label


async def test_an_earlier_try_being_undone_elsewhere_is_left_to_that_undo(
    retract_journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Try 1 UNDOING where this host cannot look: try 2 refuses, never undoes it twice."""
    import time  # noqa: PLC0415

    from retract.integrations import arq as arq_module  # noqa: PLC0415

    async with retract_journal as journal:
        opened = journal.start_session(
            integration="arq", job_id="j-9", job_try=1, enqueue_time="t0", function="f"
        )
        session = await opened.__aenter__()  # left open: its worker "is" elsewhere
        changed = await journal.storage.update_session(
            session.session_id,
            status=SessionStatus.UNDOING,
            at=time.time(),
            expect_statuses=(SessionStatus.RUNNING,),
        )
        assert changed
        monkeypatch.setattr(arq_module, "session_held", lambda _record: None)  # another host
        with pytest.raises(EarlierTryRunningError, match="is still undoing"):
            await undo_earlier_tries(journal, "j-9", 2, "t0")
        record = await journal.get_session(session.session_id)
        assert record is not None
        assert record.status is SessionStatus.UNDOING  # untouched
