"""aiohttp: a journal for the application's lifetime and a session per request.

::

    from aiohttp import web
    from retract.integrations import current_session
    from retract.integrations.aiohttp import journal_cleanup_ctx, journal_middleware

    app = web.Application(middlewares=[journal_middleware()])
    app.cleanup_ctx.append(journal_cleanup_ctx("journal.db"))


    async def upload(request: web.Request) -> web.Response:
        session = current_session()  # or request[SESSION_KEY]
        await session.fs.write_text("/srv/uploads/a.txt", await request.text())
        await notify_subscribers()  # raises: the file is removed again, then a 500
        return web.Response(text="stored")

Each request runs in its own session, undone when the request fails: the handler
raises an exception that is not a :class:`web.HTTPException`, raises an
``HTTPException`` with a status of 500 or more, returns a response with such a status,
or is cancelled (a client that disconnects, with ``handler_cancellation=True``). The
undo is shielded from that cancellation, so it finishes even though the client is gone.
Redirects (``HTTPFound``...) and 4xx exceptions, which aiohttp raises as exceptions, are
answers, not failures: the session completes and the exception propagates unchanged.

Requires the ``aiohttp`` extra (``pip install retract[aiohttp]``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import weakref
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from ..journal import Journal, Session, open_journal
from ._core import ResponseFailed, session_scope

__all__ = ("JOURNAL_KEY", "SESSION_KEY", "journal_cleanup_ctx", "journal_middleware")

logger = logging.getLogger("retract")

#: Where :func:`journal_cleanup_ctx` keeps the open journal: ``app[JOURNAL_KEY]``.
JOURNAL_KEY: Final = web.AppKey("journal", Journal)

if TYPE_CHECKING or hasattr(web, "RequestKey"):
    #: Where :func:`journal_middleware` keeps the request's session:
    #: ``request[SESSION_KEY]``. A ``web.RequestKey`` on aiohttp 3.14 and later (which
    #: warns about plain string keys), the string ``"retract_session"`` before.
    SESSION_KEY: Final = web.RequestKey("retract_session", Session)
else:  # pragma: no cover (aiohttp < 3.14 has no typed request keys)
    SESSION_KEY: Final = "retract_session"


def journal_cleanup_ctx(
    location_or_factory: str | os.PathLike[str] | Callable[[], Journal],
    *,
    key: web.AppKey[Journal] = JOURNAL_KEY,
    drain_timeout: float = 90.0,
    **open_options: Any,
) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup context that opens a journal when the application starts.

    ``app.cleanup_ctx.append(journal_cleanup_ctx("journal.db"))``: at startup the
    journal is opened and stored as ``app[key]``; at cleanup it is closed (pending
    writes committed). :func:`journal_middleware` finds it there.

    :param location_or_factory: a path to an SQLite journal, or ``":memory:"`` (both
        given to :func:`~retract.open_journal` with ``open_options``, e.g. ``registry``);
        or a function without arguments returning a journal that is not open yet
        (called at each startup; the cleanup context opens and closes it).
    :param key: the application key to store the journal under.
    :param drain_timeout: at cleanup, the most seconds to wait for requests whose
        session is still open (a handler cancelled at shutdown finishing its undo)
        before the journal is closed.
    :raises TypeError: ``open_options`` given with a factory, or neither a location nor
        a callable given.
    """
    make: Callable[[], Journal]
    if isinstance(location_or_factory, str | os.PathLike):
        location = location_or_factory

        def make() -> Journal:
            return open_journal(location, **open_options)

    elif callable(location_or_factory):
        if open_options:
            names = ", ".join(sorted(open_options))
            raise TypeError(
                f"journal_cleanup_ctx() takes open options ({names}) only with a location; "
                "a journal factory makes its journal with its own options"
            )
        make = location_or_factory
    else:
        raise TypeError(
            "journal_cleanup_ctx() needs a journal location or a function returning a "
            f"Journal, not {location_or_factory!r}"
        )

    async def retract_journal(app: web.Application) -> AsyncIterator[None]:
        journal = make()
        if not isinstance(journal, Journal):
            raise TypeError(f"the journal factory returned {journal!r}, not a Journal")
        async with journal:
            app[key] = journal
            yield
            # Handlers cancelled at shutdown may still be undoing (shielded): let them
            # finish before the journal closes under them, for at most drain_timeout.
            flight = _flights.get(journal)
            if flight is not None and flight.count:
                try:
                    await asyncio.wait_for(flight.idle.wait(), drain_timeout)
                except TimeoutError:
                    logger.warning(
                        "closing the journal with %d request session(s) still open after "
                        "%s s; `retract recover` and `retract undo` finish them",
                        flight.count,
                        drain_timeout,
                    )

    return retract_journal


def journal_middleware(
    *, key: web.AppKey[Journal] = JOURNAL_KEY, undo_timeout: float | None = 60.0
) -> Middleware:
    """A middleware that runs each request in its own session, undone if it fails.

    ``web.Application(middlewares=[journal_middleware()])``; a factory, so that the
    journal's key and the undo timeout can be chosen. Put it first in the list (the
    outermost middleware) so that the middlewares after it run inside the session.

    The session's context is the request's ``method`` and ``path``. Inside the request
    it is :func:`~retract.integrations.current_session` and ``request[SESSION_KEY]``.
    It is undone (``undo_on_error``, shielded from cancellation) when the handler
    raises anything but a ``web.HTTPException`` below 500, returns a response with a
    status of 500 or more (recorded as :class:`ResponseFailed`; the response is still
    sent), or is cancelled. Otherwise it completes: a raised redirect or 4xx exception
    then propagates unchanged, after the session has ended.

    :param key: the application key of the journal (see :func:`journal_cleanup_ctx`);
        it is looked up in the request's application and the ones it is nested in.
    :param undo_timeout: the most seconds the undo of a failed request may take (None:
        no limit); see :meth:`~retract.Journal.start_session`.
    """

    @web.middleware
    async def retract_session(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            journal = request.config_dict[key]
        except KeyError:
            raise RuntimeError(
                f"no journal under {key!r} in the application: add "
                "`app.cleanup_ctx.append(journal_cleanup_ctx(...))`"
            ) from None
        answer: web.HTTPException | None = None
        failed: ResponseFailed | None = None
        flight = _flights.setdefault(journal, _Flight())
        flight.begin()
        try:
            async with journal.start_session(
                undo_on_error=True,
                undo_timeout=undo_timeout,
                method=request.method,
                path=request.path,
            ) as session:
                request[SESSION_KEY] = session
                with session_scope(session):
                    try:
                        response = await handler(request)
                    except web.HTTPException as exc:
                        if exc.status >= 500:
                            raise
                        answer = exc  # a redirect or 4xx: the request did what it should
                    else:
                        if response.status >= 500:
                            failed = ResponseFailed(response.status)
                            raise failed
        except ResponseFailed as exc:
            if exc is not failed:
                raise  # the handler's own, not our signal
            # Rolled back; the client still gets the response the handler made.
            return response
        finally:
            flight.end()  # after the session ended, its undo included
        if answer is not None:
            raise answer
        return response

    return retract_session


class _Flight:
    """The requests of one journal whose session has not ended yet."""

    def __init__(self) -> None:
        self.count = 0
        self.idle = asyncio.Event()
        self.idle.set()

    def begin(self) -> None:
        self.count += 1
        self.idle.clear()

    def end(self) -> None:
        self.count -= 1
        if self.count == 0:
            self.idle.set()


#: Per journal: what the cleanup context waits for before it closes the journal.
_flights: weakref.WeakKeyDictionary[Journal, _Flight] = weakref.WeakKeyDictionary()
