"""What the integrations share: the session of the running request, and failed answers."""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..journal import Session

__all__ = ("ResponseFailed", "current_session", "session_scope")

_current: contextvars.ContextVar[Session | None] = contextvars.ContextVar(
    "retract_current_session", default=None
)


def current_session() -> Session:
    """The session of the request, job or ``@reversible`` call running in this task.

    :raises LookupError: no such session is open here (outside a request, or in a task
        the request did not start).
    """
    session = _current.get()
    if session is None:
        raise LookupError(
            "no retract session is open in this task: call it from inside a request, job "
            "or @reversible function that retract manages"
        )
    return session


@contextmanager
def session_scope(session: Session) -> Iterator[Session]:
    """Make ``session`` the :func:`current_session` of this task inside the block."""
    token = _current.set(session)
    try:
        yield session
    finally:
        if _current.get() is session:  # scopes closed out of order leave the newer one
            _current.reset(token)


class ResponseFailed(Exception):  # noqa: N818  (a signal, not an error users see)
    """Raised inside a request's session when its answer says it failed (status >= 500).

    A handler that returns a 500 instead of raising still failed: the integration raises
    this inside the session, so that ``undo_on_error`` rolls the request back, catches it
    and sends the response it was given. The session is recorded as failed with
    ``"ResponseFailed: the response status was 500"``.
    """

    def __init__(self, status: int) -> None:
        super().__init__(f"the response status was {status}")
        self.status = status
