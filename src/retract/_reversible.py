"""``@reversible``: a coroutine function whose body is a session, undone if it fails."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Concatenate, ParamSpec, TypeVar

from .integrations._core import session_scope
from .journal import Journal, Session

__all__ = ("reversible",)

P = ParamSpec("P")
R = TypeVar("R")


def reversible(
    journal: Journal | Callable[[], Journal | Awaitable[Journal]],
    *,
    undo_timeout: float | None = 60.0,
    **context: Any,
) -> Callable[
    [Callable[Concatenate[Session, P], Coroutine[Any, Any, R]]],
    Callable[P, Coroutine[Any, Any, R]],
]:
    """Run each call of the decorated coroutine function in its own session (saga style).

    ::

        @reversible(journal, job="transfer")
        async def transfer(session: Session, amount: int) -> None:
            await session.record_operation("ledger.debit", {"amount": amount})
            await charge(amount)  # raises: the debit is undone, then the error propagates


        await transfer(10)  # the session is passed in, not by the caller

    If the body raises (or is cancelled), the session's operations are undone with the
    journal's registry, shielded from cancellation and bounded by ``undo_timeout``, and
    the exception propagates unchanged. The session is the body's first argument (the
    caller passes the others), and :func:`~retract.integrations.current_session` inside.

    :param journal: an open :class:`~retract.Journal`, or a function returning one (or
        an awaitable of one), called at each call: for a journal opened after the
        function is defined.
    :param context: remembered with each session (JSON values); the function's
        qualified name is added as ``function``.
    """

    def decorate(
        fn: Callable[Concatenate[Session, P], Coroutine[Any, Any, R]],
    ) -> Callable[P, Coroutine[Any, Any, R]]:
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"@reversible needs an async def function, not {fn!r}")
        details = {"function": fn.__qualname__, **context}

        # What callers pass: the body's parameters without the session (frameworks that
        # read signatures, such as FastAPI, see that too).
        signature = inspect.signature(fn)
        outer = signature.replace(parameters=list(signature.parameters.values())[1:])

        @functools.wraps(fn)
        async def run(*args: P.args, **kwargs: P.kwargs) -> R:
            opened = await _journal(journal)
            async with opened.start_session(
                undo_on_error=True, undo_timeout=undo_timeout, **details
            ) as session:
                with session_scope(session):
                    return await fn(session, *args, **kwargs)

        run.__signature__ = outer  # type: ignore[attr-defined]
        return run

    return decorate


async def _journal(source: Journal | Callable[[], Journal | Awaitable[Journal]]) -> Journal:
    if isinstance(source, Journal):
        return source
    if not callable(source):
        raise TypeError(f"@reversible needs a Journal or a function returning one, not {source!r}")
    made = source()
    if inspect.isawaitable(made):
        made = await made
    if not isinstance(made, Journal):
        raise TypeError(f"the journal function of @reversible returned {made!r}, not a Journal")
    return made
