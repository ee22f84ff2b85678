"""Small asyncio tools the whole library leans on: shielding and the thread limiter."""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import anyio.to_thread

__all__ = ("DEFAULT_THREADS", "run_sync", "set_thread_limit", "shielded")

T = TypeVar("T")
logger = logging.getLogger("retract")

#: Blocking calls offloaded at once per event loop. Durable file commits stop scaling
#: at about 8 threads on a 2-core machine, so anyio's default of 40 only adds queueing.
DEFAULT_THREADS = 8

_limiters: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, anyio.CapacityLimiter] = (
    weakref.WeakKeyDictionary()
)
_thread_limit = DEFAULT_THREADS


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
    """Set how many blocking calls retract runs in worker threads at once, per loop.

    Takes effect for event loops that have not offloaded anything yet.
    """
    global _thread_limit  # noqa: PLW0603  (a process-wide setting by design)
    if threads < 1:
        raise ValueError(f"the thread limit must be at least 1, not {threads!r}")
    _thread_limit = threads


def _limiter() -> anyio.CapacityLimiter:
    loop = asyncio.get_running_loop()
    limiter = _limiters.get(loop)
    if limiter is None:
        limiter = _limiters[loop] = anyio.CapacityLimiter(_thread_limit)
    return limiter


async def run_sync(fn: Callable[..., T], *args: Any) -> T:
    """Run a blocking call in a worker thread under retract's own capacity limiter.

    If the awaiting task is cancelled, the thread still runs to the end (threads cannot
    be interrupted); the cancellation is raised once it has finished, so the caller
    never continues while the call is still changing things.
    """
    return await shielded(anyio.to_thread.run_sync(fn, *args, limiter=_limiter()))
