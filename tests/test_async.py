"""The shielding helper and the thread limiter, under asyncio's own cancellation."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time

import pytest

from retract import set_thread_limit
from retract._async import DEFAULT_THREADS, run_sync, shielded


async def test_shielded_finishes_work_despite_task_cancel() -> None:
    """task.cancel() during shielded work waits for the work, then raises CancelledError."""
    done = asyncio.Event()

    async def work() -> str:
        await asyncio.sleep(0.05)
        done.set()
        return "result"

    task = asyncio.create_task(shielded(work()))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert done.is_set()


async def test_shielded_survives_repeated_cancels_and_timeouts() -> None:
    """Several cancellations (as anyio and TaskGroups deliver) are all absorbed until done."""
    finished = []

    async def work() -> None:
        await asyncio.sleep(0.05)
        finished.append(True)

    async def runner() -> None:
        await shielded(work())

    task = asyncio.create_task(runner())
    for _ in range(5):
        await asyncio.sleep(0.001)
        task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert finished == [True]
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.001):
            await shielded(work())
    assert finished == [True, True]


async def test_shielded_returns_the_result_and_raises_the_error() -> None:
    """Without cancellation it behaves like a plain await."""

    async def ok() -> int:
        return 7

    async def bad() -> None:
        raise ValueError("no")

    assert await shielded(ok()) == 7
    with pytest.raises(ValueError, match="no"):
        await shielded(bad())


async def test_run_sync_uses_a_worker_thread_and_waits_when_cancelled() -> None:
    """run_sync runs off the loop; a cancelled caller resumes only after the thread ended."""
    ended = threading.Event()
    loop_thread = threading.current_thread()
    ran_in: list[threading.Thread] = []

    def blocking() -> None:
        ran_in.append(threading.current_thread())
        time.sleep(0.05)
        ended.set()

    task = asyncio.create_task(run_sync(blocking))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert ended.is_set()
    assert ran_in
    assert ran_in[0] is not loop_thread


def test_thread_limit_must_be_positive() -> None:
    """set_thread_limit refuses zero and negative values."""
    with pytest.raises(ValueError, match="at least 1"):
        set_thread_limit(0)
    set_thread_limit(DEFAULT_THREADS)


async def test_run_sync_passes_results_errors_and_context() -> None:
    """The call's result and exception reach the caller; it sees the caller's contextvars."""
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    var.set("caller")
    assert await run_sync(var.get) == "caller"

    def fail() -> None:
        raise KeyError("inside")

    with pytest.raises(KeyError, match="inside"):
        await run_sync(fail)


async def test_run_sync_absorbs_repeated_cancels_until_the_thread_ends() -> None:
    """Many task.cancel() calls while the thread runs: it still ends before the caller."""
    ended = threading.Event()

    def blocking() -> None:
        time.sleep(0.05)
        ended.set()

    task = asyncio.create_task(run_sync(blocking))
    for _ in range(5):
        await asyncio.sleep(0.005)
        task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert ended.is_set()


async def test_set_thread_limit_bounds_concurrent_calls() -> None:
    """No more calls than the limit run at once; later calls use a new limit."""
    running = 0
    peak = 0
    lock = threading.Lock()

    def blocking() -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.02)
        with lock:
            running -= 1

    set_thread_limit(2)
    try:
        await asyncio.gather(*(run_sync(blocking) for _ in range(6)))
        assert peak == 2
    finally:
        set_thread_limit(DEFAULT_THREADS)
