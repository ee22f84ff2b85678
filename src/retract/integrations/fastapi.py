"""FastAPI: a session per request, as a ``yield`` dependency with function scope.

::

    from typing import Annotated

    import retract
    from fastapi import Depends, FastAPI, Request
    from retract.integrations.fastapi import journal_session


    def get_journal(request: Request) -> retract.Journal:
        return request.app.state.journal  # opened in the lifespan


    # Made once, at module level: every use of the alias in one request is one session.
    Session = Annotated[retract.Session, Depends(journal_session(get_journal), scope="function")]


    @app.post("/orders/{order_id}")
    async def create_order(order_id: int, session: Session) -> dict[str, int]:
        await session.fs.write_text(f"/srv/orders/{order_id}.json", "{}")
        await charge_card(order_id)  # raises: the file is removed, then the 500 is sent
        return {"order": order_id}

Requires the ``fastapi`` extra (``pip install retract[fastapi]``), FastAPI 0.121 or
later for ``Depends(..., scope="function")``.

**Why** ``scope="function"``. FastAPI runs the code after a dependency's ``yield``
when its exit stack closes. With ``scope="function"`` that stack closes as soon as the
path operation function has returned or raised (its result serialized), before the
response is sent. With the default for ``yield`` dependencies, ``scope="request"``,
it closes after the response has been sent. A raised exception goes through both
stacks before FastAPI's exception handlers build the error response, so the undo of a
failed request precedes the error response either way; the difference is success: with
function scope, a session is ``completed`` when the client gets its 200, while with
request scope it is still ``running`` then (it ends after the response is sent). The
price of function scope: the session is closed before a ``StreamingResponse`` streams,
so a streaming body cannot journal into it; use ``scope="request"`` for that (its
failure while streaming is then undone, after the headers went out).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from ..journal import Session
from ._core import session_scope
from .starlette import JournalSource, _journal_getter

__all__ = ("JournalSource", "journal_session")


def journal_session(
    journal_or_getter: JournalSource, *, undo_timeout: float | None = 60.0
) -> Callable[[Request], AsyncIterator[Session]]:
    """A FastAPI dependency that runs each request in its own session, undone if it fails.

    ``Depends(journal_session(journal), scope="function")``, usually in an ``Annotated``
    alias made once (see the module's example): FastAPI caches a dependency per request,
    so all uses of the same dependency in one request share one session, while two calls
    of ``journal_session`` make two dependencies and two sessions.

    The dependency yields the :class:`~retract.Session`, which is also
    :func:`~retract.integrations.current_session` in the path operation and the
    dependencies solved after it. Its context is the request's ``method`` and ``path``.
    It runs with ``undo_on_error=True``; when the path operation (or a dependency after
    this one, or the serialization of its result) raises:

    * an ``HTTPException`` with a status below 500 (404, 401, 409...) or a request
      validation error (422): the request completed with a client error, the session
      **completes** and keeps what was done before the raise;
    * anything else, including an ``HTTPException`` of 500 or more and exceptions that
      an exception handler turns into a 4xx: the session is **undone** (shielded from
      cancellation, bounded by ``undo_timeout``) before the exception propagates
      unchanged, so FastAPI sends the error response after the rollback.

    A path operation that *returns* a response with a 5xx status, without raising, is
    not seen by a dependency: its session completes. Raise instead, or wrap the app in
    :class:`~retract.integrations.starlette.JournalMiddleware`, which watches statuses.

    :param journal_or_getter: an open :class:`~retract.Journal`, or a function returning
        one (or an awaitable of one) called at each request: with the ``Request`` if it
        takes a positional argument (``lambda request: request.app.state.journal``),
        else with none.
    :param undo_timeout: the most seconds the undo of a failed request may take (None:
        no limit); see :meth:`~retract.Journal.start_session`.
    :raises TypeError: ``journal_or_getter`` is neither a journal nor callable.
    """
    get_journal = _journal_getter(journal_or_getter, "journal_session()")

    async def retract_session(request: Request) -> AsyncIterator[Session]:
        # FastAPI caches a dependency per scope: used with scope="function" in one place
        # and the default "request" scope in another, it would open two sessions.
        opened: set[int] = request.scope.setdefault("retract.journal_sessions", set())
        if id(retract_session) in opened:
            raise RuntimeError(
                "this journal_session dependency was used with two scopes in one request; "
                'use it with scope="function" everywhere (one Annotated alias)'
            )
        opened.add(id(retract_session))
        journal = await get_journal(request)
        answer: HTTPException | RequestValidationError | None = None
        async with journal.start_session(
            undo_on_error=True,
            undo_timeout=undo_timeout,
            method=request.method,
            path=request.url.path,
        ) as session:
            with session_scope(session):
                try:
                    yield session
                except HTTPException as exc:
                    if exc.status_code >= 500:
                        raise
                    answer = exc  # a client error: the request did what it should
                except RequestValidationError as exc:
                    answer = exc
        if answer is not None:
            raise answer  # after the session completed; FastAPI answers 4xx

    return retract_session
