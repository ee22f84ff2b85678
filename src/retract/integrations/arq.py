"""arq: each try of a job runs in a session, undone if it fails; a retry undoes the tries before.

::

    from arq import Retry
    from retract import open_journal
    from retract.integrations.arq import job_session, reversible_job


    async def startup(ctx: dict[str, Any]) -> None:
        ctx["journal"] = await open_journal("jobs.db").open()


    async def shutdown(ctx: dict[str, Any]) -> None:
        await ctx["journal"].aclose()


    @reversible_job(lambda ctx: ctx["journal"])
    async def export(ctx: dict[str, Any], name: str) -> None:
        session = job_session(ctx)  # or retract.current_session()
        await session.fs.write_text(f"exports/{name}.csv", await fetch_rows(name))
        if not await upload(name):
            raise Retry(defer=10)  # this try's file is removed; the next try starts clean


    class WorkerSettings:
        functions = [export]
        on_startup = startup
        on_shutdown = shutdown

How a try ends, and what happens to its session:

* it returns: the session is COMPLETED and its effects stay;
* it raises anything, :class:`arq.Retry` included (arq runs the job again), or it is
  cancelled (a timeout, an abort, the worker shutting down; arq runs a job again after
  a shutdown): the session is undone with the journal's registry, shielded from
  cancellation and bounded by ``undo_timeout``, and the exception propagates to arq
  unchanged (a failed undo is logged and noted on it);
* the worker process dies (SIGKILL, OOM, a lost host): the session stays RUNNING. arq
  runs the job again once the job's in-progress key has expired (its timeout plus 10
  seconds), as try N + 1, and that try undoes it first (below).

**Retries.** A session's context holds ``integration="arq"``, ``job_id``, ``job_try``,
``enqueue_time`` (ISO 8601 in UTC, the same for every try of one enqueued job, so a job
id reused later is a different job) and ``function``. When try N > 1 starts, before the
job function runs, every session of an earlier try of the same job that is not settled
(RUNNING, UNDOING, INTERRUPTED, FAILED, CANCELLED or PARTIALLY_ROLLED_BACK: a killed
worker's, or one whose automatic undo failed) is undone, newest first. A session of an
earlier try still RUNNING under a process this host cannot check (another host, or
another container's pid space: a restarted container) is taken over as INTERRUPTED
first: arq starts try N only once the job's in-progress key has expired, the job's
timeout plus 10 seconds after try N - 1 began, when arq has long cancelled it. One held
by a live process of this host (a try that ignored its cancellation), or one being
UNDONE where this host cannot check (its automatic undo may outlast arq's 10 s margin:
undoing it here too would run its handlers twice at once) is not touched: the try fails
with :class:`EarlierTryRunningError`. In a PostgreSQL journal, where sessions hold
leases, the lease decides instead: an earlier try on another host whose lease expired
is taken over and undone (RUNNING or UNDOING), and one whose process still renews its
lease is refused with :class:`EarlierTryRunningError`. Where undoing a try can take
long, keep ``undo_timeout`` short: arq runs a job again 10 seconds after its
``job_timeout``. If
undoing an earlier try fails, try N fails with that error (arq records the job as
failed) rather than run over effects it cannot remove; ``retract undo <session id>``
finishes it. Earlier tries that COMPLETED are kept: arq runs a job again after a
completed try only if the worker died between the end of the session and arq recording
the result. A killed last try (``max_tries``) is never run again by arq, so nothing here
undoes it: ``retract recover`` and ``retract undo`` do.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

from .._errors import SessionStateError
from ..journal import Journal, Session, SessionRecord, SessionStatus
from ..journal._owner import session_held
from ._core import session_scope

__all__ = (
    "SESSION_KEY",
    "EarlierTryRunningError",
    "job_session",
    "reversible_job",
    "undo_earlier_tries",
)


#: The key of arq's job ``ctx`` under which the try's session is given to the job.
SESSION_KEY = "retract_session"

#: An arq job function: ``async def job(ctx, *args, **kwargs)``.
JobFunction = TypeVar("JobFunction", bound=Callable[..., Coroutine[Any, Any, Any]])
#: Gets the open journal from the job's ``ctx`` (or an awaitable of it).
JournalGetter = Callable[[dict[Any, Any]], Journal | Awaitable[Journal]]

#: Statuses of an earlier try's session that still need undoing before a retry.
_UNSETTLED = (
    SessionStatus.RUNNING,
    SessionStatus.UNDOING,
    SessionStatus.INTERRUPTED,
    SessionStatus.FAILED,
    SessionStatus.CANCELLED,
    SessionStatus.PARTIALLY_ROLLED_BACK,
)
_LIVE = (SessionStatus.RUNNING, SessionStatus.UNDOING)


class EarlierTryRunningError(SessionStateError):
    """An earlier try of the job is still running (or being undone) in a live process.

    Raised by a retried job before its function runs: its earlier try's effects cannot
    be undone while that try still works on them.
    """

    def __init__(self, job_id: str, session: SessionRecord) -> None:
        owner = session.owner
        who = f"process {owner.pid} on {owner.host}" if owner is not None else "another process"
        super().__init__(
            f"try {session.context.get('job_try')} of arq job {job_id} (session "
            f"{session.session_id}) is still {session.status.value} in {who}; it must end "
            "before the job is tried again"
        )
        self.job_id = job_id
        self.session_id = session.session_id


def reversible_job(
    journal_getter: JournalGetter, *, undo_timeout: float | None = 60.0
) -> Callable[[JobFunction], JobFunction]:
    """Run each try of an arq job function in its own session, undone if the try fails.

    The session is ``ctx["retract_session"]`` (:func:`job_session` returns it, typed)
    and :func:`~retract.integrations.current_session` inside the job; it stays in the
    ctx, ended, for arq's ``on_job_end`` and ``after_job_end`` hooks. Before try N > 1
    runs, the unsettled sessions of the job's earlier tries are undone (see the module
    documentation). The decorated function keeps its name and signature, so arq
    registers it under the same name.

    :param journal_getter: returns the open journal from arq's ``ctx`` (or an awaitable
        of it), e.g. ``lambda ctx: ctx["journal"]`` with the journal opened in the
        worker's ``on_startup``.
    :param undo_timeout: the most seconds the automatic undo of a failed try may take
        (None: no limit).
    """

    def decorate(fn: JobFunction) -> JobFunction:
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"@reversible_job needs an async def job function, not {fn!r}")
        name = getattr(fn, "__qualname__", repr(fn))

        @functools.wraps(fn)
        async def job(ctx: dict[Any, Any], *args: Any, **kwargs: Any) -> Any:
            journal = await _journal(journal_getter(ctx))
            job_id = str(ctx["job_id"])
            job_try = int(ctx.get("job_try") or 1)
            enqueued = ctx.get("enqueue_time")
            enqueue_time = _utc_iso(enqueued) if isinstance(enqueued, datetime) else None
            if job_try > 1:
                await undo_earlier_tries(journal, job_id, job_try, enqueue_time)
            async with journal.start_session(
                undo_on_error=True,
                undo_timeout=undo_timeout,
                integration="arq",
                job_id=job_id,
                job_try=job_try,
                enqueue_time=enqueue_time,
                function=name,
            ) as session:
                ctx[SESSION_KEY] = session
                with session_scope(session):
                    return await fn(ctx, *args, **kwargs)

        return cast("JobFunction", job)

    return decorate


def job_session(ctx: dict[Any, Any]) -> Session:
    """The session of the running try, from arq's job ``ctx``.

    :raises LookupError: the job is not decorated with :func:`reversible_job`.
    """
    session = ctx.get(SESSION_KEY)
    if not isinstance(session, Session):
        raise LookupError(
            "this arq job has no retract session: decorate it with @reversible_job(...)"
        )
    return session


async def undo_earlier_tries(
    journal: Journal, job_id: str, job_try: int, enqueue_time: str | None
) -> list[str]:
    """Undo the unsettled sessions of the tries before ``job_try`` of a job, newest first.

    What :func:`reversible_job` does before a retried try runs; see the module
    documentation for which sessions are taken over and which are refused.

    :return: the ids of the sessions undone.
    :raises EarlierTryRunningError: one of them is still worked on by a live process.
    :raises UndoError: undoing one failed (the later ones, already undone, stay so).
    """
    undone: list[str] = []
    for record in await journal.list_sessions(status=_UNSETTLED):
        context = record.context
        earlier = context.get("job_try")
        if (
            context.get("integration") != "arq"
            or context.get("job_id") != job_id
            or context.get("enqueue_time") != enqueue_time
            or not isinstance(earlier, int)
            or earlier >= job_try
        ):
            continue
        # In a journal with leases (PostgreSQL) undo_session() itself tells a live
        # holder from a dead one, by its lease, and takes over only the latter.
        unseen = (
            record.owner is not None
            and session_held(record) is None
            and record.lease_expires_at is None
        )
        if record.status is SessionStatus.UNDOING and unseen:
            # Being undone where this host cannot look: that undo may still run (an
            # automatic undo may take undo_timeout, longer than arq's 10 s margin), and
            # undoing it here as well would run its handlers twice at once.
            raise EarlierTryRunningError(job_id, record)
        if record.status is SessionStatus.RUNNING and unseen and record.owner is not None:
            # Beyond this host's sight: arq's expired in-progress key vouches that the try
            # is over. A compare-and-set, so a concurrent recoverer never doubles it.
            await journal.storage.update_session(
                record.session_id,
                status=SessionStatus.INTERRUPTED,
                at=time.time(),
                error=(
                    f"interrupted: arq started try {job_try} of job {job_id} while try "
                    f"{earlier} was {record.status.value} in process {record.owner.pid} on "
                    f"{record.owner.host}"
                ),
                expect_statuses=(record.status,),
                expect_owner=record.owner.token,
                settle_intents=True,
            )
            # Lost the compare-and-set: someone else moved it on; undo_session below
            # works from whatever it is now (and refuses a session in other hands).
        try:
            await journal.undo_session(record.session_id)
        except SessionStateError as exc:
            current = await journal.get_session(record.session_id)
            raise EarlierTryRunningError(job_id, current or record) from exc
        undone.append(record.session_id)
    return undone


def _utc_iso(moment: datetime) -> str:
    """The instant in UTC, ISO 8601 (arq gives it in the worker's timezone setting)."""
    return (moment.astimezone(UTC) if moment.tzinfo is not None else moment).isoformat()


async def _journal(source: Journal | Awaitable[Journal]) -> Journal:
    made = await source if inspect.isawaitable(source) else source
    if not isinstance(made, Journal):
        raise TypeError(f"the journal getter of @reversible_job returned {made!r}, not a Journal")
    return made
