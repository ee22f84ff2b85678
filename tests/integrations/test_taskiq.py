"""taskiq: a session per task execution through a dependency, undone when the task fails.

With taskiq's InMemoryBroker (the receiver runs in this event loop), and with
taskiq-redis's ListQueueBroker and RedisAsyncResultBackend against a real Redis server
and a receiver listening to it, as ``taskiq worker`` runs one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from taskiq import AsyncBroker, Context, InMemoryBroker, TaskiqDepends
from taskiq.api import run_receiver_task
from taskiq_redis import ListQueueBroker, RedisAsyncResultBackend

from retract import Journal, Session, SessionStatus, current_session
from retract.integrations.taskiq import task_session
from retract.testing import assert_completed, assert_no_session_running, assert_rolled_back
from tests.integrations._redis import redis_server_url  # noqa: F401  (the redis_url fixture)

#: Seconds a task may take to have its result before the test fails.
RESULT_WITHIN = 30.0


class Declined(Exception):
    """The payment was declined (on purpose)."""


def journal_of(context: Context) -> Journal:
    journal: Journal = context.state.journal
    return journal


#: The dependency under test: the journal comes from the broker's state.
journal_session = task_session(journal_of)


@pytest.fixture
async def memory_broker(retract_journal: Journal) -> AsyncIterator[InMemoryBroker]:
    """An in-memory broker whose state holds the test's open journal."""
    broker = InMemoryBroker()
    async with retract_journal as journal:
        broker.state.journal = journal
        await broker.startup()
        try:
            yield broker
        finally:
            await broker.shutdown()


@pytest.fixture
async def redis_broker(retract_journal: Journal, redis_url: str) -> AsyncIterator[AsyncBroker]:
    """A Redis list broker with a Redis result backend, and a receiver listening to it.

    The receiver runs in this event loop, as ``taskiq worker`` runs one; it finds the
    tasks that the test registers afterwards by their names.
    """
    broker = ListQueueBroker(redis_url, queue_name="retract-tests").with_result_backend(
        RedisAsyncResultBackend(redis_url)
    )
    async with retract_journal as journal:
        broker.state.journal = journal
        await broker.startup()
        receiver = asyncio.create_task(run_receiver_task(broker))
        try:
            yield broker
        finally:
            receiver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await receiver
            await broker.shutdown()


async def test_a_task_that_succeeds_keeps_its_file(
    memory_broker: InMemoryBroker, tmp_path: Path
) -> None:
    """The session completes; its context holds the task's id and name."""

    @memory_broker.task(task_name="tests.write")
    async def write(name: str, session: Session = TaskiqDepends(journal_session)) -> str:  # noqa: B008
        assert current_session() is session
        await session.fs.write_text(tmp_path / name, "written")
        return name

    handle = await write.kiq("out.txt")
    result = await handle.wait_result(check_interval=0.02, timeout=RESULT_WITHIN)
    assert not result.is_err, result.error
    assert result.return_value == "out.txt"
    journal: Journal = memory_broker.state.journal
    record = await assert_completed(journal)
    assert record.context == {
        "integration": "taskiq",
        "task_id": handle.task_id,
        "task_name": "tests.write",
    }
    assert (tmp_path / "out.txt").read_text() == "written"


async def test_a_failing_task_is_rolled_back_and_taskiq_stores_its_error(
    memory_broker: InMemoryBroker, tmp_path: Path
) -> None:
    """The file written before the failure is removed; the result holds the original error."""

    @memory_broker.task
    async def charge(session: Session = TaskiqDepends(journal_session)) -> None:  # noqa: B008
        await session.fs.write_text(tmp_path / "receipt.txt", "paid")
        raise Declined("card declined")

    handle = await charge.kiq()
    result = await handle.wait_result(check_interval=0.02, timeout=RESULT_WITHIN)
    assert result.is_err
    assert isinstance(result.error, Declined)
    journal: Journal = memory_broker.state.journal
    record = await assert_rolled_back(journal)
    assert record.error == "Declined: card declined"
    await assert_no_session_running(journal)
    assert not (tmp_path / "receipt.txt").exists()


async def test_a_task_past_its_timeout_is_rolled_back(
    memory_broker: InMemoryBroker, tmp_path: Path
) -> None:
    """A ``timeout`` label makes taskiq cancel the task; what it wrote is undone."""

    @memory_broker.task
    async def slow(session: Session = TaskiqDepends(journal_session)) -> None:  # noqa: B008
        await session.fs.write_text(tmp_path / "partial.txt", "half")
        await asyncio.sleep(60)

    handle = await slow.kicker().with_labels(timeout=0.2).kiq()
    result = await handle.wait_result(check_interval=0.02, timeout=RESULT_WITHIN)
    assert result.is_err
    journal: Journal = memory_broker.state.journal
    await assert_rolled_back(journal)
    assert not (tmp_path / "partial.txt").exists()


async def test_one_execution_gets_one_session_and_each_execution_its_own(
    memory_broker: InMemoryBroker, tmp_path: Path
) -> None:
    """Two parameters asking for the dependency share a session; two runs get two."""

    @memory_broker.task
    async def twice(
        n: int,
        session: Session = TaskiqDepends(journal_session),  # noqa: B008
        same: Session = TaskiqDepends(journal_session),  # noqa: B008
    ) -> str:
        assert same is session
        await session.fs.write_text(tmp_path / f"run-{n}.txt", str(n))
        return session.session_id

    first = await (await twice.kiq(1)).wait_result(check_interval=0.02, timeout=RESULT_WITHIN)
    second = await (await twice.kiq(2)).wait_result(check_interval=0.02, timeout=RESULT_WITHIN)
    assert first.return_value != second.return_value
    journal: Journal = memory_broker.state.journal
    sessions = await journal.list_sessions()
    assert [s.status for s in sessions] == [SessionStatus.COMPLETED] * 2


async def test_a_redis_task_that_succeeds_keeps_its_file(
    redis_broker: AsyncBroker, tmp_path: Path
) -> None:
    """Through Redis: the task's session completes and its file stays."""

    @redis_broker.task(task_name="tests.redis.write")
    async def write(name: str, session: Session = TaskiqDepends(journal_session)) -> str:  # noqa: B008
        await session.fs.write_text(tmp_path / name, "written")
        return session.session_id

    handle = await write.kiq("out.txt")
    result = await handle.wait_result(check_interval=0.02, timeout=RESULT_WITHIN)
    assert not result.is_err, result.error
    journal: Journal = redis_broker.state.journal
    record = await assert_completed(journal, result.return_value)
    assert record.context["task_id"] == handle.task_id
    assert record.context["task_name"] == "tests.redis.write"
    assert (tmp_path / "out.txt").read_text() == "written"


async def test_a_redis_task_that_fails_is_rolled_back(
    redis_broker: AsyncBroker, tmp_path: Path
) -> None:
    """Through Redis: the failing task's file is removed and its error reaches the caller."""

    @redis_broker.task
    async def charge(session: Session = TaskiqDepends(journal_session)) -> None:  # noqa: B008
        await session.fs.write_text(tmp_path / "receipt.txt", "paid")
        raise Declined("card declined")

    handle = await charge.kiq()
    result = await handle.wait_result(check_interval=0.02, timeout=RESULT_WITHIN)
    assert result.is_err
    assert isinstance(result.error, Declined)
    journal: Journal = redis_broker.state.journal
    record = await assert_rolled_back(journal)
    assert record.context["task_id"] == handle.task_id
    assert not (tmp_path / "receipt.txt").exists()


async def test_without_exception_propagation_a_failed_task_keeps_its_effects(
    retract_journal: Journal, tmp_path: Path
) -> None:
    """The documented limit: with propagate_exceptions=False the dependency never hears."""
    broker = InMemoryBroker(propagate_exceptions=False)
    async with retract_journal as journal:
        broker.state.journal = journal
        await broker.startup()
        try:

            @broker.task
            async def charge(session: Session = TaskiqDepends(journal_session)) -> None:  # noqa: B008
                await session.fs.write_text(tmp_path / "receipt.txt", "paid")
                raise Declined("card declined")

            handle = await charge.kiq()
            result = await handle.wait_result(check_interval=0.02, timeout=RESULT_WITHIN)
            assert result.is_err
            await assert_completed(journal)
        finally:
            await broker.shutdown()
    assert (tmp_path / "receipt.txt").exists()
