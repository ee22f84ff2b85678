"""Small asyncio tools the whole library leans on: shielding and the thread limiter."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import anyio
import anyio.lowlevel

__all__ = (
    "DEFAULT_THREADS",
    "checkpoint_if_cancelled",
    "run_sync",
    "set_thread_limit",
    "shielded",
)

T = TypeVar("T")
logger = logging.getLogger("retract")

#: Blocking calls offloaded at once per process. Durable file commits stop scaling
#: at about 8 threads on a 2-core machine, so anyio's default of 40 only adds queueing.
DEFAULT_THREADS = 8

_thread_limit = DEFAULT_THREADS
#: (pid, pool): the worker threads of this process.
_pool: tuple[int, ThreadPoolExecutor] | None = None
_pool_lock = threading.Lock()


async def shielded(awaitable: Awaitable[T]) -> T:
    """Await ``awaitable`` to the end even if the awaiting task is cancelled meanwhile.

    Unlike ``anyio.CancelScope(shield=True)``, this also withstands native asyncio
    cancellation (``task.cancel()``, ``asyncio.timeout``, TaskGroup shutdown), which is
    what asyncio applications use. The outcome is known before this returns; a
    cancellation that arrived meanwhile is re-raised afterwards, never swallowed. If the
    awaited work failed *and* the task was cancelled, the failure is logged and the
    cancellation wins.
    """
    task = asyncio.ensure_future(awaitable)
    cancel: asyncio.CancelledError | None = None
    # The anyio shield keeps anyio's cancel scopes from re-delivering their cancellation
    # on every loop turn (a busy spin while we wait); asyncio's own cancellations still
    # arrive and are absorbed by the loop below.
    with anyio.CancelScope(shield=True):
        while not task.done():
            try:
                # wait() never cancels what it waits for, and propagates nothing but
                # our own cancellation.
                await asyncio.wait((task,))
            except asyncio.CancelledError as exc:
                cancel = exc
    if cancel is not None:
        if not task.cancelled() and task.exception() is not None:
            logger.warning(
                "shielded work failed while its task was cancelled", exc_info=task.exception()
            )
        raise cancel
    return task.result()


def set_thread_limit(threads: int) -> None:
    """Set how many blocking calls retract runs in worker threads at once (per process).

    Calls already running finish in the old pool; calls made afterwards use the new
    limit.
    """
    global _thread_limit, _pool  # noqa: PLW0603  (a process-wide setting by design)
    if threads < 1:
        raise ValueError(f"the thread limit must be at least 1, not {threads!r}")
    with _pool_lock:
        _thread_limit = threads
        old, _pool = _pool, None
    if old is not None:
        old[1].shutdown(wait=False)


def _executor() -> ThreadPoolExecutor:
    # The pool is the limiter: at most `_thread_limit` calls run, the rest queue. It is
    # made again in a forked child, whose copy of the pool has no threads.
    global _pool  # noqa: PLW0603
    pool = _pool
    pid = os.getpid()
    if pool is None or pool[0] != pid:
        with _pool_lock:
            if _pool is None or _pool[0] != pid:
                _pool = (pid, ThreadPoolExecutor(_thread_limit, thread_name_prefix="retract"))
            pool = _pool
    return pool[1]


class _Call:
    """One worker-thread call: its outcome, and the future the caller waits on."""

    __slots__ = ("done", "error", "result", "waiter")

    def __init__(self, waiter: asyncio.Future[None]) -> None:
        self.waiter = waiter
        self.done = False
        self.result: Any = None
        self.error: BaseException | None = None


def _work(
    call: _Call, loop: asyncio.AbstractEventLoop, context: contextvars.Context, fn: Any, args: Any
) -> None:
    try:
        call.result = context.run(fn, *args)
    except BaseException as exc:  # handed to the caller, raised there
        call.error = exc
    call.done = True
    with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
        loop.call_soon_threadsafe(_wake, call)


def _wake(call: _Call) -> None:
    # Runs on the loop, so it always sees the waiter the caller waits on now.
    if not call.waiter.done():
        call.waiter.set_result(None)


async def run_sync(fn: Callable[..., T], *args: Any) -> T:
    """Run a blocking call in one of retract's worker threads (see :func:`set_thread_limit`).

    If the awaiting task is cancelled, the thread still runs to the end (threads cannot
    be interrupted); the cancellation is raised once it has finished, so the caller
    never continues while the call is still changing things. The call sees a copy of
    the caller's context variables.

    Cheaper than ``anyio.to_thread.run_sync`` (no task, no limiter object, one wake-up
    of the event loop): on a small VM a thread hop costs more than a durable write's own
    CPU work, so this matters.
    """
    loop = asyncio.get_running_loop()
    call = _Call(loop.create_future())
    _executor().submit(_work, call, loop, contextvars.copy_context(), fn, args)
    try:
        await call.waiter
    except asyncio.CancelledError:
        if not call.done:
            await _wait_cancelled(call, loop)
        if call.error is not None:
            logger.warning(
                "a worker-thread call failed while its task was cancelled", exc_info=call.error
            )
        raise
    if call.error is not None:
        raise call.error
    return call.result  # type: ignore[no-any-return]


async def _wait_cancelled(call: _Call, loop: asyncio.AbstractEventLoop) -> None:
    """Wait for the thread after a cancellation, absorbing any further ones."""
    # The anyio shield keeps anyio's cancel scopes from re-delivering their cancellation
    # on every loop turn; asyncio's own cancellations are absorbed by the loop below.
    with anyio.CancelScope(shield=True):
        while not call.done:
            call.waiter = loop.create_future()
            with contextlib.suppress(asyncio.CancelledError):
                await call.waiter


async def checkpoint_if_cancelled() -> None:
    """Raise a cancellation that is already pending, cheaply when there is none.

    Before starting a worker-thread call that must not be cancelled halfway: an anyio
    scope cancelled earlier, or a ``task.cancel()`` not delivered yet, stops us here.
    """
    await anyio.lowlevel.checkpoint_if_cancelled()
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        await asyncio.sleep(0)  # delivers a pending task.cancel()
