"""The reading commands: ``sessions``, ``show``, ``recover`` and ``watch``.

Each is a coroutine run by :func:`retract.cli.main` under ``asyncio.run``. Errors from
the library (:class:`~retract.RetractError`) propagate; ``main`` turns them into one
line on stderr and exit code 1.
"""

from __future__ import annotations

from collections.abc import Collection

from .._errors import SessionNotFoundError
from ..journal import open_journal
from . import _json, _render
from ._console import Console, ExitCode

__all__ = ("recover", "sessions", "show", "watch")


async def sessions(
    console: Console, path: str, *, limit: int | None, statuses: Collection[str] | None
) -> int:
    """List sessions, newest first, optionally only some statuses.

    :param limit: at most this many; None for all.
    """
    async with open_journal(path, create=False) as journal:
        found = await journal.list_sessions(limit=limit, status=statuses or None)
    if console.json:
        _json.dump({"sessions": [_json.session_json(s) for s in found]}, console.out)
    else:
        console.print(_render.sessions_table(found, console.width()))
    return ExitCode.OK


async def show(console: Console, path: str, session_id: str) -> int:
    """Print one session and its operations in order.

    :param session_id: a full id or a unique prefix of one.
    :raises SessionNotFoundError: unknown or ambiguous id (the message lists recent or
        matching ids).
    """
    async with open_journal(path, create=False) as journal:
        full_id = await journal.resolve_session_id(session_id)
        session = await journal.get_session(full_id)
        operations = await journal.get_operations(full_id)
    if session is None:  # pragma: no cover - journals never delete sessions
        raise SessionNotFoundError(full_id)
    if console.json:
        _json.dump(
            {
                "session": _json.session_json(session),
                "operations": [_json.operation_json(op) for op in operations],
            },
            console.out,
        )
    else:
        console.print(_render.session_detail(session, operations, console.width()))
    return ExitCode.OK


async def recover(console: Console, path: str) -> int:
    """Mark sessions whose owner process died INTERRUPTED, and list them."""
    async with open_journal(path, create=False) as journal:
        recovered = await journal.recover()
    if console.json:
        _json.dump({"recovered": [_json.session_json(s) for s in recovered]}, console.out)
    elif recovered:
        count = len(recovered)
        console.print(
            f"recovered {count} session{'s' if count != 1 else ''} whose process is gone "
            "(or, in a PostgreSQL journal, stopped renewing its lease) "
            "(now interrupted; their unfinished steps are in_doubt):"
        )
        console.print(_render.sessions_table(recovered, console.width()))
        console.print("undo them with `retract undo ID`, or inspect them with `retract show ID`")
    else:
        console.print("nothing to recover: no running session has lost its process")
    return ExitCode.OK


async def watch(console: Console, path: str, session_id: str | None, *, count: int | None) -> int:
    """Print session and operation events as they are committed, until stopped.

    :param session_id: only this session's events (a full id or a unique prefix).
    :param count: stop after this many events; None: until Ctrl+C.
    """
    async with open_journal(path, create=False) as journal:
        wanted = await journal.resolve_session_id(session_id) if session_id else None
        async with journal.watch(wanted) as events:
            console.note(f"watching {journal.storage.location} (Ctrl+C to stop)")
            seen = 0
            async for event in events:
                if console.json:
                    _json.dump_line(_json.event_json(event), console.out)
                else:
                    console.print(_render.event_line(event))
                    console.out.flush()
                seen += 1
                if count is not None and seen >= count:
                    break
    return ExitCode.OK
