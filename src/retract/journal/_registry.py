"""OperationRegistry: which undo handler reverts which operation type."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from .._async import run_sync
from ..fs._handlers import register_fs_handlers
from ..tracking._journaled import register_tracking_handlers
from ._encoding import check_op_type
from ._records import OperationRecord

__all__ = ("OperationFactory", "OperationRegistry", "UndoHandler", "UndoableOperation")


class UndoableOperation(Protocol):
    """An unmake-style operation object: built from a payload, it knows how to undo."""

    def undo(self) -> Awaitable[None] | None:
        """Revert the operation; may be a plain method or a coroutine method."""
        ...


#: unmake-style: ``factory(payload).undo()``; a class whose ``__init__`` takes the payload.
OperationFactory = Callable[[dict[str, Any]], UndoableOperation]
#: Function-style: called with the whole :class:`OperationRecord`.
UndoHandler = Callable[[OperationRecord], Awaitable[None] | None]
H = TypeVar("H", bound=UndoHandler)


@dataclass(frozen=True, slots=True)
class _Entry:
    fn: Callable[..., Any]
    factory: bool
    blocking: bool


class OperationRegistry:
    """Maps operation types to undo handlers.

    Two styles, mixable in one registry::

        registry = OperationRegistry()
        registry.register("fs.move", MoveUndo)  # unmake style: MoveUndo(payload).undo()


        @registry.handler("mail.send")  # async function, gets the OperationRecord
        async def unsend(op: OperationRecord) -> None: ...

    A handler may raise :class:`~retract.UndoSkipped` to mark its operation SKIPPED.
    Handlers get :attr:`OperationRecord.in_doubt` (function style) to learn that the
    operation's effect may be partial or already reverted.

    Registering a type that is already registered replaces its handler, so code written
    for unmake (which registers its own ``"fs.move"``) runs unchanged.

    :param builtins: start with the built-in handlers of ``session.fs`` operations
        (``fs.write``, ``fs.move``, ``fs.copy``, ``fs.delete``, ``fs.mkdir``,
        ``fs.rmtree``) and of ``session.track`` (``tracking.change``); False starts
        empty.
    """

    def __init__(self, *, builtins: bool = True) -> None:
        self._entries: dict[str, _Entry] = {}
        if builtins:
            register_fs_handlers(self)
            register_tracking_handlers(self)

    def __repr__(self) -> str:
        return f"OperationRegistry({sorted(self._entries)})"

    def register(self, op_type: str, factory: OperationFactory, *, blocking: bool = False) -> None:
        """Register an unmake-style factory for ``op_type``.

        ``factory(payload)`` returns an object whose ``undo()`` (plain or async) reverts
        the operation.

        :param blocking: run a plain ``undo()`` in a worker thread (retract's limiter)
            instead of on the event loop; use it when ``undo()`` does slow I/O.
        :raises InvalidRecordError: ``op_type`` is not a valid operation type.
        :raises TypeError: ``factory`` is not callable.
        """
        self._add(op_type, factory, factory=True, blocking=blocking)

    def handler(self, op_type: str, *, blocking: bool = False) -> Callable[[H], H]:
        """Decorate a function that undoes ``op_type``, called with the OperationRecord.

        The function is normally ``async def``; a plain function runs on the event loop,
        or in a worker thread with ``blocking=True``.
        """

        def decorate(fn: H) -> H:
            self._add(op_type, fn, factory=False, blocking=blocking)
            return fn

        return decorate

    def _add(self, op_type: str, fn: Callable[..., Any], *, factory: bool, blocking: bool) -> None:
        check_op_type(op_type)
        if not callable(fn):
            raise TypeError(f"the undo handler for {op_type!r} must be callable, got {fn!r}")
        self._entries[op_type] = _Entry(fn, factory, blocking)

    def unregister(self, op_type: str) -> None:
        """Forget the handler of ``op_type``.

        :raises KeyError: nothing is registered for it.
        """
        try:
            del self._entries[op_type]
        except KeyError:
            raise KeyError(
                f"no undo handler is registered for {op_type!r} (registered: "
                f"{', '.join(sorted(self._entries)) or 'none'})"
            ) from None

    def __contains__(self, op_type: object) -> bool:
        return op_type in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def types(self) -> list[str]:
        """The registered operation types, sorted."""
        return sorted(self._entries)

    def copy(self) -> OperationRegistry:
        """A new registry with the same handlers."""
        clone = OperationRegistry(builtins=False)
        clone._entries = dict(self._entries)
        return clone

    def update(self, other: OperationRegistry) -> None:
        """Add (or replace with) every handler of ``other``."""
        self._entries.update(other._entries)

    async def run(self, op: OperationRecord) -> None:
        """Undo one operation with its handler.

        :raises KeyError: no handler for ``op.op_type`` (the journal checks beforehand).
        """
        entry = self._entries[op.op_type]
        if entry.blocking:
            result = await run_sync(_call_blocking, entry, op)
        elif entry.factory:
            result = entry.fn(op.payload).undo()
        else:
            result = entry.fn(op)
        if result is not None and inspect.isawaitable(result):
            await result


def _call_blocking(entry: _Entry, op: OperationRecord) -> object:
    if entry.factory:
        return entry.fn(op.payload).undo()
    return entry.fn(op)
