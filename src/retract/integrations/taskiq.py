"""taskiq: a dependency that gives each task execution a session, undone if the task fails.

::

    from taskiq import TaskiqDepends, TaskiqEvents, TaskiqState
    from taskiq_redis import ListQueueBroker
    from retract import Session, open_journal
    from retract.integrations.taskiq import task_session

    broker = ListQueueBroker("redis://localhost:6379")
    journal_session = task_session(lambda context: context.state.journal)


    @broker.on_event(TaskiqEvents.WORKER_STARTUP)
    async def open_the_journal(state: TaskiqState) -> None:
        state.journal = await open_journal("tasks.db").open()


    @broker.task
    async def export(name: str, session: Session = TaskiqDepends(journal_session)) -> None:
        await session.fs.write_text(f"exports/{name}.csv", await fetch_rows(name))
        await upload(name)  # raises: the file is removed, then the task fails as usual

**The mechanism.** The dependency is an :func:`contextlib.asynccontextmanager`. taskiq
enters it when it resolves the task's arguments and, once the task has run, exits it in
the same asyncio task, passing the task's exception, if any, to ``__aexit__``: taskiq
does that when its receiver propagates exceptions to dependencies, which is the default
(``Receiver(propagate_exceptions=True)``, ``InMemoryBroker``, and ``taskiq worker``
without ``--no-propagate-errors``). The exception is thrown into the session's block at
its ``yield``, so the session ends FAILED (a timeout label's ``TimeoutError`` too;
CANCELLED when the worker shuts down mid-task) and is undone with the journal's
registry, shielded and
bounded by ``undo_timeout``, before taskiq stores the task's error result and runs its
middlewares' ``on_error`` (a retry middleware's re-kick finds the effects undone). The
context manager lets the re-raised exception end quietly; taskiq's error handling of
the task is unchanged. A plain async generator dependency would work too, but taskiq
0.12 throws into those with the ``athrow(type, value, traceback)`` form deprecated in
Python 3.12 and logs a warning with the traceback for every failed task.

.. warning::
    With ``propagate_exceptions=False`` (``taskiq worker --no-propagate-errors``) taskiq
    exits dependencies as if the task had succeeded: failed tasks' sessions then
    complete and keep their effects.

The session's context holds ``integration="taskiq"``, ``task_id`` and ``task_name``; it
is :func:`~retract.integrations.current_session` while the task runs (a sync task, run
in a thread, sees it too, but a session's methods are coroutines). taskiq caches
dependencies per execution: every parameter that asks for the same dependency in one
execution gets the same session.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import _AsyncGeneratorContextManager, asynccontextmanager

from taskiq import Context, TaskiqDepends

from ..journal import Journal, Session
from ._core import session_scope

__all__ = ("JournalGetter", "task_session")

#: Gets the open journal from the task's taskiq :class:`~taskiq.Context` (or an
#: awaitable of it); ``context.state`` is the broker's state, set up at worker startup.
JournalGetter = Callable[[Context], Journal | Awaitable[Journal]]


def task_session(
    journal_getter: JournalGetter, *, undo_timeout: float | None = 60.0
) -> Callable[[Context], _AsyncGeneratorContextManager[Session]]:
    """Make a taskiq dependency: a session per task execution, undone if the task raises.

    Use it as ``session: Session = TaskiqDepends(dependency)`` in a task's signature
    (see the module documentation for how it learns that the task failed).

    :param journal_getter: returns the open journal from the task's taskiq ``Context``
        (or an awaitable of it), e.g. ``lambda context: context.state.journal``.
    :param undo_timeout: the most seconds the automatic undo of a failed task may take
        (None: no limit).
    """

    @asynccontextmanager
    async def retract_task_session(
        context: Context = TaskiqDepends(),  # noqa: B008  (taskiq's injection marker)
    ) -> AsyncIterator[Session]:
        journal = await _journal(journal_getter(context))
        message = context.message
        async with journal.start_session(
            undo_on_error=True,
            undo_timeout=undo_timeout,
            integration="taskiq",
            task_id=message.task_id,
            task_name=message.task_name,
        ) as session:
            with session_scope(session):
                yield session

    return retract_task_session


async def _journal(source: Journal | Awaitable[Journal]) -> Journal:
    made = await source if inspect.isawaitable(source) else source
    if not isinstance(made, Journal):
        raise TypeError(f"the journal getter of task_session returned {made!r}, not a Journal")
    return made
