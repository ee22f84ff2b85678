"""Starlette (or any ASGI app): a session per HTTP request, as pure ASGI middleware.

::

    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from retract.integrations import current_session
    from retract.integrations.starlette import JournalMiddleware


    async def upload(request: Request) -> Response:
        session = request.state.retract_session  # or current_session()
        await session.fs.write_text("/srv/uploads/a.txt", (await request.body()).decode())
        await notify_subscribers()  # raises: the file is removed again, then a 500
        return PlainTextResponse("stored")


    app = Starlette(
        routes=[Route("/upload", upload, methods=["POST"])],
        middleware=[Middleware(JournalMiddleware, journal=lambda r: r.app.state.journal)],
        lifespan=lifespan,  # opens the journal: app.state.journal = journal
    )

Each HTTP request runs in its own session (``undo_on_error=True``), undone when the
application raises, or answers with a status of 500 or more. Lifespan and websocket
connections pass through untouched.

Requires the ``starlette`` extra (``pip install retract[starlette]``).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Final, TypeAlias, cast

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..journal import Journal
from ._core import ResponseFailed, session_scope

__all__ = ("STATE_KEY", "JournalMiddleware", "JournalSource")

#: Where :class:`JournalMiddleware` keeps the request's session in ``scope["state"]``,
#: so that ``request.state.retract_session`` is it.
STATE_KEY: Final = "retract_session"

#: An open journal, or a function returning one (or an awaitable of one), called at
#: each request: with the :class:`~starlette.requests.Request` if it takes a positional
#: argument (``lambda request: request.app.state.journal``), else with none.
JournalSource: TypeAlias = (
    Journal
    | Callable[[Request], Journal | Awaitable[Journal]]
    | Callable[[], Journal | Awaitable[Journal]]
)


class JournalMiddleware:
    """Pure ASGI middleware that runs each HTTP request in its own session.

    ``Starlette(middleware=[Middleware(JournalMiddleware, journal=...)])`` or
    ``app.add_middleware(JournalMiddleware, journal=...)``. Being pure ASGI (not
    ``BaseHTTPMiddleware``), the application runs in the same task, so
    :func:`~retract.integrations.current_session` is the request's session in the
    endpoint, and in anything the endpoint starts with the same context.

    The session's context is the request's ``method`` and ``path``; it is stored as
    ``scope["state"]["retract_session"]`` (``request.state.retract_session``). It is
    undone (shielded from cancellation, bounded by ``undo_timeout``) when:

    * the application raises (or is cancelled): the undo finishes before the exception
      propagates, unchanged, to Starlette's ``ServerErrorMiddleware``, which answers
      500. So the client gets its 500 after the rollback.
    * the application answers with a status of 500 or more, including an
      ``HTTPException(503)`` that Starlette's exception handling turned into a
      response, or returns without starting a response (the server answers 500). This
      is recorded as :class:`~retract.integrations.ResponseFailed`, raised inside the
      session once the application has returned. **Caveat:** by then the response has
      been sent (a pure ASGI application sends its body before it returns, streaming
      or not), so the undo runs *after* the client got the 5xx, and a client that
      looks at once may still see the effects. Where that matters, raise an exception
      other than ``HTTPException`` instead: its undo precedes the 500.

    A failure after a whole response with a lower status was sent (a Starlette
    ``BackgroundTask`` that raises) does not undo the request: the client was told it
    succeeded. The session completes, then the exception propagates as before.

    Any other status (2xx, 3xx, 4xx) completes the session: a 404 is an answer, not a
    failure. Lifespan and websocket scopes are passed to the application untouched.

    :param app: the ASGI application to wrap.
    :param journal: an open :class:`~retract.Journal`, or a function returning one (see
        :data:`JournalSource`), e.g. ``lambda request: request.app.state.journal`` for a
        journal opened in the lifespan.
    :param undo_timeout: the most seconds the undo of a failed request may take (None:
        no limit); see :meth:`~retract.Journal.start_session`.
    :raises TypeError: ``journal`` is neither a journal nor callable.
    """

    def __init__(
        self, app: ASGIApp, journal: JournalSource, *, undo_timeout: float | None = 60.0
    ) -> None:
        self.app = app
        self.undo_timeout = undo_timeout
        self._journal = _journal_getter(journal, "JournalMiddleware")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection: HTTP requests in a session, the rest as they are."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        journal = await self._journal(Request(scope))
        status: int | None = None
        answered = False  # a whole non-5xx response went out: the client was told "done"

        async def send_and_watch(message: Message) -> None:
            nonlocal status, answered
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)
            if (
                message["type"] == "http.response.body"
                and not message.get("more_body", False)
                and status is not None
                and status < 500
            ):
                answered = True

        failed: ResponseFailed | None = None
        late: Exception | None = None
        try:
            async with journal.start_session(
                undo_on_error=True,
                undo_timeout=self.undo_timeout,
                method=scope["method"],
                path=scope["path"],
            ) as session:
                # Servers give each request its own shallow copy of the lifespan state
                # (ASGI spec), so this never leaks into another request.
                scope.setdefault("state", {})[STATE_KEY] = session
                with session_scope(session):
                    try:
                        await self.app(scope, receive, send_and_watch)
                    except Exception as exc:
                        if not answered:
                            raise
                        # After the whole response went out (a failing BackgroundTask):
                        # the client was told the request succeeded, so it stands.
                        late = exc
                if late is None and (status is None or status >= 500):
                    failed = ResponseFailed(500 if status is None else status)
                    raise failed
        except ResponseFailed as exc:
            if exc is not failed:
                raise  # the application's own, not our signal
            # Rolled back; the response was already sent.
        if late is not None:
            raise late


def _journal_getter(source: JournalSource, user: str) -> Callable[[Request], Awaitable[Journal]]:
    """Turn what the user gave into ``await get(request) -> Journal`` (checked)."""
    if isinstance(source, Journal):
        journal = source

        async def fixed(_request: Request) -> Journal:
            return journal

        return fixed
    if not callable(source):
        raise TypeError(f"{user} needs a Journal or a function returning one, not {source!r}")
    function = cast("Callable[..., object]", source)
    takes_request = _takes_argument(function)

    async def call(request: Request) -> Journal:
        made = function(request) if takes_request else function()
        if inspect.isawaitable(made):
            made = await made
        if not isinstance(made, Journal):
            raise TypeError(f"the journal function of {user} returned {made!r}, not a Journal")
        return made

    return call


def _takes_argument(function: Callable[..., object]) -> bool:
    """Whether ``function`` accepts a positional argument (then it gets the request)."""
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):  # no signature (some builtins): try with the request
        return True
    positional = (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        inspect.Parameter.VAR_POSITIONAL,
    )
    return any(parameter.kind in positional for parameter in parameters)
